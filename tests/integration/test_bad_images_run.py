"""A run refuses every unreadable image of every folder and dataset in one message, before writing anything;
with --skip_bad_images it skips them all, each with a warning."""

from pathlib import Path

import pytest

from data_helpers import make_kohya_dataset, write_test_image
from loracraft.config.schema import TrainConfig
from loracraft.errors import UserError
from loracraft.training.dataset_setup import plan_dataset

COMMON = dict(resolution="64,64", min_bucket_reso=64, max_bucket_reso=128, bucket_reso_steps=64,
              bucket_no_upscale=False, max_train_epochs=1, caption_extension=".txt")  # fmt: skip


def run_plan(**settings):
    lines: list[str] = []
    plan = plan_dataset(TrainConfig(**COMMON, **settings), seed=1, num_processes=1, echo=lines.append)
    return plan, lines


def files_under(root: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}


def truncated(path: Path) -> Path:
    """A picture whose header is intact and whose pixel data is cut: only a full decode finds it."""
    write_test_image(path, (64, 64), seed=7)
    path.write_bytes(path.read_bytes()[:-200])
    return path


@pytest.fixture
def tree(tmp_path):
    """Bad images in three folders: an empty file in the training folder (header), a truncated one in a
    second training folder (decode) and a text file posing as an image in the reg folder (header)."""
    tree = make_kohya_dataset(tmp_path / "data", reg_count=2)
    second = tree.train_dir / "1_other"
    second.mkdir()
    write_test_image(second / "fine.png", (64, 64), seed=3)
    (tree.concept_dir / "empty.png").write_bytes(b"")
    truncated(second / "cut.png")
    (tree.reg_dir / "1_toy" / "notes.jpg").write_text("not a picture", encoding="utf-8")
    return tree


def bad_paths(tree) -> list[Path]:
    return [
        tree.concept_dir / "empty.png",
        tree.reg_dir / "1_toy" / "notes.jpg",
        tree.train_dir / "1_other" / "cut.png",
    ]


def test_bad_images_of_every_folder_header_and_decode_are_refused_in_one_message(tree, tmp_path):
    before = files_under(tmp_path)
    with pytest.raises(UserError) as err:
        run_plan(train_data_dir=str(tree.train_dir), reg_data_dir=str(tree.reg_dir))
    message = str(err.value)
    assert message.startswith("3 image(s) cannot be decoded: ")
    empty, notes, cut = bad_paths(tree)
    assert f"{empty} (empty file)" in message and f"{cut} (image file is truncated)" in message
    assert f"{notes} (cannot identify image file" in message
    assert message.endswith("Re-save or remove them, or pass --skip_bad_images to train without them")
    assert "\n" not in message
    assert files_under(tmp_path) == before


def test_skip_bad_images_skips_every_one_with_a_warning(tree):
    plan, lines = run_plan(
        train_data_dir=str(tree.train_dir), reg_data_dir=str(tree.reg_dir), skip_bad_images=True
    )
    skipped = [line for line in lines if "skipped image" in line]
    assert [line.split(" (")[0] for line in skipped] == [
        f"warning: skipped image {p}" for p in bad_paths(tree)
    ]
    used = {image.record.path for image in plan.images}
    assert not used & set(bad_paths(tree))
    assert tree.train_dir / "1_other" / "fine.png" in used


def test_a_listing_of_many_bad_images_shows_the_count_and_how_many_more(tmp_path):
    tree = make_kohya_dataset(tmp_path, reg_count=0)
    for i in range(6):
        (tree.concept_dir / f"bad{i}.png").write_bytes(b"")
    with pytest.raises(
        UserError, match=r"^6 image\(s\) cannot be decoded: .*bad2.png \(empty file\); and 3 more\. "
    ):
        run_plan(train_data_dir=str(tree.train_dir))


def test_a_dataset_config_lists_the_bad_images_of_all_its_datasets_once(tree, tmp_path):
    config = tmp_path / "data.toml"
    folders = [tree.concept_dir, tree.train_dir / "1_other"]
    datasets = "".join(f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{folder}'\n" for folder in folders)
    # The first folder again in a third dataset: its bad image is still named once.
    datasets += f"[[datasets]]\nresolution = 128\n[[datasets.subsets]]\nimage_dir = '{folders[0]}'\n"
    config.write_text(datasets, encoding="utf-8")
    with pytest.raises(UserError) as err:
        run_plan(dataset_config=str(config))
    empty, _, cut = bad_paths(tree)
    assert str(err.value).startswith(f"2 image(s) cannot be decoded: {empty} (empty file); {cut} (image file")


def test_a_training_folder_of_only_bad_images_is_named_not_called_empty(tmp_path):
    folder = tmp_path / "img" / "1_x"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(b"")
    with pytest.raises(
        UserError, match=rf"^1 image\(s\) cannot be decoded: {folder / 'a.png'} \(empty file\)"
    ):
        run_plan(train_data_dir=str(tmp_path / "img"))
    with pytest.raises(UserError, match="^no training image is left after --skip_bad_images skipped 1 image"):
        run_plan(train_data_dir=str(tmp_path / "img"), skip_bad_images=True)

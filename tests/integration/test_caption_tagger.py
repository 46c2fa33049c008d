"""`loracraft caption DIR --model TAGGER` end to end with a tiny ONNX tagger built here (tests/tagger_files.py).

The tagger's scores are known (fixed per tag, `red_theme` from the image's redness), so each caption file's
text is known; kohya's tag rules themselves are checked against kohya's output in unit/test_tag_rules.py.
"""

import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from loracraft.caption import wd14
from loracraft.errors import UserError
from loracraft.tools.caption import main
from tagger_files import SIZE, TAGS, red_theme_score, write_tag_list, write_tagger

pytest.importorskip("onnxruntime", reason="the tagger runs on ONNX Runtime (loracraft[caption])")
pytest.importorskip("onnx", reason="torch.onnx.export needs onnx (the test extra)")

GREY_TAGS = "1girl, solo, long_hair, ^_^, hatsune_miku, saber_(fate)"
RED_TAGS = "1girl, solo, long_hair, red_theme, ^_^, hatsune_miku, saber_(fate)"
RED, BLUE, GREY = (255, 0, 0), (0, 0, 255), (128, 128, 128)


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    return write_tagger(tmp_path_factory.mktemp("tagger"))


def write_image(path, colour=GREY, size=(24, 24)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def caption(folder, tagger, *flags):
    return main([str(folder), "--model", str(tagger), *flags])


def texts(folder, pattern="*.txt"):
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(folder.glob(pattern))}


def test_tags_above_the_thresholds_in_the_tag_lists_order(tagger, tmp_path, capsys):
    write_image(tmp_path / "grey.png")
    write_image(tmp_path / "red.png", RED)
    write_image(tmp_path / "blue.jpg", BLUE)
    assert caption(tmp_path, tagger) == 0
    assert texts(tmp_path) == {
        "blue.txt": GREY_TAGS + "\n",
        "grey.txt": GREY_TAGS + "\n",
        "red.txt": RED_TAGS + "\n",
    }
    assert "captioned 3 images (3 written)" in capsys.readouterr().out


def test_images_are_white_padded_squares_of_the_models_size(tagger, tmp_path):
    """A red strip a quarter of the square wide is padded with white (red_theme 0.12, not tagged); a red
    image smaller or larger than the model's 32 pixels is resized, red all over (0.98)."""
    assert red_theme_score(0.25) < 0.35 < red_theme_score(1.0)
    write_image(tmp_path / "strip.png", RED, size=(8, 32))
    write_image(tmp_path / "small.png", RED, size=(8, 8))
    write_image(tmp_path / "large.png", RED, size=(100, 64))
    assert caption(tmp_path, tagger) == 0
    assert texts(tmp_path) == {
        "large.txt": RED_TAGS + "\n",
        "small.txt": RED_TAGS + "\n",
        "strip.txt": GREY_TAGS + "\n",
    }


def kohya_padded(image: Image.Image) -> np.ndarray:
    """kohya's preprocess_image up to the resize: BGR, padded to a centred square with 255."""
    pixels = np.array(image)[:, :, ::-1]
    size = max(pixels.shape[:2])
    pad_x, pad_y = size - pixels.shape[1], size - pixels.shape[0]
    pad = ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2), (0, 0))
    return np.pad(pixels, pad, mode="constant", constant_values=255)


def noise_image(width, height):
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_prepared_image_is_kohyas():
    image = noise_image(SIZE, 19)
    assert np.array_equal(wd14.prepare_image(image, SIZE), kohya_padded(image).astype(np.float32))
    # Enlarging: kohya resizes the padded square with Pillow's Lanczos.
    image = noise_image(13, 20)
    rgb = Image.fromarray(np.ascontiguousarray(kohya_padded(image)[:, :, ::-1]))
    kohyas = np.asarray(rgb.resize((SIZE, SIZE), Image.Resampling.LANCZOS))[:, :, ::-1]
    assert np.array_equal(wd14.prepare_image(image, SIZE), kohyas.astype(np.float32))
    # Shrinking by two: kohya's cv2 INTER_AREA averages each 2x2 block.
    image = noise_image(2 * SIZE, 40)
    padded = kohya_padded(image).astype(np.float32)
    kohyas = padded.reshape(SIZE, 2, SIZE, 2, 3).mean(axis=(1, 3))
    assert np.abs(wd14.prepare_image(image, SIZE) - kohyas).max() <= 1


def test_tagger_flags_change_the_caption(tagger, tmp_path):
    write_image(tmp_path / "a.png")
    flags = ["--general_threshold", "0.5", "--character_threshold", "0.3", "--remove_underscore"]
    flags += [
        "--use_rating_tags",
        "--character_tags_first",
        "--undesired_tags",
        "solo",
        "--caption_separator",
        "; ",
    ]
    assert caption(tmp_path, tagger, *flags) == 0
    assert texts(tmp_path) == {"a.txt": "general; saber (fate); hatsune miku; 1girl; ^_^\n"}


def test_prefix_and_suffix(tagger, tmp_path):
    write_image(tmp_path / "a.png")
    assert caption(tmp_path, tagger, "--prefix", "sks,", "--suffix", "best quality") == 0
    assert texts(tmp_path) == {"a.txt": f"sks, {GREY_TAGS} best quality\n"}


def test_existing_captions_kept_replaced_or_appended_to(tagger, tmp_path, capsys):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png", RED)
    (tmp_path / "a.txt").write_text("solo, my tag\n", encoding="utf-8")
    assert caption(tmp_path, tagger) == 0
    assert texts(tmp_path) == {"a.txt": "solo, my tag\n", "b.txt": RED_TAGS + "\n"}
    assert "skipped 1 with a caption already" in capsys.readouterr().out

    assert caption(tmp_path, tagger, "--append") == 0
    assert texts(tmp_path)["a.txt"] == "solo, my tag, 1girl, long_hair, ^_^, hatsune_miku, saber_(fate)\n"
    assert texts(tmp_path)["b.txt"] == RED_TAGS + "\n"  # nothing new to add

    assert caption(tmp_path, tagger, "--overwrite") == 0
    assert texts(tmp_path) == {"a.txt": GREY_TAGS + "\n", "b.txt": RED_TAGS + "\n"}


def test_recursive_and_caption_extension(tagger, tmp_path):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "sub" / "b.png", RED)
    assert caption(tmp_path, tagger, "--caption_extension", ".caption") == 0
    assert texts(tmp_path, "*.caption") == {"a.caption": GREY_TAGS + "\n"}
    assert not (tmp_path / "sub" / "b.caption").exists()
    assert caption(tmp_path, tagger, "--caption_extension", ".caption", "--recursive") == 0
    assert texts(tmp_path / "sub", "*.caption") == {"b.caption": RED_TAGS + "\n"}
    assert not list(tmp_path.rglob("*.txt"))


def test_batches_of_batch_size(tagger, tmp_path, monkeypatch):
    batches = []
    run_batch = wd14.Tagger._scores

    def counting(self, batch):
        batches.append(len(batch))
        return run_batch(self, batch)

    monkeypatch.setattr(wd14.Tagger, "_scores", counting)
    for index in range(5):
        write_image(tmp_path / f"{index}.png", RED if index % 2 else GREY)
    assert caption(tmp_path, tagger, "--batch_size", "3") == 0
    assert batches == [3, 2]
    assert texts(tmp_path) == {f"{i}.txt": (RED_TAGS if i % 2 else GREY_TAGS) + "\n" for i in range(5)}


def test_a_model_with_a_fixed_batch_takes_whole_batches(tmp_path_factory, tmp_path, capsys):
    fixed = write_tagger(tmp_path_factory.mktemp("fixed"), fixed_batch=2)
    for index in range(3):
        write_image(tmp_path / f"{index}.png", RED if index == 2 else GREY)
    assert caption(tmp_path, fixed) == 0
    assert "takes batches of 2 images" in capsys.readouterr().out
    assert texts(tmp_path) == {"0.txt": GREY_TAGS + "\n", "1.txt": GREY_TAGS + "\n", "2.txt": RED_TAGS + "\n"}


def test_an_unreadable_image_is_named_and_the_others_captioned(tagger, tmp_path, capsys):
    write_image(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not an image")
    write_image(tmp_path / "c.png", RED)
    assert caption(tmp_path, tagger, "--batch_size", "3") == 1
    assert texts(tmp_path) == {"a.txt": GREY_TAGS + "\n", "c.txt": RED_TAGS + "\n"}
    out, err = capsys.readouterr()
    assert "failed 1:\n  b.png: " in out
    assert (
        err.splitlines()[-1] == "error: 1 of 3 images could not be captioned (b.png); the others were written"
    )


def test_frequency_tags_and_debug(tagger, tmp_path, capsys):
    grey = write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png", RED)
    assert caption(tmp_path, tagger, "--frequency_tags", "--debug", "--use_rating_tags") == 0
    out = capsys.readouterr().out
    assert f"{grey}:\n  rating tags: general\n  character tags: hatsune_miku, saber_(fate)\n" in out
    assert "  general tags: 1girl, solo, long_hair, ^_^\n" in out
    frequencies = ["1girl: 2", "solo: 2", "long_hair: 2", "^_^: 2", "hatsune_miku: 2", "saber_(fate): 2"]
    assert "\n".join(["Tag frequencies:", *frequencies, "general: 2", "red_theme: 1"]) in out


def test_kohyas_model_dir_layout(tagger, tmp_path, monkeypatch):
    model_dir = tmp_path / "wd14_tagger_model"
    shutil.copytree(tagger, model_dir / "SmilingWolf_wd-tiny-tagger")
    write_image(tmp_path / "images" / "a.png")
    monkeypatch.chdir(tmp_path)
    argv = ["images", "--repo_id", "SmilingWolf/wd-tiny-tagger", "--model_dir", str(model_dir), "--onnx"]
    assert main(argv) == 0
    assert texts(tmp_path / "images") == {"a.txt": GREY_TAGS + "\n"}


def broken_tagger(folder, tagger, *, csv_rows=None, model=None):
    """A copy of `tagger` in `folder` with another tag list or model file."""
    shutil.copytree(tagger, folder)
    if csv_rows is not None:
        write_tag_list(folder / "selected_tags.csv", csv_rows)
    if model is not None:
        (folder / "model.onnx").write_bytes(model)
    return folder


def refused(folder, model, *flags):
    """The one line `loracraft caption` stops with; no caption file is written."""
    with pytest.raises(UserError) as error:
        main([str(folder), "--model", str(model), *flags])
    assert not list(folder.rglob("*.txt"))
    assert "\n" not in str(error.value)
    return str(error.value)


@pytest.fixture
def images(tmp_path):
    write_image(tmp_path / "images" / "a.png")
    write_image(tmp_path / "images" / "b.png")
    return tmp_path / "images"


def test_a_tagger_without_its_tag_list(tagger, images, tmp_path):
    (tmp_path / "no_tags").mkdir()
    shutil.copy(tagger / "model.onnx", tmp_path / "no_tags")
    message = refused(images, tmp_path / "no_tags")
    assert "the tagger has no selected_tags.csv beside its ONNX model" in message
    assert str(tmp_path / "no_tags") in message


def test_a_tag_list_of_another_tagger(tagger, images, tmp_path):
    rows = [(name, category) for name, category, _ in TAGS] + [("extra_tag", 0)]
    folder = broken_tagger(tmp_path / "other_list", tagger, csv_rows=rows)
    message = refused(images, folder)
    assert message == (
        f"--model {folder}: the ONNX model gives 12 scores but selected_tags.csv lists 13 tags; "
        "the two files come from different taggers"
    )


def test_a_file_that_is_not_a_tag_list(tagger, images, tmp_path):
    folder = broken_tagger(tmp_path / "bad_csv", tagger)
    (folder / "selected_tags.csv").write_text("name,category\n1girl,0\n", encoding="utf-8")
    assert refused(images, folder).startswith(f"{folder / 'selected_tags.csv'} is not a WD14 tag list")


def test_a_model_file_onnx_runtime_cannot_load(tagger, images, tmp_path):
    folder = broken_tagger(tmp_path / "bad_model", tagger, model=b"truncated download")
    message = refused(images, folder)
    assert message.startswith(f"--model {folder}: ONNX Runtime cannot load model.onnx (")
    assert message.endswith("download the tagger again")


def test_a_model_that_is_not_a_wd14_tagger(images, tmp_path):
    folder = write_tagger(tmp_path / "channels_first", channels_first=True)
    message = refused(images, folder)
    assert message.startswith(
        f"--model {folder}: its ONNX model takes ['batch', 3, 32, 32], not a WD14 tagger's"
    )


def test_without_onnx_runtime(tagger, images, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert refused(images, tagger) == (
        "loracraft caption's taggers need ONNX Runtime: pip install 'loracraft[caption]'"
    )


def test_device_cuda_without_the_cuda_provider(tagger, images):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this ONNX Runtime has the CUDA provider")
    message = refused(images, tagger, "--device", "cuda")
    assert message.startswith("--device cuda: this ONNX Runtime has no CUDA provider; ")
    assert "pip install onnxruntime-gpu" in message


@pytest.mark.parametrize(
    ("device", "available", "providers"),
    [
        (None, ["CPUExecutionProvider"], ["CPUExecutionProvider"]),
        (
            None,
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
            [("CUDAExecutionProvider", {}), "CPUExecutionProvider"],
        ),
        ("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]),
        (
            "cuda:1",
            ["CUDAExecutionProvider"],
            [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"],
        ),
    ],
)
def test_providers_for_device(device, available, providers):
    assert wd14.providers_for(device, available) == providers


def test_a_device_onnx_runtime_has_no_name_for():
    with pytest.raises(UserError, match=r"^--device mps: the tagger runs on cpu, cuda or cuda:N$"):
        wd14.providers_for("mps", ["CPUExecutionProvider"])


def test_an_image_no_tag_reaches_is_named_not_written_empty(tagger, tmp_path, capsys):
    """kohya writes an empty caption file there, which would train on no words; ours names the image."""
    write_image(tmp_path / "grey.png")
    assert caption(tmp_path, tagger, "--thresh", "0.9999", "--character_threshold", "0.9999") == 1
    assert not (tmp_path / "grey.txt").exists()
    assert f"grey.png: {wd14.NO_TAGS}" in capsys.readouterr().out

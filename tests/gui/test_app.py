"""The page's actions on real files and a real queue: Start refused until the form validates, the form
refreshed after a change (message, marked field, hidden fields), config files saved and loaded back,
imports and presets, the command line, the dataset check, and the page built with every field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_helpers import make_kohya_dataset
from loracraft.config.load import read_config_file
from loracraft.config.schema import TrainConfig
from loracraft.errors import UserError
from loracraft.gui.app import VALID, FormView, build_app, refresh_form, start_job
from loracraft.gui.config_tab import apply_preset, import_into_form, load_config, save_config, show_command
from loracraft.gui.controls import control_id
from loracraft.gui.dataset_tab import check_dataset
from loracraft.gui.form_fields import form_fields
from loracraft.gui.form_state import FIELD_NAMES, initial_controls, validate
from loracraft.jobs.queue import JobQueue


def _controls(**values):
    shown = dict(zip(FIELD_NAMES, initial_controls(), strict=True))
    shown.update(values)
    return [shown[name] for name in FIELD_NAMES]


def _field(controls, name):
    return controls[FIELD_NAMES.index(name)]


@pytest.fixture
def queue(tmp_path):
    return JobQueue(tmp_path / "queue.sqlite")


def test_start_is_refused_with_the_cli_message_until_the_form_validates(queue, tmp_path):
    bad = _controls(min_bucket_reso=1024, max_bucket_reso=512)
    assert (
        start_job(queue, "", bad)
        == "Not started: --min_bucket_reso 1024 is larger than --max_bucket_reso 512"
    )
    assert queue.jobs() == []
    good = _controls(
        train_data_dir=str(tmp_path / "img"), output_dir=str(tmp_path / "out"), output_name="kitten"
    )
    assert start_job(queue, "first try", good).startswith("Queued job ")
    [job] = queue.jobs()
    assert job.name == "first try"
    assert job.config_toml == validate(good).toml


def test_a_change_refreshes_the_message_the_start_button_and_the_marked_field():
    start = FormView(frozenset(), None)
    message, start_button, toml, _, view, *updates = refresh_form(_controls(train_batch_size=0), "", start)
    assert message == "❌ --train_batch_size: Input should be greater than or equal to 1 (got 0)"
    assert start_button["interactive"] is False and toml is None
    assert view.flagged == "train_batch_size"
    marked = updates[FIELD_NAMES.index("train_batch_size")]
    assert marked["info"] == "⚠ --train_batch_size: Input should be greater than or equal to 1 (got 0)"
    message, start_button, toml, _, after, *updates = refresh_form(_controls(), "", view)
    assert message == VALID and start_button["interactive"] is True and toml is not None
    assert updates[FIELD_NAMES.index("train_batch_size")]["elem_classes"] == []


def test_fields_hide_with_their_option_and_search_shows_only_matches():
    before = FormView(frozenset(), None)
    *_, view = refresh_form(_controls(network_train_unet_only=True), "", before)[:5]
    assert "text_encoder_lr" in view.hidden
    updates = refresh_form(_controls(network_train_unet_only=True), "", before)[5:]
    assert updates[FIELD_NAMES.index("text_encoder_lr")]["visible"] is False
    *_, view = refresh_form(_controls(), "network_dim", before)[:5]
    assert "network_dim" not in view.hidden and "learning_rate" in view.hidden


def test_save_then_load_gives_back_the_same_config(tmp_path):
    controls = _controls(
        network_dim=32, network_alpha=16.0, optimizer_args="weight_decay=0.01 betas=0.9,0.99"
    )
    target = tmp_path / "runs" / "my lora.toml"
    assert save_config(str(target), controls) == f"Saved {target}"
    loaded, message = load_config(str(target))
    assert message == f"Loaded {target}"
    assert validate(loaded).config == validate(controls).config
    assert read_config_file(target)["optimizer_args"] == ["weight_decay=0.01", "betas=0.9,0.99"]


def test_an_invalid_form_is_not_saved_and_nothing_is_written(tmp_path):
    target = tmp_path / "bad.toml"
    with pytest.raises(UserError, match=r"^not saved: --train_batch_size: Input should be"):
        save_config(str(target), _controls(train_batch_size=0))
    assert not target.exists()


def test_a_pasted_command_line_lands_in_the_form_with_its_report(tmp_path):
    controls, report = import_into_form(
        "accelerate launch train_network.py --network_dim 64 --unet_lr 5e-5", None, tmp_path
    )
    assert _field(controls, "network_dim") == 64 and _field(controls, "unet_lr") == 5e-5
    assert "network_dim" in report and "keys mapped" in report.splitlines()[-1]
    assert list(tmp_path.iterdir()) == []  # no prompts, no prompt file


KOHYA_SS = Path(__file__).resolve().parents[1] / "data" / "kohya_ss"
PROMPTS = "a red circle --w 64 --h 64 --s 2\n# a comment line\na blue square --n blurry --d 7"


@pytest.mark.parametrize("given", ["path", "upload", "pasted"])
def test_a_kohya_ss_json_s_sample_prompts_become_the_prompt_file_the_form_names(tmp_path, given):
    """The GUI keeps its sample prompts as text in the config; imported into the form they are written
    to a prompt file (next to a config given by its path, else in the data folder's imported-prompts)
    that `sample_prompts` names, and the report says where."""
    config = tmp_path / "mine" / "lora.json"
    config.parent.mkdir()
    settings = json.loads((KOHYA_SS / "sd15 - EDG_LoraOptiSettings.json").read_text(encoding="utf-8"))
    config.write_text(json.dumps({**settings, "sample_prompts": PROMPTS}), encoding="utf-8")
    data_folder = tmp_path / "data" / "imported-prompts"
    source, uploaded = {
        "path": (str(config), None),
        "upload": ("", str(config)),
        "pasted": (config.read_text(encoding="utf-8"), None),
    }[given]
    controls, report = import_into_form(source, uploaded, data_folder)
    prompt_file = Path(_field(controls, "sample_prompts"))
    if given == "path":
        assert prompt_file == config.with_suffix(".prompts.txt")
    else:
        assert prompt_file.parent == data_folder
    assert prompt_file.read_text(encoding="utf-8") == PROMPTS + "\n"
    assert report.splitlines()[-1] == f"wrote the config's sample prompts to {prompt_file}"
    again_controls, again = import_into_form(source, uploaded, data_folder)
    assert _field(again_controls, "sample_prompts") == str(prompt_file)
    assert "wrote the config's sample prompts" not in again  # the same prompts: the file is left as is


def test_a_preset_fills_the_form_with_a_valid_config():
    from loracraft.config.presets import load_preset, preset_names

    name = preset_names()[0]
    controls, message = apply_preset(name)
    assert message == f"Preset {name} applied"
    config = validate(controls).config
    assert config is not None
    assert all(getattr(config, key) == TrainConfig.model_validate(load_preset(name)).__getattribute__(key)
               for key in load_preset(name))  # fmt: skip


def test_show_command_prints_the_train_command_or_why_not():
    assert show_command(_controls(network_dim=32, optimizer_type="AdamW")).startswith("loracraft train ")
    assert "--network_dim 32" in show_command(_controls(network_dim=32))
    assert show_command(_controls(train_batch_size=0)).startswith("no command: --train_batch_size:")


def test_the_dataset_check_runs_on_the_forms_folder(tmp_path):
    tree = make_kohya_dataset(tmp_path)
    report = check_dataset("", _controls(train_data_dir=str(tree.train_dir), resolution="64,64"))
    assert report.splitlines()[-1] == "0 error(s), 1 warning(s): ready to train"
    assert check_dataset(str(tmp_path / "missing"), _controls()).splitlines() == [
        f"error: {tmp_path / 'missing'} does not exist; give a --train_data_dir folder or a dataset TOML",
        "1 error(s), 0 warning(s): problems found",
    ]


def test_the_page_has_a_control_with_a_stable_id_for_every_field(queue):
    app = build_app(queue)
    ids = {block.elem_id for block in app.blocks.values()}
    assert {control_id(name) for name in FIELD_NAMES} <= ids
    assert {"start", "field-search", "validation-message", "config-load", "config-save", "import-run"} <= ids


def test_the_form_is_checked_after_each_edit_and_once_after_a_whole_rewrite(queue):
    """A user's edit of any field triggers the check (its `input` event); a rewrite of the whole form
    (load, preset, import, edit a copy) triggers one check after it, not one per control it changes:
    the per-control `change` events of a rewrite froze the page for a minute."""
    app = build_app(queue)
    ids = {block.elem_id: block_id for block_id, block in app.blocks.items()}
    fields = {ids[control_id(name)] for name in FIELD_NAMES}
    dependencies = app.config["dependencies"]

    def outputs_of(dependency):
        return set(dependency["outputs"])

    checks = [d for d in dependencies if ids["validation-message"] in outputs_of(d)]
    by_edit = [d for d in checks if d["trigger_after"] is None]
    assert len(by_edit) == 1
    triggers = set(map(tuple, by_edit[0]["targets"]))
    assert triggers == {(field, "input") for field in fields} | {(ids["field-search"], "change")}

    rewrites = [d for d in dependencies if fields <= outputs_of(d) and d not in checks]
    assert len(rewrites) == 4  # load, apply preset, import, edit a copy from the queue
    followed = {d["trigger_after"] for d in checks}
    assert {d["id"] for d in rewrites} <= followed
    assert not any(
        target[1] == "change" and target[0] in fields for d in dependencies for target in d["targets"]
    )


def test_the_optimizer_args_tooltip_follows_the_chosen_optimizer():
    """optimizer_args says what the chosen optimizer's class takes, read from the installed class, and
    changes when the optimizer does; an invalid form keeps the last optimizer's hint."""
    import inspect

    prodigy = pytest.importorskip("prodigyopt").Prodigy
    index = FIELD_NAMES.index("optimizer_args")
    start = FormView(frozenset(), None, "AdamW")
    refreshed = refresh_form(_controls(optimizer_type="Prodigy"), "", start)
    view, updates = refreshed[4], refreshed[5:]
    assert view.optimizer == "Prodigy"
    info = updates[index]["info"]
    assert info.startswith(form_fields()["optimizer_args"].description)
    for name, parameter in inspect.signature(prodigy).parameters.items():
        if name not in ("params", "lr"):
            assert f"{name}={parameter.default!r}" in info
    assert "keep the learning rates about 1" in info
    unchanged = refresh_form(_controls(optimizer_type="Prodigy"), "", view)[5:]
    assert "info" not in unchanged[index]
    broken = refresh_form(_controls(optimizer_type="Prodigy", train_batch_size=0), "", view)
    assert broken[4].optimizer == "Prodigy" and "info" not in broken[5 + index]

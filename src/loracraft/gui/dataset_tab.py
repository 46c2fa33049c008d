"""The dataset tools in the page: `loracraft dataset prepare` (a kohya folder tree from a folder of
images) and `loracraft dataset check` (the dataset doctor) with their reports shown where they ran.

The check plans with the form's settings (resolution, buckets, batch size, captions), as `loracraft
dataset check` does with the same flags.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from loracraft.errors import UserError
from loracraft.gui.form_state import FIELD_NAMES, validate
from loracraft.tools.dataset_check import format_report, run_check
from loracraft.tools.dataset_prepare import main as prepare_main


def check_dataset(target: str, controls: Sequence[Any]) -> str:
    """The dataset doctor's report on `target` (a folder or dataset TOML; empty: the form's
    --dataset_config, else its --train_data_dir) with the form's settings."""
    validation = validate(controls)
    if validation.config is None:
        return f"error: the form does not validate: {validation.message}"
    config = validation.config
    chosen = target.strip() or config.dataset_config or config.train_data_dir
    if not chosen:
        return "error: give a folder or dataset TOML to check, or set --train_data_dir in the form"
    return format_report(run_check(Path(chosen), config))


def prepare_dataset(
    train_images: str,
    instance_prompt: str,
    class_prompt: str,
    repeats: float | None,
    reg_images: str,
    reg_repeats: float | None,
    output: str,
    caption_extension: str,
) -> str:
    """Run `loracraft dataset prepare` with these values; its report, or its one-line error."""
    argv = [
        "--train_images", train_images, "--instance_prompt", instance_prompt, "--class_prompt", class_prompt,
        "--output", output, "--caption_extension", caption_extension,
    ]  # fmt: skip
    if repeats is not None:
        argv += ["--repeats", str(int(repeats))]
    if reg_images.strip():
        argv += ["--reg_images", reg_images]
        if reg_repeats is not None:
            argv += ["--reg_repeats", str(int(reg_repeats))]
    lines: list[str] = []
    try:
        prepare_main(argv, echo=lines.append)
    except UserError as err:
        return f"error: {err}"
    return "\n".join(lines)


def prepared_folders(output: str) -> dict[str, str]:
    """The form's folder fields for a tree `dataset prepare` built in `output`."""
    root = Path(output.strip())
    folders = {"train_data_dir": root / "img", "output_dir": root / "model", "logging_dir": root / "log"}
    if (root / "reg").is_dir():
        folders["reg_data_dir"] = root / "reg"
    return {name: str(path) for name, path in folders.items()}


def check_section(controls: list[gr.components.Component], prefix: str) -> gr.Textbox:
    """A target box, a Check button and the report, wired to the form's `controls` (FIELD_NAMES order);
    `prefix` keeps the elem_ids of its copies (Dataset tab, Folders tab) apart. Returns the target box."""
    target = gr.Textbox(
        label="Folder or dataset TOML to check (empty: the form's dataset_config or train_data_dir)",
        elem_id=f"{prefix}-check-target",
    )
    run = gr.Button("Check dataset", elem_id=f"{prefix}-check-run")
    report = gr.Textbox(label="Dataset check", lines=12, interactive=False, elem_id=f"{prefix}-check-report")
    run.click(lambda chosen, *shown: check_dataset(chosen, shown), inputs=[target, *controls], outputs=report)
    return target


def dataset_tab(controls: list[gr.components.Component]) -> Any:
    """The "Dataset" tab: prepare a folder tree (and use it in the form), then check it. Returns the
    event that puts the prepared folders in the form, for the caller to follow with a check of the form."""
    by_name = dict(zip(FIELD_NAMES, controls, strict=True))
    with gr.Tab("Dataset", elem_id="dataset-tab"):
        gr.Markdown("### Prepare a kohya folder tree (img/N_concept, reg/, model/, log/)")
        with gr.Row():
            train_images = gr.Textbox(label="Folder of training images", elem_id="prepare-train-images")
            output = gr.Textbox(label="Folder to create the tree in", elem_id="prepare-output")
        with gr.Row():
            instance_prompt = gr.Textbox(
                label="Instance prompt (the new token)", elem_id="prepare-instance-prompt"
            )
            class_prompt = gr.Textbox(label="Class prompt", elem_id="prepare-class-prompt")
            repeats = gr.Number(value=40, precision=0, label="Repeats", elem_id="prepare-repeats")
        with gr.Row():
            reg_images = gr.Textbox(label="Regularization images (optional)", elem_id="prepare-reg-images")
            reg_repeats = gr.Number(value=1, precision=0, label="Reg repeats", elem_id="prepare-reg-repeats")
            caption_extension = gr.Textbox(
                value=".txt", label="Caption extension", elem_id="prepare-caption-extension"
            )
        with gr.Row():
            prepare = gr.Button("Prepare", variant="primary", elem_id="prepare-run")
            use = gr.Button("Use these folders in the form", elem_id="prepare-use")
        prepare_report = gr.Textbox(
            label="Prepare report", lines=10, interactive=False, elem_id="prepare-report"
        )
        gr.Markdown("### Check a dataset with the form's settings")
        check_target = check_section(controls, "dataset")

    prepare.click(
        prepare_dataset,
        inputs=[
            train_images,
            instance_prompt,
            class_prompt,
            repeats,
            reg_images,
            reg_repeats,
            output,
            caption_extension,
        ],
        outputs=prepare_report,
    )
    targets = ["train_data_dir", "reg_data_dir", "output_dir", "logging_dir"]

    def use_folders(root: str) -> list[Any]:
        # The check box names the tree's images too: a Check clicked before the form's fields are
        # updated in the browser still checks the prepared tree, not the form's older folder.
        if not root.strip():
            return [gr.update()] * (len(targets) + 1)
        folders = prepared_folders(root)
        fields = [folders[name] if name in folders else gr.update() for name in targets]
        return [*fields, folders["train_data_dir"]]

    return use.click(use_folders, inputs=output, outputs=[*(by_name[name] for name in targets), check_target])

"""The `loracraft` command: a thin dispatcher; everything below it takes typed values."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from loracraft import __version__
from loracraft.errors import UserError
from loracraft.library_notices import filter_library_notices
from loracraft.tools import TOOLS
from loracraft.training.interrupt import RunStopped

if TYPE_CHECKING:
    from loracraft.config.schema import TrainConfig

USAGE = """usage: loracraft COMMAND [flags]

commands:
  train   train a LoRA with kohya sd-scripts' flags (loracraft train --help)
  plan    the run train's flags describe, without training: steps, files, memory, time, LR curve PNG
  demo    train a LoRA on the embedded tiny model and render a comparison grid
  dataset prepare (kohya folder tree from your images) | check (the dataset doctor)
  caption tag or caption a folder of images (WD14, BLIP, BLIP-2, GIT, Florence-2, an OpenAI-compatible
          endpoint) | caption edit DIR: bulk caption edits (loracraft caption --help)
  sample  draw a prompt file's images from saved LoRA files, several side by side (loracraft sample --help)
  grid    a training run's epochs x weights as one labelled image, to pick the epoch and weight to keep
  inspect what a LoRA file holds: type, family, ranks, training settings, tags, norms, zeros and NaNs, hashes
  resize  reduce a LoRA's rank by SVD (kohya's resize_lora.py flags)
  merge   LoRAs into a checkpoint, or LoRAs into one LoRA (kohya's merge_lora.py flags)
  extract a LoRA from a fine-tuned checkpoint and its base (kohya's extract_lora_from_models.py flags)
  gui     the web UI: the training form, dataset tools and the job queue (loracraft gui --help)
  config  import a kohya_ss GUI JSON, kohya TOML or command line as loracraft TOML | presets (loracraft config)
  queue   add | add-tool | list | stop | resume | cancel | delete | move | run: the job queue (loracraft queue --help)

loracraft {version}
"""


def config_from_flags(
    argv: list[str], prog: str = "loracraft train", description: str | None = None
) -> TrainConfig:
    """`loracraft train`'s flags (over --config_file) as a TrainConfig: `plan` takes exactly the same."""
    from loracraft.config.cli_args import make_train_parser, parse_train_flags
    from loracraft.config.load import build_config, read_config_file

    parser = make_train_parser(prog)
    if description is not None:
        parser.description = description
    config_file, flags = parse_train_flags(parser, argv)
    from loracraft.training.trackers import api_key_warning

    if warning := api_key_warning(flags):
        print(warning, file=sys.stderr)
    file_values = read_config_file(config_file) if config_file else {}
    return build_config(file_values, flags)


def run_train(argv: list[str]) -> int:
    config = config_from_flags(argv)
    from loracraft.training.trainer import cache_only, train

    if config.cache_only:
        print(cache_only(config))
    else:
        train(config)
    return 0


def run_plan(argv: list[str]) -> int:
    config = config_from_flags(
        argv,
        "loracraft plan",
        "Print what `loracraft train` with these flags would do (dataset arithmetic, files, peak memory, time) "
        "and draw its learning-rate curve as OUTPUT_DIR/NAME-lr.png, without training.",
    )
    from loracraft.tools.plan import plan_run

    plan_run(config)
    return 0


def run_dataset(argv: list[str]) -> int:
    from loracraft.config.suggest import did_you_mean

    actions = {words.split()[1]: module for words, module in TOOLS.items() if words.startswith("dataset ")}
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: loracraft dataset prepare|check [flags]  (loracraft dataset prepare --help)")
        return 0 if argv else 2
    module = actions.get(argv[0])
    if module is None:
        raise UserError(
            f"unknown dataset action {argv[0]!r}{did_you_mean(argv[0], actions)}; use prepare or check"
        )
    return tool_command(module)(argv[1:])


def tool_command(module: str) -> Callable[[list[str]], int]:
    """A tool's `main(argv)`, imported when the command runs (the CLI starts without torch)."""

    def run(argv: list[str]) -> int:
        from importlib import import_module

        return import_module(f"loracraft.tools.{module}").main(argv)

    return run


def run_queue_command(argv: list[str]) -> int:
    from loracraft.jobs.cli import main as queue_main

    return queue_main(argv)


def run_gui(argv: list[str]) -> int:
    try:
        import gradio  # noqa: F401 - the gui extra's one dependency
    except ImportError:
        raise UserError("loracraft gui needs Gradio: pip install 'loracraft[gui]'") from None
    from loracraft.gui.server import main as gui_main

    return gui_main(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": run_train,
    "plan": run_plan,
    "demo": tool_command("demo"),
    "dataset": run_dataset,
    **{words: tool_command(module) for words, module in TOOLS.items() if " " not in words},
    "config": tool_command("config_import"),
    "queue": run_queue_command,
    "gui": run_gui,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.format(version=__version__))
        return 0 if argv else 2
    if argv[0] == "--version":
        print(__version__)
        return 0
    command = COMMANDS.get(argv[0])
    filter_library_notices()
    if command is None:
        from loracraft.config.suggest import did_you_mean

        print(f"error: unknown command {argv[0]!r}{did_you_mean(argv[0], COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return command(argv[1:])
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunStopped as stop:
        print(stop, file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("interrupted: files already written are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

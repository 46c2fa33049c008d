"""`loracraft caption DIR`: caption files for a folder of images, from a tagger, a captioner or an endpoint.

One command for what the kohya_ss GUI's Captioning pages run as separate scripts: kohya's WD14 tagger
flags (`tag_images_by_wd14_tagger.py`: a pasted command line works with `loracraft caption` in front),
its BLIP and GIT captioners' flags (`make_captions.py`, `make_captions_by_git.py`), BLIP-2 and Florence-2,
and any vision-language model behind an OpenAI-compatible endpoint. `--model` says which model (its files
say what kind it is); `--endpoint` sends the images to a server instead. `loracraft caption edit DIR` edits
caption files in bulk (tools/caption_edit.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from loracraft.caption.model_source import DEFAULT_TAGGER
from loracraft.errors import UserError
from loracraft.tools.tool_parser import ToolParser, add_caption_extension_flag

if TYPE_CHECKING:
    from loracraft.caption.run import CaptionJob

DEFAULT_API_KEY_VARIABLE = "OPENAI_API_KEY"


def make_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="loracraft caption",
        description="Write a caption file beside each image of DIR with a WD14 tagger, BLIP, BLIP-2, GIT, "
        "Florence-2 or an OpenAI-compatible endpoint. Existing captions are kept unless --overwrite or "
        "--append. `loracraft caption edit DIR --help`: bulk edits.",
    )
    parser.add_argument("train_data_dir", metavar="DIR", help="The folder of images to caption.")
    _add_model_flags(parser)
    _add_file_flags(parser)
    _add_tagger_flags(parser)
    _add_captioner_flags(parser)
    _add_endpoint_flags(parser)
    return parser


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        "--repo_id",
        "--model_id",
        dest="model",
        help="A hub id or a local folder: a WD14 tagger (model.onnx + selected_tags.csv), BLIP, BLIP-2, GIT or "
        f"Florence-2; with --endpoint, the served model's name. Default: kohya's tagger, {DEFAULT_TAGGER}.",
    )
    group.add_argument(
        "--model_dir",
        default="wd14_tagger_model",
        help="kohya's tagger download folder: a MODEL_DIR/owner_name/ copy of --model there is used as it is "
        "(other downloads go to the hub cache).",
    )
    group.add_argument("--force_download", action="store_true", help="Download the model again.")
    group.add_argument(
        "--onnx", action="store_true", help="Accepted for kohya's command lines: taggers always run as ONNX."
    )
    group.add_argument("--batch_size", type=int, default=1, help="Images per inference batch.")
    group.add_argument(
        "--max_data_loader_n_workers",
        type=int,
        help="Threads decoding images ahead of the model (default 4).",
    )
    group.add_argument(
        "--device", help="cpu, cuda or cuda:N (default: cuda when there is one, else the CPU)."
    )
    group.add_argument(
        "--debug", action="store_true", help="Print each image's caption (a tagger: its tags by category)."
    )


def _add_file_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("caption files")
    add_caption_extension_flag(group)
    group.add_argument(
        "--prefix", default="", help="Text put before each caption (a trigger word), joined by a space."
    )
    group.add_argument(
        "--suffix",
        "--postfix",
        dest="suffix",
        default="",
        help="Text put after each caption, joined by a space.",
    )
    mode = group.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="Replace existing caption files.")
    mode.add_argument(
        "--append",
        "--append_tags",
        dest="append",
        action="store_true",
        help="Add the new caption's tags after an existing caption (tags it has already are not repeated).",
    )
    group.add_argument("--recursive", action="store_true", help="Caption the images of subfolders too.")
    group.add_argument(
        "--caption_separator", default=", ", help="Between tags: the tagger's output and --append's joins."
    )


def _add_tagger_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("WD14 tagger (kohya's tag_images_by_wd14_tagger.py flags)")
    group.add_argument("--thresh", type=float, default=0.35, help="Confidence a tag needs to be written.")
    group.add_argument("--general_threshold", type=float, help="For general tags (default: --thresh).")
    group.add_argument("--character_threshold", type=float, help="For character tags (default: --thresh).")
    group.add_argument(
        "--undesired_tags", default="", help="Tags never written, separated by --caption_separator."
    )
    group.add_argument(
        "--always_first_tags",
        help="Tags moved to the front when found, each in turn as kohya does (the last listed ends up first), "
        "separated by --caption_separator (e.g. '1girl,1boy').",
    )
    group.add_argument(
        "--tag_replacement",
        help="Tag replacements 'source1,target1;source2,target2' (escape , and ; with a backslash).",
    )
    group.add_argument(
        "--remove_underscore", action="store_true", help="Write tags with spaces, not underscores."
    )
    group.add_argument("--use_rating_tags", action="store_true", help="Put the rating tag first.")
    group.add_argument("--use_rating_tags_as_last_tag", action="store_true", help="Put the rating tag last.")
    group.add_argument(
        "--character_tags_first", action="store_true", help="Put character tags before the general ones."
    )
    group.add_argument(
        "--character_tag_expand",
        action="store_true",
        help="Split a character tag's series: `chara_name_(series)` becomes `chara_name, series`.",
    )
    group.add_argument("--frequency_tags", action="store_true", help="Print how often each tag was written.")


def _add_captioner_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("BLIP, BLIP-2, GIT, Florence-2 (kohya's make_captions.py flags)")
    group.add_argument(
        "--prompt",
        help="Text the model continues (BLIP, BLIP-2, GIT) or the instruction sent with each image (--endpoint).",
    )
    group.add_argument(
        "--task",
        default="<DETAILED_CAPTION>",
        help="Florence-2's task: <CAPTION>, <DETAILED_CAPTION> or <MORE_DETAILED_CAPTION>.",
    )
    group.add_argument(
        "--beam_search",
        action="store_true",
        help="Beam search with --num_beams (otherwise nucleus sampling with --top_p; GIT decodes greedily).",
    )
    group.add_argument("--num_beams", type=int, default=1, help="Beams of the beam search.")
    group.add_argument(
        "--top_p", type=float, default=0.9, help="Nucleus sampling's top_p (without --beam_search; not GIT)."
    )
    group.add_argument(
        "--max_length", type=int, help="Longest caption in tokens (default: BLIP 75, GIT 50, others 256)."
    )
    group.add_argument("--min_length", type=int, default=5, help="Shortest caption in tokens.")
    group.add_argument("--seed", type=int, default=42, help="Seed of the sampling.")
    group.add_argument(
        "--remove_words",
        action="store_true",
        help="Remove words like 'with the words xxx' from captions (kohya's GIT option).",
    )


def _add_endpoint_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("OpenAI-compatible endpoint (llama.cpp, vLLM, Ollama, ...)")
    group.add_argument(
        "--endpoint",
        help="The server's base URL (http://127.0.0.1:8080/v1); the images go to its /chat/completions.",
    )
    group.add_argument(
        "--api_key_env",
        default=DEFAULT_API_KEY_VARIABLE,
        help="The environment variable holding the API key (none needed by most local servers).",
    )
    group.add_argument("--concurrency", type=int, default=4, help="Requests in flight at once.")
    group.add_argument(
        "--retries", type=int, default=3, help="Tries again after a failed request this many times."
    )
    group.add_argument("--timeout", type=float, default=120.0, help="Seconds a request may take.")
    group.add_argument("--max_tokens", type=int, default=300, help="Longest answer in tokens.")


def check_flags(args: argparse.Namespace) -> None:
    """Flag values that cannot work, each refused in one line before any model is loaded."""
    positive = {
        "--batch_size": args.batch_size,
        "--concurrency": args.concurrency,
        "--num_beams": args.num_beams,
    }
    for flag, value in positive.items():
        if value < 1:
            raise UserError(f"{flag} {value}: use 1 or more")
    if args.retries < 0:
        raise UserError(f"--retries {args.retries}: use 0 or more")
    if args.endpoint and not args.model:
        raise UserError("--endpoint needs --model NAME: the model the server should answer with")


def main(argv: list[str]) -> int:
    if argv[:1] == ["edit"]:
        from loracraft.tools.caption_edit import main as edit_main

        return edit_main(argv[1:])
    args = make_parser().parse_args(argv)
    check_flags(args)
    from loracraft.caption.backend import open_captioner
    from loracraft.caption.images import find_images
    from loracraft.caption.run import CaptionSummary, caption_images, plan_jobs
    from loracraft.caption.writing import CaptionPolicy

    folder = Path(args.train_data_dir)
    images = find_images(folder, args.recursive)
    if not images:
        raise UserError(
            f"{folder} has no images" + ("" if args.recursive else " (add --recursive for subfolders)")
        )
    policy = CaptionPolicy(args.overwrite, args.append, args.prefix, args.suffix, args.caption_separator)
    summary = CaptionSummary(folder)
    jobs = plan_jobs(images, args.caption_extension, policy, summary)
    if jobs:
        captioner = open_captioner(args)
        # --debug: each caption as it is written (a tagger prints its own, per tag category).
        show = _print_caption(folder) if args.debug and not getattr(captioner, "debug", False) else None
        caption_images(
            folder, jobs, captioner, policy, summary, workers=args.max_data_loader_n_workers, on_caption=show
        )
        if report := getattr(captioner, "report", None):
            for line in report():
                print(line)
    print("\n".join(summary.lines()))
    if message := summary.failure_message():
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0


def _print_caption(folder: Path) -> Callable[[CaptionJob, str], None]:
    from tqdm import tqdm

    from loracraft.caption.images import relative_name

    def show(job: CaptionJob, caption: str) -> None:
        tqdm.write(f"{relative_name(job.image, folder)}: {caption}")

    return show

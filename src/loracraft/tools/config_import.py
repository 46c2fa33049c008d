"""`loracraft config import|presets`: other tools' configs and the shipped presets as loracraft TOML.

`config import FILE` reads a kohya_ss GUI JSON, a kohya TOML or a file holding a kohya command line, prints
every key as mapped (to which field, with the value) or ignored (with the reason), and writes the settings
as a TOML that `loracraft train --config_file` loads (to -o, or to stdout with the report on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loracraft.atomic import write_text_atomic
from loracraft.config.importers import KINDS, import_config, report_lines
from loracraft.config.importers.apply import imported_config, imported_toml, write_prompt_file
from loracraft.config.presets import preset_names, preset_text
from loracraft.errors import UserError
from loracraft.tools.tool_parser import ToolParser

USAGE = """usage: loracraft config import FILE [-o run.toml] | import --preset NAME [-o run.toml] | presets

  import FILE      a kohya_ss GUI JSON (.json), a kohya TOML (.toml) or a kohya command line (.txt, .sh,
                   .bat, .ps1) as loracraft TOML; every key of FILE is listed as mapped or ignored
  import --preset  a shipped preset (loracraft config presets lists them)
  presets          list the shipped presets
"""


def make_import_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="loracraft config import", description=__doc__.split("\n\n")[1])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", type=Path, help="the config to import")
    source.add_argument("--preset", metavar="NAME", help="a shipped preset instead of a file")
    parser.add_argument("-o", "--output", type=Path, help="write the TOML here (default: stdout)")
    parser.add_argument("--force", action="store_true", help="replace an existing --output file")
    parser.add_argument("--kind", choices=KINDS, default="auto", help="what FILE is (default: by its suffix)")
    return parser


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "presets":
        print("\n".join(preset_names()))
        return 0
    if argv[0] != "import":
        raise UserError(f"unknown config action {argv[0]!r}; use import or presets")
    args = make_import_parser().parse_args(argv[1:])
    if args.output is not None and args.output.exists() and not args.force:
        raise UserError(f"-o {args.output} exists: choose another file or add --force to replace it")
    text = preset_text(args.preset) if args.preset else _imported_text(args)
    if args.output is None:
        sys.stdout.write(text)
    else:
        write_text_atomic(args.output, text)
        print(
            f"wrote {args.output}: train with `loracraft train --config_file {args.output}`", file=sys.stderr
        )
    return 0


def _imported_text(args: argparse.Namespace) -> str:
    report = import_config(args.file, args.kind)
    prompts_next_to = args.output if args.output is not None else args.file
    if note := write_prompt_file(report, prompts_next_to.with_suffix(".prompts.txt")):
        print(f"note: {note}", file=sys.stderr)
    config = imported_config(report)
    # The report goes to stderr so that `loracraft config import x.json > run.toml` writes only the TOML.
    print("\n".join(report_lines(report)), file=sys.stderr)
    return imported_toml(report, config)

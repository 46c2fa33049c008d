"""`loracraft queue`: the job queue from the command line (the same queue the web UI shows)."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from loracraft.errors import UserError
from loracraft.jobs.queue import Job, JobQueue
from loracraft.jobs.tool_jobs import TOOL_COMMANDS

ACTIONS_HELP = """actions:
  add CONFIG.toml [--name N]    queue a run of a `loracraft train --config_file` file
  add-tool [--name N] TOOL ...  queue a tool command: TOOL and its flags as `loracraft TOOL ...` takes them
                                (loracraft queue add-tool resize --model a.safetensors --save_to b.safetensors
                                --new_rank 8); TOOL is {tools}
  list                          the jobs: id, state, name, step/total, output
  stop ID                       stop a running job (it saves a state to resume from)
  resume ID                     queue a stopped, interrupted or failed job again, from its last state
  cancel ID                     take a queued job out of the line
  delete ID [--outputs]         remove a job (with --outputs also its LoRA files and states)
  move ID POSITION              put a queued job at POSITION in the list (1: first)
  run [--watch] [--workers N]   run the queued jobs here; exits when none is left (--watch keeps waiting)
"""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loracraft queue",
        description="The job queue: training runs and tool commands that run one after another, outliving "
        "this terminal.",
        epilog=ACTIONS_HELP.format(tools=", ".join(TOOL_COMMANDS)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--queue", type=Path, help="the queue's file (default: in the user's data folder)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="queue a run of a config file")
    add.add_argument("config", type=Path, metavar="CONFIG.toml")
    add.add_argument("--name", help="the job's name (default: the config's output_name)")
    add_tool = actions.add_parser("add-tool", help="queue a tool command")
    add_tool.add_argument("--name", help="the job's name (default: the tool and its output's name)")
    add_tool.add_argument("tool", metavar="TOOL", help=", ".join(TOOL_COMMANDS))
    # Everything after TOOL is the tool's own (a `--` before it is dropped).
    add_tool.add_argument("tool_flags", nargs=argparse.REMAINDER, metavar="...")
    actions.add_parser("list", help="the jobs")
    for action, text in (
        ("stop", "stop a running job"),
        ("resume", "resume a job"),
        ("cancel", "cancel a job"),
    ):
        actions.add_parser(action, help=text).add_argument("id", type=int, metavar="ID")
    delete = actions.add_parser("delete", help="remove a job")
    delete.add_argument("id", type=int, metavar="ID")
    delete.add_argument("--outputs", action="store_true", help="also remove its LoRA files and saved states")
    move = actions.add_parser("move", help="reorder a queued job")
    move.add_argument("id", type=int, metavar="ID")
    move.add_argument("position", type=int, metavar="POSITION")
    run = actions.add_parser("run", help="run the queued jobs in this terminal")
    run.add_argument("--watch", action="store_true", help="keep waiting for new jobs when the queue is empty")
    run.add_argument("--workers", type=int, default=1, help="jobs at once, each on its own GPU (default 1)")
    for subparser in actions.choices.values():
        # Also after the action: `loracraft queue list --queue FILE`.
        subparser.add_argument("--queue", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    queue = JobQueue(args.queue)
    if args.action == "add":
        return add(queue, args.config, args.name)
    if args.action == "add-tool":
        job = queue.add_tool([args.tool, *args.tool_flags], args.name)
        print(
            f"job {job.id} ({job.name}) queued at position {job.position}: loracraft {shlex.join(job.tool_argv)}"
        )
        return 0
    if args.action == "list":
        print(job_table(queue.jobs()))
        return 0
    if args.action == "run":
        from loracraft.jobs.worker import run_queue

        return run_queue(queue, watch=args.watch, workers=args.workers)
    if args.action == "delete":
        queue.delete(args.id, remove_outputs=args.outputs)
        print(f"job {args.id} deleted" + (" with its LoRA files and states" if args.outputs else ""))
        return 0
    if args.action == "move":
        queue.move(args.id, args.position)
        print(f"job {args.id} is now at position {queue.get(args.id).position}")
        return 0
    job = getattr(queue, args.action)(args.id)
    next_step = NEXT_STEP.get(args.action, "") if job.tool is None else ""
    print(f"job {job.id} ({job.name}): {job.state}" + next_step)
    return 0


NEXT_STEP = {
    "stop": "; it saves a state and a LoRA file, then `loracraft queue resume ID` continues it",
    "resume": "; `loracraft queue run` (or the web UI's worker) continues it from its last state",
}


def add(queue: JobQueue, config_file: Path, name: str | None) -> int:
    if not config_file.is_file():
        raise UserError(
            f"{config_file} does not exist: give the path of a `loracraft train --config_file` TOML"
        )
    job = queue.add(config_file.read_text(encoding="utf-8"), name, source=str(config_file))
    print(
        f"job {job.id} ({job.name}) queued at position {job.position}: writes {job.output_name} in {job.output_dir}"
    )
    return 0


def job_table(jobs: list[Job]) -> str:
    """The jobs as a table: id, state, name, step/total, output."""
    from loracraft.jobs.progress import read_progress_file

    if not jobs:
        return "the queue is empty (loracraft queue add CONFIG.toml)"
    rows = [("ID", "STATE", "NAME", "STEP", "OUTPUT", "NOTE")]
    for job in jobs:
        progress = read_progress_file(job.progress_file)
        steps = f"{progress.step}/{progress.total_steps or '?'}" if job.started_at and not job.tool else "-"
        rows.append((str(job.id), job.state, job.name, steps, job.output or "-", _note(job)))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(map(str.ljust, row, widths)).rstrip() for row in rows)


def _note(job: Job) -> str:
    if job.state in ("failed", "stopped", "interrupted") and job.exit_reason:
        return job.exit_reason
    if job.state == "running" and job.started_at:
        return f"started {time.strftime('%H:%M:%S', time.localtime(job.started_at))}"
    return ""

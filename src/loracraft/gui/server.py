"""`loracraft gui`: the one place that serves the web UI.

Safe by default: it listens on 127.0.0.1; any other address, or a public share link, needs a login
(--auth user:pass or --auth_file). It works offline: no telemetry or version check (gui/__init__.py),
system fonts (style.py). It never trains in its own process: a worker thread launches the queue's jobs as
`loracraft train` subprocesses, so the page can be closed and reopened, or the server stopped, while a
job runs.
"""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loracraft.errors import UserError
from loracraft.tools.tool_parser import ToolParser

if TYPE_CHECKING:
    import gradio as gr

    from loracraft.jobs.worker import Worker

DEFAULT_LISTEN = "127.0.0.1"
DEFAULT_PORT = 7860
Credentials = list[tuple[str, str]]


def is_loopback(listen: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: only this machine can connect."""
    if listen == "localhost":
        return True
    try:
        return ipaddress.ip_address(listen.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def _credential(text: str, where: str) -> tuple[str, str]:
    user, colon, password = text.partition(":")
    if not colon or not user or not password:
        raise UserError(f"{where} must be user:password, with neither part empty")
    return user, password


def read_credentials(auth: str | None, auth_file: str | None) -> Credentials | None:
    """The logins from --auth user:pass and --auth_file (one user:password a line; # comments)."""
    logins = [_credential(auth, "--auth")] if auth else []
    if auth_file:
        path = Path(auth_file)
        if not path.is_file():
            raise UserError(f"--auth_file {path} does not exist")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                logins.append(_credential(line.strip(), f"--auth_file {path} line {number}"))
        if not logins:
            raise UserError(f"--auth_file {path} holds no user:password line")
    return logins or None


def refuse_unprotected(listen: str, share: bool, logins: Credentials | None) -> None:
    """Serving beyond this machine without a login is refused in one line."""
    if logins:
        return
    if not is_loopback(listen):
        raise UserError(
            f"--listen {listen} lets other machines reach the UI: add --auth user:pass or --auth_file FILE "
            f"(or listen on {DEFAULT_LISTEN})"
        )
    if share:
        raise UserError("--share makes a public link to the UI: add --auth user:pass or --auth_file FILE")


@dataclass
class RunningServer:
    """A started UI: its page, address and queue worker; `close` stops both (jobs in progress go on)."""

    app: gr.Blocks
    url: str
    worker: Worker | None

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        self.app.close()


def start_server(
    listen: str = DEFAULT_LISTEN,
    port: int = DEFAULT_PORT,
    logins: Credentials | None = None,
    share: bool = False,
    queue_path: Path | None = None,
    workers: int = 1,
    inbrowser: bool = False,
    run_jobs: bool = True,
) -> RunningServer:
    """Serve the UI on the queue at `queue_path` without blocking; `run_jobs` starts the worker thread."""
    refuse_unprotected(listen, share, logins)
    from starlette.middleware import Middleware

    from loracraft.gui.app import build_app
    from loracraft.gui.http_api import api_router
    from loracraft.gui.jobs_tab import served_folders
    from loracraft.gui.offline_page import OfflinePage
    from loracraft.gui.style import launch_style
    from loracraft.jobs.queue import JobQueue
    from loracraft.jobs.worker import Worker

    queue = JobQueue(queue_path)
    # Made first: a --workers value this machine cannot run is refused before anything is served.
    worker = Worker(queue, workers=workers) if run_jobs else None
    app = build_app(queue)
    app.queue()
    # Routes given to the app's constructor come before Gradio's own, so none of them can shadow /api/.
    app_kwargs = {"routes": api_router(queue, logins).routes, "middleware": [Middleware(OfflinePage)]}
    app.launch(
        server_name=listen,
        server_port=port,
        auth=logins,
        share=share,
        inbrowser=inbrowser,
        prevent_thread_lock=True,
        quiet=True,
        app_kwargs=app_kwargs,
        # The job page's sample gallery shows images from the jobs' folders, outside Gradio's own.
        allowed_paths=served_folders(queue),
        **launch_style(),
    )
    if worker is not None:
        worker.start()
    return RunningServer(app=app, url=app.local_url or f"http://{listen}:{port}/", worker=worker)


def make_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="loracraft gui",
        description="Serve the web UI: the training form, dataset tools and the job queue. Jobs run as "
        "`loracraft train` subprocesses and survive the UI.",
    )
    parser.add_argument("--listen", default=DEFAULT_LISTEN, metavar="ADDR",
                        help=f"Address to listen on [{DEFAULT_LISTEN}]; any other than loopback needs --auth.")  # fmt: skip
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"Port [{DEFAULT_PORT}].")
    parser.add_argument("--auth", metavar="USER:PASS", help="Require this login (page and /api/).")
    parser.add_argument("--auth_file", metavar="FILE", help="Logins, one user:password a line.")
    parser.add_argument("--share", action="store_true", help="Also make a public Gradio link (needs --auth).")
    parser.add_argument("--queue", type=Path, metavar="FILE", help="Queue database [the user's data folder].")
    parser.add_argument("--workers", type=int, default=1, help="Jobs run at once, one GPU each [1].")
    parser.add_argument("--inbrowser", action="store_true", help="Open the page in the browser.")
    return parser


def serve(server: RunningServer) -> None:
    """Keep a started UI serving until Ctrl+C; the jobs running then go on in their own processes."""
    print(f"loracraft UI on {server.url} (Ctrl+C to stop; running jobs go on)")
    try:
        server.app.block_thread()
    finally:
        server.close()


def main(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    logins = read_credentials(args.auth, args.auth_file)
    serve(start_server(args.listen, args.port, logins, args.share, args.queue, args.workers, args.inbrowser))
    return 0

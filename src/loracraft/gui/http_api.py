"""The queue over HTTP: a small JSON API under /api/ for scripts, with the web UI's credentials.

GET /api/jobs lists the queue; POST /api/jobs adds a job from {"config_toml": ..., "name": ...};
GET /api/jobs/{id} is one job with a summary of its progress; GET /api/jobs/{id}/files/{name} downloads
one of its LoRA files (the job page links them); POST /api/jobs/{id}/stop, /resume and /cancel act on
it. Mistakes come back as the CLI's one-line message in `detail`: a config that does not
validate is 422, an unknown job 404, an action the job's state refuses 409. With `auth` set, every
request needs HTTP Basic credentials from it, or gets 401.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.responses import FileResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel

from loracraft.errors import UserError
from loracraft.jobs.progress import read_progress

if TYPE_CHECKING:
    from loracraft.jobs.queue import Job, JobQueue

Credentials = Sequence[tuple[str, str]]
# Without auto_error, a request without credentials reaches our check, which answers 401 with its message.
_BASIC = HTTPBasic(auto_error=False)
# A literal: the constant's name changed between Starlette versions.
UNPROCESSABLE = 422


class NewJob(BaseModel):
    config_toml: str
    name: str | None = None


def api_router(queue: JobQueue, auth: Credentials | None) -> APIRouter:
    """The /api/ routes on `queue`; `auth` is the UI's (user, password) pairs, None for no login."""
    router = APIRouter(prefix="/api", dependencies=[Depends(_basic_auth_check(auth))] if auth else [])

    # Plain `def` handlers run in FastAPI's thread pool, so simultaneous requests reach the queue's
    # SQLite transactions at once instead of one after the other.
    @router.get("/jobs")
    def list_jobs() -> list[dict[str, Any]]:
        return [job_summary(job) for job in queue.jobs()]

    @router.post("/jobs", status_code=status.HTTP_201_CREATED)
    def add_job(new_job: NewJob) -> dict[str, Any]:
        try:
            job = queue.add(new_job.config_toml, name=new_job.name)
        except UserError as err:
            raise HTTPException(UNPROCESSABLE, str(err)) from None
        return job_summary(job)

    @router.get("/jobs/{job_id}")
    def job_status(job_id: int) -> dict[str, Any]:
        job = _known_job(queue, job_id)
        return {**job_summary(job), "config_toml": job.config_toml, "progress": progress_summary(job)}

    @router.get("/jobs/{job_id}/files/{file_name}")
    def job_file(job_id: int, file_name: str) -> FileResponse:
        # Only the LoRA files the job's run wrote: the name is looked up, never joined to a path.
        job = _known_job(queue, job_id)
        for path in read_progress(job).files:
            if path.name == file_name:
                return FileResponse(path, filename=path.name, media_type="application/octet-stream")
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} has no LoRA file {file_name!r}")

    for action in ("stop", "resume", "cancel"):
        router.add_api_route(f"/jobs/{{job_id}}/{action}", _job_action(queue, action), methods=["POST"])
    return router


def _job_action(queue: JobQueue, action: str) -> Callable[[int], dict[str, Any]]:
    def act(job_id: int) -> dict[str, Any]:
        _known_job(queue, job_id)
        try:
            return job_summary(getattr(queue, action)(job_id))
        except UserError as err:
            raise HTTPException(status.HTTP_409_CONFLICT, str(err)) from None

    act.__name__ = f"{action}_job"
    return act


def _known_job(queue: JobQueue, job_id: int) -> Job:
    try:
        return queue.get(job_id)
    except UserError as err:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(err)) from None


def _basic_auth_check(auth: Credentials) -> Callable[[HTTPBasicCredentials | None], None]:
    def check(credentials: Annotated[HTTPBasicCredentials | None, Depends(_BASIC)]) -> None:
        if credentials is None or not _is_allowed(credentials, auth):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "the API needs the web UI's user and password (HTTP Basic auth)",
                headers={"WWW-Authenticate": "Basic"},
            )

    return check


def _is_allowed(credentials: HTTPBasicCredentials, auth: Credentials) -> bool:
    # Compare every pair in constant time so the answer's timing does not tell which part was wrong.
    given = (credentials.username.encode(), credentials.password.encode())
    matches = [
        secrets.compare_digest(given[0], user.encode()) & secrets.compare_digest(given[1], password.encode())
        for user, password in auth
    ]
    return any(matches)


def job_summary(job: Job) -> dict[str, Any]:
    """A job as JSON: its place in the queue, state, times and where its files go."""
    return {
        "id": job.id,
        "name": job.name,
        "state": job.state,
        "position": job.position,
        "output_dir": str(job.output_dir),
        "output_name": job.output_name,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "exit_reason": job.exit_reason,
        "folder": str(job.folder),
    }


def progress_summary(job: Job) -> dict[str, Any]:
    """Where a job stands, as the job page shows it: step, epoch, ETA, the last losses, speed, files."""
    progress = read_progress(job)
    step, loss, average = progress.loss_points[-1] if progress.loss_points else (None, None, None)
    return {
        "step": progress.step,
        "total_steps": progress.total_steps,
        "epoch": progress.epoch,
        "epochs": progress.epochs,
        "eta_s": progress.eta_s,
        "loss": _finite(loss),
        "average_loss": _finite(average),
        "images_per_s": progress.images_per_s,
        "memory_gib": progress.memory_gib,
        "samples": [str(path) for _, _, path, _ in progress.samples],
        "files": [str(path) for path in progress.files],
        "log_dir": str(progress.log_dir) if progress.log_dir else None,
    }


def _finite(value: float | None) -> float | None:
    # JSON has no NaN: an average not known yet is null.
    return value if value is not None and math.isfinite(value) else None

"""The JSON API under /api/ on a real queue file: list, add, status, actions, errors and auth."""

import base64
import threading

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from loracraft.errors import UserError
from loracraft.gui.http_api import api_router
from loracraft.jobs.queue import JobQueue


@pytest.fixture
def queue(tmp_path):
    return JobQueue(tmp_path / "queue.sqlite")


def client_for(queue, auth=None):
    app = FastAPI()
    app.include_router(api_router(queue, auth))
    return TestClient(app)


def job_toml(tmp_path, name="toy"):
    return f'output_dir = "{tmp_path / "out"}"\noutput_name = "{name}"\nnetwork_dim = 4\n'


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_add_then_list_and_status(queue, tmp_path):
    client = client_for(queue)
    added = client.post("/api/jobs", json={"config_toml": job_toml(tmp_path), "name": "first"})
    assert added.status_code == 201
    job = added.json()
    assert (job["name"], job["state"], job["output_name"]) == ("first", "queued", "toy")
    assert job["output_dir"] == str(tmp_path / "out")

    listed = client.get("/api/jobs").json()
    assert [(entry["id"], entry["name"]) for entry in listed] == [(job["id"], "first")]

    status = client.get(f"/api/jobs/{job['id']}").json()
    assert status["config_toml"] == job_toml(tmp_path)
    assert status["progress"]["step"] == 0
    assert status["progress"]["loss"] is None
    assert status["progress"]["files"] == []


def test_invalid_config_is_422_with_the_cli_message(queue, tmp_path):
    bad = job_toml(tmp_path) + "netwrok_alpha = 2\n"
    with pytest.raises(UserError) as expected:
        JobQueue(tmp_path / "other.sqlite").add(bad)
    response = client_for(queue).post("/api/jobs", json={"config_toml": bad})
    assert response.status_code == 422
    assert response.json() == {"detail": str(expected.value)}
    assert "unknown key 'netwrok_alpha'" in response.json()["detail"]
    assert queue.jobs() == []


def test_actions_and_their_refusals(queue, tmp_path):
    client = client_for(queue)
    job_id = client.post("/api/jobs", json={"config_toml": job_toml(tmp_path)}).json()["id"]

    stopped = client.post(f"/api/jobs/{job_id}/stop")
    assert stopped.status_code == 409
    assert stopped.json()["detail"] == (
        f"job {job_id} is queued, not running: cancel it with `loracraft queue cancel {job_id}`"
    )

    cancelled = client.post(f"/api/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    assert queue.get(job_id).state == "cancelled"

    resumed = client.post(f"/api/jobs/{job_id}/resume")
    assert resumed.status_code == 409
    assert (
        resumed.json()["detail"]
        == f"job {job_id} is cancelled: only a stopped, interrupted or failed job resumes"
    )


def test_unknown_job_is_404(queue):
    client = client_for(queue)
    for response in (client.get("/api/jobs/7"), client.post("/api/jobs/7/stop")):
        assert response.status_code == 404
        assert response.json()["detail"].startswith("no job 7 in the queue")


def test_auth_needs_the_ui_credentials(queue, tmp_path):
    client = client_for(queue, auth=[("ana", "s3cret"), ("bo", "pw")])
    for headers in ({}, basic("ana", "wrong"), basic("nobody", "s3cret")):
        response = client.get("/api/jobs", headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Basic"
        assert response.json()["detail"] == "the API needs the web UI's user and password (HTTP Basic auth)"
    refused = client.post("/api/jobs", json={"config_toml": job_toml(tmp_path)})
    assert refused.status_code == 401
    assert queue.jobs() == []

    assert client.get("/api/jobs", headers=basic("bo", "pw")).json() == []
    added = client.post("/api/jobs", json={"config_toml": job_toml(tmp_path)}, headers=basic("ana", "s3cret"))
    assert added.status_code == 201


def test_concurrent_posts_all_land(queue, tmp_path):
    count = 8
    client = client_for(queue)
    start = threading.Barrier(count)
    results = []

    def post(index):
        start.wait()
        toml = job_toml(tmp_path, name=f"run{index}")
        results.append(client.post("/api/jobs", json={"config_toml": toml, "name": f"run{index}"}))

    threads = [threading.Thread(target=post, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [response.status_code for response in results] == [201] * count
    jobs = queue.jobs()
    assert sorted(job.name for job in jobs) == sorted(f"run{index}" for index in range(count))
    assert sorted(job.position for job in jobs) == list(range(1, count + 1))
    assert len({job.id for job in jobs}) == count


def test_a_jobs_lora_files_download_and_nothing_else_does(queue, tmp_path):
    """The job page links each LoRA file to /api/jobs/{id}/files/{name}: those files come back byte for
    byte; any other name (another file of the folder, a path climbing out of it) is 404."""
    job = queue.add(job_toml(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    (out / "toy-000001.safetensors").write_bytes(b"epoch one")
    (out / "toy.safetensors").write_bytes(b"final")
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    client = client_for(queue)
    for name, content in (("toy-000001.safetensors", b"epoch one"), ("toy.safetensors", b"final")):
        response = client.get(f"/api/jobs/{job.id}/files/{name}")
        assert response.status_code == 200 and response.content == content
        assert f'filename="{name}"' in response.headers["content-disposition"]
    for name in ("notes.txt", "..%2Fqueue.sqlite", "missing.safetensors"):
        response = client.get(f"/api/jobs/{job.id}/files/{name}")
        assert response.status_code == 404
    assert client.get(f"/api/jobs/{job.id}/files/notes.txt").json() == {
        "detail": f"job {job.id} has no LoRA file 'notes.txt'"
    }
    assert client.get("/api/jobs/99/files/toy.safetensors").status_code == 404

"""`loracraft gui`'s server rules on a real server: loopback by default, no other address or share link
without a login, a login on the page and /api/, nothing fetched from the internet, no telemetry."""

from __future__ import annotations

import base64
import http.cookiejar
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request

import pytest

from loracraft.cli import main
from loracraft.errors import UserError
from loracraft.gui.offline_page import without_remote_tags
from loracraft.gui.server import is_loopback, read_credentials, refuse_unprotected, start_server

LOGIN = ("ana", "s3cret")
_LOCAL = re.compile(r"^https?://(127\.0\.0\.1|localhost)[:/]")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def open_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("open")


@pytest.fixture(scope="module")
def open_server(open_folder):
    server = start_server(port=_free_port(), queue_path=open_folder / "queue.sqlite")
    yield server
    server.close()


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory):
    server = start_server(
        port=_free_port(), logins=[LOGIN], queue_path=tmp_path_factory.mktemp("guarded") / "queue.sqlite"
    )
    yield server
    server.close()


def _get(url: str, opener: urllib.request.OpenerDirector | None = None) -> tuple[int, str]:
    try:
        with (opener or urllib.request.build_opener()).open(url, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_listening_beyond_this_machine_without_a_login_is_refused(capsys):
    assert main(["gui", "--listen", "0.0.0.0"]) == 2
    assert capsys.readouterr().err == (
        "error: --listen 0.0.0.0 lets other machines reach the UI: add --auth user:pass or --auth_file FILE "
        "(or listen on 127.0.0.1)\n"
    )


def test_a_share_link_without_a_login_is_refused():
    with pytest.raises(UserError, match=r"^--share makes a public link to the UI: add --auth user:pass"):
        refuse_unprotected("127.0.0.1", True, None)
    refuse_unprotected("0.0.0.0", True, [LOGIN])  # with a login, both are allowed


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False),
     ("192.168.1.5", False), ("myhost", False)],
)  # fmt: skip
def test_only_loopback_addresses_count_as_this_machine(listen, loopback):
    assert is_loopback(listen) is loopback


def test_logins_come_from_auth_and_auth_file(tmp_path):
    logins = tmp_path / "logins.txt"
    logins.write_text("# the team\nbob:pw one\n\ncy:x:y\n", encoding="utf-8")
    assert read_credentials("ana:s3cret", str(logins)) == [
        ("ana", "s3cret"),
        ("bob", "pw one"),
        ("cy", "x:y"),
    ]
    assert read_credentials(None, None) is None
    logins.write_text("bob\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"^--auth_file .*logins.txt line 1 must be user:password"):
        read_credentials(None, str(logins))
    with pytest.raises(UserError, match=r"^--auth must be user:password, with neither part empty$"):
        read_credentials("ana:", None)


def test_on_loopback_without_a_login_the_page_and_the_api_answer(open_server):
    assert open_server.url.startswith("http://127.0.0.1:")
    status, page = _get(open_server.url)
    assert status == 200 and "loracraft" in page
    assert _get(open_server.url + "api/jobs") == (200, "[]")


def test_the_page_loads_nothing_from_the_internet_and_sends_no_telemetry(open_server):
    _, page = _get(open_server.url)
    fetched = re.findall(r"""(?:src|href)\s*=\s*["'](https?://[^"']+)""", page)
    assert [url for url in fetched if not _LOCAL.match(url)] == []
    _, theme = _get(open_server.url + "theme.css")
    assert "googleapis" not in theme and not re.search(r"url\(\s*['\"]?https?:", theme)
    assert re.search(r"@import\s+url\(\s*['\"]?https?:", theme) is None
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert open_server.app.analytics_enabled is False


def test_with_a_login_requests_without_credentials_are_refused(guarded_server):
    assert _get(guarded_server.url + "config")[0] == 401
    assert _get(guarded_server.url + "api/jobs")[0] == 401
    opener = urllib.request.build_opener()
    opener.addheaders = [("Authorization", "Basic " + base64.b64encode(":".join(LOGIN).encode()).decode())]
    assert _get(guarded_server.url + "api/jobs", opener) == (200, "[]")


def test_with_a_login_the_page_opens_after_logging_in(guarded_server):
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    form = urllib.parse.urlencode({"username": LOGIN[0], "password": "wrong"}).encode()
    with pytest.raises(urllib.error.HTTPError):
        opener.open(guarded_server.url + "login", data=form, timeout=30)
    form = urllib.parse.urlencode({"username": LOGIN[0], "password": LOGIN[1]}).encode()
    opener.open(guarded_server.url + "login", data=form, timeout=30)
    assert _get(guarded_server.url + "config", opener)[0] == 200


def test_remote_link_and_script_tags_are_removed_from_pages():
    page = (
        b'<head><link rel="preconnect" href="https://fonts.googleapis.com" />'
        b'<script src="https://cdn.example/x.js" async></script>'
        b'<link rel="stylesheet" href="http://127.0.0.1:7860/theme.css"><script src="/assets/app.js"></script></head>'
    )
    assert without_remote_tags(page) == (
        b'<head><link rel="stylesheet" href="http://127.0.0.1:7860/theme.css"><script src="/assets/app.js"></script></head>'
    )


def test_a_jobs_sample_images_are_served_to_the_page(open_server, open_folder):
    """The job page's gallery shows the images a run copied into its job folder; Gradio serves a file
    outside its own folders only when the server allows that folder."""
    image = open_folder / "jobs" / "1" / "progress-images" / "toy_000001_00.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert _file_status(open_server.url, image) == 200
    outside = open_folder / "elsewhere.png"
    outside.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert _file_status(open_server.url, outside) in (403, 404)


def _file_status(url: str, path) -> int:
    try:
        with urllib.request.urlopen(
            f"{url}gradio_api/file={urllib.parse.quote(str(path))}", timeout=30
        ) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


def test_more_workers_than_gpus_is_refused_before_anything_is_served(capsys, monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    queue = tmp_path / "queue.sqlite"
    port = _free_port()
    assert main(["gui", "--workers", "2", "--port", str(port), "--queue", str(queue)]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --workers 2 runs each job on a GPU of its own, and 1 is visible: use --workers 1 or fewer"
    )
    with socket.socket() as probe:  # nothing listens on the port
        assert probe.connect_ex(("127.0.0.1", port)) != 0

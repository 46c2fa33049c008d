"""`loracraft caption DIR --endpoint URL --model NAME` against a fake OpenAI-compatible server.

The fake (tests/fake_openai_server.py) decodes each request's data URL and answers the image's size and
mean colour, so each caption file is checked against its own image: ordering under concurrency, the
request's shape (OpenAI's chat completions body), the key header, the URL rule, retries and Retry-After,
the concurrency limit, and every failure: a server that cannot be reached (one line, nothing written),
one going away mid-run, a refused key, an unknown model, a wrong URL, one image refused, answers with
no caption, a timeout, an unreadable image, bad flag values.
"""

import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fake_openai_server import Reply, error_reply, fake_openai_server, model_not_found
from loracraft.caption import endpoint
from loracraft.caption.endpoint import DEFAULT_PROMPT, chat_completions_url, clean_caption
from loracraft.cli import main as cli_main
from loracraft.errors import UserError
from loracraft.tools.caption import main as caption_main

MODEL = "fake-vlm"
ANSWER = re.compile(r"^(\d+)x(\d+) rgb\((\d+), (\d+), (\d+)\)$")
COLOURS = [
    (200, 30, 30),
    (30, 200, 30),
    (30, 30, 200),
    (220, 220, 40),
    (40, 200, 200),
    (120, 60, 160),
    (90, 90, 90),
]


@pytest.fixture
def fake_openai(monkeypatch):
    """A fresh fake server per test; requests to it bypass any proxy the machine sets."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with fake_openai_server() as fake:
        yield fake


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    """Retries wait milliseconds, and no key leaks in from the machine running the tests."""
    monkeypatch.setattr(endpoint, "BACKOFF_S", 0.001)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def make_images(folder: Path, count: int) -> dict[str, tuple[tuple[int, int], tuple[int, int, int]]]:
    """`count` solid-colour PNGs, each of its own width (the fake's per-image handle): name -> (size, colour)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = {}
    for index in range(count):
        size, colour = (10 + index, 8 + 2 * index), COLOURS[index % len(COLOURS)]
        name = f"img{index}.png"
        Image.new("RGB", size, colour).save(folder / name)
        images[name] = (size, colour)
    return images


def caption(folder: Path, url: str, *flags: str) -> int:
    return caption_main([str(folder), "--endpoint", url, "--model", MODEL, *flags])


def assert_describes(text: str, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    """`text` is the fake's answer for an image of `size` and `colour` (JPEG moves colours a little)."""
    match = ANSWER.match(text)
    assert match, text
    width, height, *mean = map(int, match.groups())
    assert (width, height) == size
    assert np.abs(np.subtract(mean, colour)).max() <= 3, (mean, colour)


def assert_wrapped(text: str, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    """`text` is "sks, <the unquoted answer> style" and a newline."""
    assert text.startswith("sks, ") and text.endswith(" style\n"), text
    assert_describes(text[len("sks, ") : -len(" style\n")], size, colour)


def caption_texts(folder: Path) -> dict[str, str]:
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.txt"))}


def test_each_file_gets_its_own_images_caption_with_concurrency_requests_in_flight(fake_openai, tmp_path):
    images = make_images(tmp_path / "data", 7)
    # Within each batch of 3 the first image's answer comes last: files must still get their own answer.
    fake_openai.delay_s = {10 + index: 0.2 + 0.15 * (2 - index % 3) for index in range(7)}
    assert caption(tmp_path / "data", fake_openai.url, "--concurrency", "3") == 0
    assert len(fake_openai.requests) == 7
    assert fake_openai.max_in_flight == 3
    for name, (size, colour) in images.items():
        text = (tmp_path / "data" / name).with_suffix(".txt").read_text(encoding="utf-8")
        assert text.endswith("\n") and text.count("\n") == 1
        assert_describes(text.strip(), size, colour)


def test_the_request_is_openai_chat_with_the_image_as_a_data_url_and_the_key_from_the_variable(
    fake_openai, tmp_path, monkeypatch
):
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (2048, 512), (200, 30, 30)).save(data / "wide.png")
    checker = np.zeros((8, 8, 3), np.uint8)
    checker[(np.indices((8, 8)).sum(0) % 2) == 0] = (255, 0, 0)
    checker[(np.indices((8, 8)).sum(0) % 2) == 1] = (0, 0, 255)
    Image.fromarray(checker).save(data / "pixels.png")
    monkeypatch.setenv("MY_VLM_KEY", "sk-secret")
    argv = [
        "--prompt",
        "Describe it.",
        "--max_tokens",
        "77",
        "--api_key_env",
        "MY_VLM_KEY",
        "--concurrency",
        "1",
    ]
    assert caption(data, fake_openai.url, *argv) == 0

    pixels, wide = fake_openai.requests  # name order
    for recorded in (pixels, wide):
        assert recorded.path == "/v1/chat/completions"
        assert recorded.headers["authorization"] == "Bearer sk-secret"
        assert recorded.headers["content-type"] == "application/json"
        (message,) = recorded.body["messages"]
        assert recorded.body["model"] == MODEL and recorded.body["max_tokens"] == 77
        assert message["role"] == "user"
        text, image = message["content"]
        assert text == {"type": "text", "text": "Describe it."}
        assert image["type"] == "image_url" and image["image_url"]["url"].startswith(
            "data:image/jpeg;base64,"
        )
    # The long side is brought down to 1024 px; a small image keeps its size and its pixels' colours.
    assert wide.image.size == (1024, 256)
    assert pixels.image.size == (8, 8)
    assert np.abs(np.asarray(pixels.image.convert("RGB"), np.int16) - checker).max() < 48
    assert_describes((data / "wide.txt").read_text(encoding="utf-8").strip(), (1024, 256), (200, 30, 30))


def test_default_prompt_no_key_header_when_the_variable_is_unset_and_a_bare_host_gets_v1(
    fake_openai, tmp_path
):
    make_images(tmp_path / "data", 1)
    assert caption(tmp_path / "data", fake_openai.root) == 0
    (recorded,) = fake_openai.requests
    assert recorded.path == "/v1/chat/completions"
    assert "authorization" not in recorded.headers
    assert recorded.body["messages"][0]["content"][0]["text"] == DEFAULT_PROMPT
    assert recorded.body["max_tokens"] == 300


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1/chat/completions"),
        ("http://127.0.0.1:8080/v1/", "http://127.0.0.1:8080/v1/chat/completions"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/v1/chat/completions"),
        ("http://localhost:11434/", "http://localhost:11434/v1/chat/completions"),
        ("https://openrouter.ai/api/v1", "https://openrouter.ai/api/v1/chat/completions"),
        ("http://host:1/v1/chat/completions", "http://host:1/v1/chat/completions"),
        (
            "https://h/openai/x/chat/completions?api-version=1",
            "https://h/openai/x/chat/completions?api-version=1",
        ),
    ],
)
def test_endpoint_url_rule(given, url):
    assert chat_completions_url(given) == url


@pytest.mark.parametrize(
    ("answer", "caption_text"),
    [
        ('  "a red ball on grass"\n', "a red ball on grass"),
        ("'a red ball'", "a red ball"),
        ("\u201ca red ball\u201d", "a red ball"),
        ("a red ball\n\n", "a red ball"),
        ('a "red" ball', 'a "red" ball'),
        ('"red" and "blue" balls', '"red" and "blue" balls'),
        ('"a red ball', '"a red ball'),
    ],
)
def test_whitespace_and_surrounding_quotes_are_stripped_the_rest_kept(answer, caption_text):
    assert clean_caption(answer) == caption_text


def test_two_503s_are_retried_then_the_caption_is_written(fake_openai, tmp_path):
    images = make_images(tmp_path / "data", 1)
    fake_openai.queued.extend([error_reply(503, "loading model"), error_reply(503, "loading model")])
    assert caption(tmp_path / "data", fake_openai.url) == 0
    assert len(fake_openai.requests) == 3
    ((name, (size, colour)),) = images.items()
    assert_describes(
        (tmp_path / "data" / name).with_suffix(".txt").read_text(encoding="utf-8").strip(), size, colour
    )


def test_retry_after_is_honoured(fake_openai, tmp_path):
    make_images(tmp_path / "data", 1)
    fake_openai.queued.append(error_reply(429, "rate limited", **{"Retry-After": "1"}))
    start = time.monotonic()
    assert caption(tmp_path / "data", fake_openai.url) == 0
    assert time.monotonic() - start >= 1.0  # the backoff alone would have waited 1 ms
    assert len(fake_openai.requests) == 2


def test_an_image_still_failing_after_the_retries_is_named(fake_openai, tmp_path, capsys):
    make_images(tmp_path / "data", 1)
    fake_openai.always = error_reply(503, "model overloaded")
    assert caption(tmp_path / "data", fake_openai.url, "--retries", "2") == 1
    assert len(fake_openai.requests) == 3
    out = capsys.readouterr()
    assert "  img0.png: the endpoint answered 503 (model overloaded) after 3 tries" in out.out.splitlines()
    assert (
        out.err.splitlines()[-1]
        == "error: 1 of 1 images could not be captioned (img0.png); the others were written"
    )
    assert not list((tmp_path / "data").glob("*.txt"))


def test_an_unreachable_endpoint_stops_in_one_line_and_nothing_is_written_or_lost(
    fake_openai, tmp_path, capsys
):
    make_images(tmp_path / "data", 3)
    (tmp_path / "data" / "img1.txt").write_text("my own caption\n", encoding="utf-8")
    fake_openai.stop()
    argv = [
        "caption",
        str(tmp_path / "data"),
        "--endpoint",
        fake_openai.url,
        "--model",
        MODEL,
        "--retries",
        "1",
    ]
    assert cli_main([*argv, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        f"error: --endpoint {fake_openai.url} cannot be reached (Connection refused after 2 tries); "
        "start the server or check the URL"
    )
    assert "Traceback" not in err
    assert sorted(path.name for path in (tmp_path / "data").iterdir()) == [
        "img0.png",
        "img1.png",
        "img1.txt",
        "img2.png",
    ]
    assert (tmp_path / "data" / "img1.txt").read_text(encoding="utf-8") == "my own caption\n"


def test_a_server_gone_after_the_first_caption_fails_only_the_later_images(fake_openai, tmp_path, capsys):
    make_images(tmp_path / "data", 3)
    fake_openai.stop_after = 1
    assert caption(tmp_path / "data", fake_openai.url, "--concurrency", "1", "--retries", "0") == 1
    assert list(caption_texts(tmp_path / "data")) == ["img0.txt"]
    lines = capsys.readouterr().out.splitlines()
    for name in ("img1.png", "img2.png"):
        assert f"  {name}: the endpoint could not be reached (Connection refused)" in lines


@pytest.mark.parametrize(
    ("variable", "key", "message"),
    [
        (
            None,
            None,
            "wants an API key (401: Invalid API Key); set the environment variable OPENAI_API_KEY to it",
        ),
        (
            "MY_VLM_KEY",
            "sk-wrong",
            "refused the key in MY_VLM_KEY (401: Invalid API Key); set MY_VLM_KEY to a valid",
        ),
    ],
)
def test_a_refused_key_stops_in_one_line_naming_the_variable(
    fake_openai, tmp_path, monkeypatch, variable, key, message
):
    make_images(tmp_path / "data", 2)
    if key:
        monkeypatch.setenv(variable, key)
    fake_openai.always = error_reply(401, "Invalid API Key")
    flags = ["--api_key_env", variable] if variable else []
    with pytest.raises(UserError, match=re.escape(f"--endpoint {fake_openai.url} {message}")) as raised:
        caption(tmp_path / "data", fake_openai.url, *flags)
    assert "\n" not in str(raised.value)
    assert not caption_texts(tmp_path / "data")


def test_an_unknown_model_stops_in_one_line_naming_model(fake_openai, tmp_path):
    make_images(tmp_path / "data", 2)
    fake_openai.always = model_not_found(MODEL)
    expected = (
        f"--model {MODEL}: the endpoint does not serve it (The model `{MODEL}` does not exist.); "
        f"pass a model name the server lists at {fake_openai.url}/models"
    )
    with pytest.raises(UserError) as raised:
        caption(tmp_path / "data", fake_openai.url)
    assert str(raised.value) == expected
    assert not caption_texts(tmp_path / "data")


def test_a_url_with_no_chat_completions_behind_it_names_endpoint(fake_openai, tmp_path):
    make_images(tmp_path / "data", 1)
    wrong = fake_openai.root + "/api"
    with pytest.raises(UserError) as raised:
        caption(tmp_path / "data", wrong)
    assert str(raised.value) == (
        f"--endpoint {wrong}: {wrong}/chat/completions was not found (404); "
        "pass the server's OpenAI base URL, e.g. http://127.0.0.1:8080/v1"
    )
    assert [recorded.path for recorded in fake_openai.requests] == ["/api/chat/completions"]


def test_an_image_the_server_refuses_is_named_and_the_others_written(fake_openai, tmp_path, capsys):
    images = make_images(tmp_path / "data", 3)
    fake_openai.by_width[11] = error_reply(400, "image too large")  # img1.png
    assert caption(tmp_path / "data", fake_openai.url) == 1
    out = capsys.readouterr()
    assert "  img1.png: the endpoint refused it (400: image too large)" in out.out.splitlines()
    assert (
        out.err.splitlines()[-1]
        == "error: 1 of 3 images could not be captioned (img1.png); the others were written"
    )
    assert len(fake_openai.requests) == 3  # a 400 is not tried again
    texts = caption_texts(tmp_path / "data")
    assert list(texts) == ["img0.txt", "img2.txt"]
    for name in ("img0", "img2"):
        assert_describes(texts[f"{name}.txt"].strip(), *images[f"{name}.png"])


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>Bad Gateway</html>", "the endpoint's answer had no caption (it was not JSON)"),
        ({"choices": []}, "the endpoint's answer had no caption"),
        (
            {"choices": [{"message": {"role": "assistant", "content": None}}]},
            "the endpoint's answer had no caption",
        ),
        (
            {"error": {"message": "context length exceeded"}},
            "the endpoint's answer had no caption (context length exceeded)",
        ),
    ],
)
def test_an_answer_without_a_caption_fails_that_image(fake_openai, tmp_path, capsys, body, reason):
    make_images(tmp_path / "data", 1)
    fake_openai.always = Reply(200, body)
    assert caption(tmp_path / "data", fake_openai.url) == 1
    assert f"  img0.png: {reason}" in capsys.readouterr().out.splitlines()
    assert not caption_texts(tmp_path / "data")


def test_no_answer_within_the_timeout_fails_that_image(fake_openai, tmp_path, capsys):
    make_images(tmp_path / "data", 1)
    fake_openai.delay_s = 0.6
    assert caption(tmp_path / "data", fake_openai.url, "--timeout", "0.2", "--retries", "0") == 1
    assert "  img0.png: no answer within --timeout 0.2 s" in capsys.readouterr().out.splitlines()


def test_quoted_answers_prefix_suffix_and_overwrite(fake_openai, tmp_path):
    images = make_images(tmp_path / "data", 2)
    (tmp_path / "data" / "img0.txt").write_text("my own caption\n", encoding="utf-8")
    fake_openai.answer_format = '\n  "{}"  \n'
    flags = ["--prefix", "sks,", "--suffix", "style"]
    assert caption(tmp_path / "data", fake_openai.url, *flags) == 0
    assert len(fake_openai.requests) == 1  # the kept caption's image is not sent
    texts = caption_texts(tmp_path / "data")
    assert texts["img0.txt"] == "my own caption\n"
    assert_wrapped(texts["img1.txt"], *images["img1.png"])

    assert caption(tmp_path / "data", fake_openai.url, *flags, "--overwrite") == 0
    assert_wrapped(caption_texts(tmp_path / "data")["img0.txt"], *images["img0.png"])


def test_an_unreadable_image_is_named_and_the_others_captioned(fake_openai, tmp_path, capsys):
    make_images(tmp_path / "data", 2)
    (tmp_path / "data" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png at all")
    assert caption(tmp_path / "data", fake_openai.url) == 1
    assert list(caption_texts(tmp_path / "data")) == ["img0.txt", "img1.txt"]
    assert len(fake_openai.requests) == 2
    assert any(line.startswith("  broken.png: ") for line in capsys.readouterr().out.splitlines())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--endpoint", "127.0.0.1:8080/v1"],
            "--endpoint 127.0.0.1:8080/v1: pass the server's http:// or https://",
        ),
        (["--endpoint", "ftp://host/v1"], "--endpoint ftp://host/v1: pass the server's http:// or https://"),
        (["--timeout", "0"], "--timeout 0: use a number of seconds above 0"),
        (["--max_tokens", "0"], "--max_tokens 0: use 1 or more"),
    ],
)
def test_bad_endpoint_flags_are_one_line_before_any_request(fake_openai, tmp_path, flags, message):
    make_images(tmp_path / "data", 1)
    with pytest.raises(UserError, match=re.escape(message)):
        caption(tmp_path / "data", fake_openai.url, *flags)
    assert not fake_openai.requests
    assert not caption_texts(tmp_path / "data")

"""A fake OpenAI-compatible chat completions server, as llama.cpp's server, vLLM and Ollama answer.

It listens on 127.0.0.1 (a free port) in a thread and answers POST /v1/chat/completions. It checks the
request as those servers do (a user message with a text part and an `image_url` part holding a base64
data URL that decodes to an image; a 400 otherwise) and answers, by default, what it saw:
`"{width}x{height} rgb({r}, {g}, {b})"`, the decoded image's size and mean colour, so a test knows
which image's answer reached which caption file. Every request is recorded (path, headers, JSON body,
the decoded image). A test steers it through its attributes:

  queued          replies given to the next requests, in arrival order (e.g. two 503s, then normal)
  always          one reply for every request (401, 404 model not found)
  by_width        the reply for an image of this width, whatever the order (a 400 for one image)
  delay_s         seconds each request waits before its answer (by image width, or for all)
  answer_format   how the answer's text wraps the description ('  "{}"\n' to test quote stripping)
  stop_after      stop listening once this many answers were sent (the server going away mid-run)

It counts the requests in flight so a test can check the concurrency limit. `fake_openai_server()` runs
one for a `with` block (a test's fixture).
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image, ImageStat

CHAT_PATH = "/v1/chat/completions"
DATA_URL_PREFIXES = ("data:image/jpeg;base64,", "data:image/png;base64,")


# How often the serving thread looks for a stop: stopping (each test's end) waits up to this long.
_POLL_S = 0.02


class _QuietServer(ThreadingHTTPServer):
    # A client that gave up (a --timeout test) leaves a handler writing to a closed socket after its test;
    # its traceback must not land in a later test's captured stderr.
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """Quiet: a client gone is what some tests do on purpose."""


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: dict | bytes | None = None  # None: the normal answer describing the image
    headers: dict[str, str] = field(default_factory=dict)


def error_reply(status: int, message: str, **headers: str) -> Reply:
    """An error in OpenAI's shape, which llama.cpp's server and Ollama use too."""
    return Reply(
        status, {"error": {"message": message, "type": "invalid_request_error", "code": status}}, headers
    )


def model_not_found(model: str) -> Reply:
    """vLLM's answer to an unknown model."""
    body = {
        "object": "error",
        "message": f"The model `{model}` does not exist.",
        "type": "NotFoundError",
        "code": 404,
    }
    return Reply(404, body)


@dataclass(frozen=True)
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict
    image: Image.Image | None


def describe(image: Image.Image) -> str:
    """The fake's answer for an image: its size and mean colour."""
    r, g, b = (round(value) for value in ImageStat.Stat(image.convert("RGB")).mean)
    return f"{image.width}x{image.height} rgb({r}, {g}, {b})"


def image_of(body: dict) -> Image.Image:
    """The image of a chat completions request; ValueError when it is not sent as servers take it."""
    (message,) = body["messages"]
    if message["role"] != "user":
        raise ValueError("the message is not the user's")
    parts = {part["type"]: part for part in message["content"]}
    if set(parts) != {"text", "image_url"}:
        raise ValueError(f"content parts {sorted(parts)}")
    url = parts["image_url"]["image_url"]["url"]
    prefix = next((prefix for prefix in DATA_URL_PREFIXES if url.startswith(prefix)), None)
    if prefix is None:
        raise ValueError("image_url is not a base64 image data URL")
    image = Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :], validate=True)))
    image.load()
    return image


class FakeOpenAI:
    def __init__(self) -> None:
        self.queued: deque[Reply] = deque()
        self.always: Reply | None = None
        self.by_width: dict[int, Reply] = {}
        self.delay_s: dict[int, float] | float = 0.0
        self.answer_format = "{}"
        self.stop_after: int | None = None
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._answers = 0
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(_POLL_S,), daemon=True)
        self._thread.start()
        self._stopped = False
        host, port = self._server.server_address[:2]
        self.root = f"http://{host}:{port}"
        self.url = self.root + "/v1"

    def stop(self) -> None:
        """Stop listening: later connections are refused."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                fake._serve(self)

            def log_message(self, *args: object) -> None:
                """Quiet: the tests read the records, not a log."""

        return Handler

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            reply = self._reply(handler)
        finally:
            with self._lock:
                self.in_flight -= 1
        with self._lock:
            self._answers += 1
            stop = self.stop_after is not None and self._answers >= self.stop_after
        if stop:
            # Closed before this answer is sent, so the client's next connection is surely refused.
            self.stop()
        self._send(handler, reply)

    def _reply(self, handler: BaseHTTPRequestHandler) -> Reply:
        body = json.loads(handler.rfile.read(int(handler.headers.get("Content-Length", 0))))
        if handler.path != CHAT_PATH:
            self._record(handler, body, None)
            return Reply(404, b"Not Found")
        try:
            image = image_of(body)
        except (ValueError, KeyError, TypeError, OSError) as error:
            self._record(handler, body, None)
            return error_reply(400, f"invalid image: {error}")
        self._record(handler, body, image)
        delay = self.delay_s.get(image.width, 0.0) if isinstance(self.delay_s, dict) else self.delay_s
        threading.Event().wait(delay)
        with self._lock:
            planned = self.queued.popleft() if self.queued else self.always
        reply = planned or self.by_width.get(image.width) or Reply()
        if reply.body is None:
            content = self.answer_format.format(describe(image))
            answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
            return Reply(reply.status, answer, reply.headers)
        return reply

    def _record(self, handler: BaseHTTPRequestHandler, body: dict, image: Image.Image | None) -> None:
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._lock:
            self.requests.append(Recorded(handler.path, headers, body, image))

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, reply: Reply) -> None:
        data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        handler.send_response(reply.status)
        content_type = "text/plain" if isinstance(reply.body, bytes) else "application/json"
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)


@contextmanager
def fake_openai_server() -> Iterator[FakeOpenAI]:
    """A fake server listening for the `with` block (it starts in milliseconds: one per test)."""
    fake = FakeOpenAI()
    try:
        yield fake
    finally:
        fake.stop()

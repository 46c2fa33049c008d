"""Captions from any vision-language model behind an OpenAI-compatible chat endpoint.

llama.cpp's server, vLLM, Ollama, LM Studio and hosted APIs all answer OpenAI's chat completions
request: a user message whose content is a text part (the instruction) and an `image_url` part holding
the image as a data URL; the caption is the answer's `choices[0].message.content`.

`--endpoint` is the OpenAI base URL, as those servers print it and OpenAI's clients take it
(`http://127.0.0.1:8080/v1`); the request goes to its `/chat/completions`. A URL with no path
(`http://127.0.0.1:8080`) gets `/v1`, where every one of those servers serves the API, and a URL that
already ends in `/chat/completions` is used as it is.

The key is read from the environment variable `--api_key_env` names (never from a flag, which would
land in the shell history and the job queue) and sent as `Authorization: Bearer`; local servers need
none. The images of a batch (`--concurrency` of them) go out in parallel. Connection errors, timeouts,
429 and 5xx answers are tried again `--retries` times with exponential backoff, or after the
`Retry-After` the server asks for. A server that cannot be reached before any image was captioned, a
refused key and an unknown model stop the run in one line; any other failure is that image's, named in
the run's summary while the others go on.
"""

from __future__ import annotations

import argparse
import base64
import email.utils
import http.client
import io
import json
import os
import time
import urllib.parse
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from urllib.error import HTTPError, URLError

from PIL import Image

from loracraft.errors import UserError

DEFAULT_PROMPT = (
    "Write a caption of this image for training an image-generation model: one paragraph of plain prose "
    "that names the subject, its appearance, pose and clothing, the setting, the lighting, the composition "
    "and the medium or art style. Answer with the caption only: no preamble, no list, no quotes."
)
EXAMPLE_ENDPOINT = "http://127.0.0.1:8080/v1"
_CHAT_PATH = "/chat/completions"

# The long side an image is sent at. The vision encoders these servers run see 336 to about 1000 px
# (LLaVA/CLIP 336, Gemma 896, Qwen-VL's dynamic tiles ~1300 tokens at 1024 px), so a larger image only
# costs upload time and, with dynamic-resolution models, thousands of tokens of the context window.
MAX_SIDE = 1024
# JPEG is the one format every server decodes; quality 95 without chroma subsampling keeps small and
# pixel-art images' colour edges, which 4:2:0 would smear into what the model then describes.
_JPEG_QUALITY = 95

# The first retry waits BACKOFF_S, each later one twice as long; no wait (nor a server's Retry-After)
# is longer than MAX_WAIT_S, so a server asking for an hour fails the image instead of stalling the run.
BACKOFF_S = 0.5
MAX_WAIT_S = 60.0
_RETRIED_STATUS = {408, 429}
_MESSAGE_CHARS = 200
_QUOTE_PAIRS = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "\u00ab": "\u00bb", "`": "`"}


class EndpointError(Exception):
    """One image's failure at the endpoint, in the words the run's summary shows."""


class _Retryable(Exception):
    """A failure worth trying again: a broken connection, a timeout, 429 or 5xx."""

    def __init__(self, reason: str, *, retry_after_s: float | None = None, unreachable: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.unreachable = unreachable


class _Unreachable(Exception):
    """No connection to the server after the retries (the caption batch decides: stop, or this image)."""


@dataclass(frozen=True)
class EndpointSettings:
    endpoint: str  # as the user gave it, for messages
    url: str  # the chat completions URL the requests go to
    model: str
    prompt: str
    max_tokens: int
    timeout_s: float
    retries: int
    api_key_variable: str


def open_endpoint_captioner(args: argparse.Namespace) -> EndpointCaptioner:
    """The captioner `--endpoint`, `--model` and the endpoint flags of `loracraft caption` describe."""
    if args.timeout <= 0:
        raise UserError(f"--timeout {args.timeout:g}: use a number of seconds above 0")
    if args.max_tokens < 1:
        raise UserError(f"--max_tokens {args.max_tokens}: use 1 or more")
    settings = EndpointSettings(
        endpoint=args.endpoint,
        url=chat_completions_url(args.endpoint),
        model=args.model,
        prompt=args.prompt or DEFAULT_PROMPT,
        max_tokens=args.max_tokens,
        timeout_s=args.timeout,
        retries=args.retries,
        api_key_variable=args.api_key_env,
    )
    return EndpointCaptioner(settings, args.concurrency, os.environ.get(args.api_key_env) or None)


def chat_completions_url(endpoint: str) -> str:
    """The URL the requests go to, from `--endpoint` (the rule is in the module's docstring)."""
    parts = urllib.parse.urlsplit(endpoint.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(
            f"--endpoint {endpoint}: pass the server's http:// or https:// URL, e.g. {EXAMPLE_ENDPOINT}"
        )
    path = parts.path.rstrip("/")
    if not path.endswith(_CHAT_PATH):
        path = (path or "/v1") + _CHAT_PATH
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class EndpointCaptioner:
    """Captions images by asking the endpoint, `batch_size` requests in flight at once."""

    def __init__(self, settings: EndpointSettings, concurrency: int, api_key: str | None) -> None:
        self.settings = settings
        self.batch_size = concurrency
        self._headers = {"Content-Type": "application/json", "User-Agent": "loracraft"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._answered = False

    def caption(self, images: list[Image.Image]) -> list[str | Exception]:
        with ThreadPoolExecutor(max_workers=self.batch_size) as pool:
            outcomes = [_outcome(future) for future in [pool.submit(self.ask, image) for image in images]]
        for outcome in outcomes:
            if isinstance(outcome, UserError):
                raise outcome
        self._answered = self._answered or any(isinstance(outcome, str) for outcome in outcomes)
        return [self._image_outcome(outcome) for outcome in outcomes]

    def _image_outcome(self, outcome: str | Exception) -> str | Exception:
        if not isinstance(outcome, _Unreachable):
            return outcome
        if not self._answered:
            raise UserError(
                f"--endpoint {self.settings.endpoint} cannot be reached ({outcome}); "
                "start the server or check the URL"
            )
        return EndpointError(f"the endpoint could not be reached ({outcome})")

    def ask(self, image: Image.Image) -> str:
        """The caption of one image, trying again after failures that may pass."""
        body = json.dumps(request_body(self.settings, image_data_url(image))).encode("utf-8")
        retries = self.settings.retries
        for attempt in range(retries + 1):
            try:
                return caption_in_answer(self._post(body))
            except _Retryable as error:
                failure = error
                if attempt < retries:
                    time.sleep(_wait_s(attempt, error.retry_after_s))
        tries = f" after {retries + 1} tries" if retries else ""
        if failure.unreachable:
            raise _Unreachable(failure.reason + tries)
        raise EndpointError(failure.reason + tries)

    def _post(self, body: bytes) -> bytes:
        request = urllib.request.Request(self.settings.url, data=body, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as response:
                return response.read()
        except HTTPError as error:
            raise self._http_failure(error) from None
        except URLError as error:
            # urllib wraps what happens before the request is sent: refused, unknown host, connect timeout.
            raise _Retryable(_connection_reason(error), unreachable=True) from None
        except TimeoutError:
            raise _Retryable(f"no answer within --timeout {self.settings.timeout_s:g} s") from None
        except (http.client.HTTPException, ConnectionError) as error:
            raise _Retryable(f"the connection broke ({error or type(error).__name__})") from None

    def _http_failure(self, error: HTTPError) -> Exception:
        try:
            raw = error.read()
        except OSError:
            raw = b""
        message = server_message(raw) or str(error.reason)
        code = error.code
        if code in (401, 403):
            return UserError(self._key_refused(code, message))
        if code == 404:
            return UserError(self._not_found(message))
        if code in _RETRIED_STATUS or code >= 500:
            retry_after = _retry_after_s(error.headers.get("Retry-After"))
            return _Retryable(f"the endpoint answered {code} ({message})", retry_after_s=retry_after)
        return EndpointError(f"the endpoint refused it ({code}: {message})")

    def _key_refused(self, code: int, message: str) -> str:
        variable = self.settings.api_key_variable
        if "Authorization" not in self._headers:
            return (
                f"--endpoint {self.settings.endpoint} wants an API key ({code}: {message}); "
                f"set the environment variable {variable} to it (it is not set)"
            )
        return (
            f"--endpoint {self.settings.endpoint} refused the key in {variable} ({code}: {message}); "
            f"set {variable} to a valid API key"
        )

    def _not_found(self, message: str) -> str:
        # vLLM, Ollama and OpenAI answer an unknown model with 404 and a message naming it; a 404
        # without one is a URL with no chat completions API behind it.
        if "model" in message.lower():
            models = self.settings.url.removesuffix(_CHAT_PATH) + "/models"
            return (
                f"--model {self.settings.model}: the endpoint does not serve it ({message}); "
                f"pass a model name the server lists at {models}"
            )
        return (
            f"--endpoint {self.settings.endpoint}: {self.settings.url} was not found (404); "
            f"pass the server's OpenAI base URL, e.g. {EXAMPLE_ENDPOINT}"
        )


def request_body(settings: EndpointSettings, image_url: str) -> dict:
    """OpenAI's chat completions request: one user message, the instruction and the image."""
    content = [
        {"type": "text", "text": settings.prompt},
        {"type": "image_url", "image_url": {"url": image_url}},
    ]
    return {
        "model": settings.model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": settings.max_tokens,
    }


def image_data_url(image: Image.Image) -> str:
    """The image as a JPEG data URL, its long side at most MAX_SIDE."""
    width, height = image.size
    if max(width, height) > MAX_SIDE:
        scale = MAX_SIDE / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=_JPEG_QUALITY, subsampling=0)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def caption_in_answer(raw: bytes) -> str:
    """The caption in a chat completions answer; an answer without one is the image's failure."""
    try:
        answer = json.loads(raw)
    except ValueError:
        raise EndpointError("the endpoint's answer had no caption (it was not JSON)") from None
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        content = None
    if not isinstance(content, str):
        detail = _message_in(answer)
        raise EndpointError("the endpoint's answer had no caption" + (f" ({detail})" if detail else ""))
    return clean_caption(content)


def clean_caption(text: str) -> str:
    """The answer without the whitespace and the quotes around it that chat models often add."""
    text = text.strip()
    if len(text) >= 2 and _QUOTE_PAIRS.get(text[0]) == text[-1]:
        inner = text[1:-1]
        # Quotes inside mean the outer ones may belong to quoted phrases ("a" and "b"): keep them.
        if text[0] not in inner and text[-1] not in inner:
            text = inner.strip()
    return text


def server_message(raw: bytes) -> str:
    """The first line of what a server said in an error answer (OpenAI's, vLLM's or a plain text)."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        message = _message_in(json.loads(text)) or text
    except ValueError:
        message = text
    return message.splitlines()[0][:_MESSAGE_CHARS] if message else ""


def _message_in(data: object) -> str | None:
    """The message of an error answer: OpenAI's {"error": {"message"}}, vLLM's {"message"}, FastAPI's
    {"detail"}, or a plain {"error": "..."}."""
    if not isinstance(data, dict):
        return None
    for key in ("error", "message", "detail"):
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, dict) and (nested := _message_in(value)):
            return nested
    return None


def _outcome(future: Future) -> str | Exception:
    try:
        return future.result()
    except Exception as error:  # noqa: BLE001 - one image's failure is that image's result
        return error


def _connection_reason(error: URLError) -> str:
    reason = error.reason
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason)


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After's wait in seconds: a number of seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _wait_s(attempt: int, retry_after_s: float | None) -> float:
    wait = retry_after_s if retry_after_s is not None else BACKOFF_S * 2**attempt
    return min(MAX_WAIT_S, wait)

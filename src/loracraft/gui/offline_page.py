"""Keep the page's HTML from reaching out: Gradio 5's page template preconnects to Google's font servers
and loads an iframe-resizer script from a CDN (for pages embedded in other sites, which this one is not).
Offline these only stall; online they tell third parties the UI was opened. This ASGI middleware removes
every <link> and <script> tag that points off this machine from the HTML pages the server sends."""

from __future__ import annotations

import re
from typing import Any

_REMOTE_TAG = re.compile(
    rb"""<(link|script)\b[^>]*\b(?:href|src)\s*=\s*["']https?://(?!127\.0\.0\.1|localhost)[^>]*>(\s*</script>)?""",
    re.IGNORECASE,
)


def without_remote_tags(html: bytes) -> bytes:
    return _REMOTE_TAG.sub(b"", html)


class OfflinePage:
    """Rewrites text/html responses with `without_remote_tags`; other responses pass untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "GET":
            await self.app(scope, receive, send)
            return
        start: dict | None = None
        body = bytearray()

        async def send_rewritten(message: dict) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                if not headers.get(b"content-type", b"").startswith(b"text/html"):
                    await send(message)
                    return
                start = message
                return
            if start is None:
                await send(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body"):
                return
            page = without_remote_tags(bytes(body))
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(page)).encode())]})
            await send({"type": "http.response.body", "body": page})

        await self.app(scope, receive, send_rewritten)

"""A WSGI middleware that enforces the body size limit on chunked requests too.

Werkzeug checks MAX_CONTENT_LENGTH against Content-Length; a chunked body has none and would be
cut silently at the limit. This reads such a body up to the limit and answers 413 beyond it.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

import orjson

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class BodyLimit:
    def __init__(self, app: WsgiApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked and not environ.get("CONTENT_LENGTH"):
            body = environ["wsgi.input"].read(self.limit + 1)
            if len(body) > self.limit:
                return _too_large(start_response, self.limit)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            environ.pop("HTTP_TRANSFER_ENCODING", None)
            environ["wsgi.input_terminated"] = False
        return self.app(environ, start_response)


def _too_large(start_response: Callable[..., Any], limit: int) -> list[bytes]:
    body = orjson.dumps({"type": "about:blank", "title": "Content Too Large", "status": 413,
                         "detail": f"the request body exceeds {limit} bytes"})
    start_response("413 Content Too Large", [("Content-Type", "application/problem+json"),
                                             ("Content-Length", str(len(body)))])
    return [body]

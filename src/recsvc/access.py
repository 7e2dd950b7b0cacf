"""One record per HTTP request: its request id, its access log line and its HTTP metrics.

`AccessMiddleware` is the outermost layer of the app, so everything below it, errors included,
runs with the request id set:

- `X-Request-ID` is taken from the request when it is 1-128 printable ASCII characters, and
  generated otherwise; it is sent back on every response, and problem documents carry it as
  `request_id` (errors.problem_response reads `request_id()`).
- One access line per request on the `recsvc.access` logger: method, route template, status,
  duration, request id, a short fingerprint of the API key (never the key), and what the route
  added with `note()` (recommendations: strategy and model version). Never a body.
- `recsvc_http_requests_total` and `recsvc_http_request_duration_seconds` by route template
  (not the raw path, which would explode the label set).
- An exception no handler answered becomes a problem document here (503 when the database is
  unreachable, else 500), so that it too carries the id and gets its access line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from contextvars import ContextVar
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recsvc import metrics

log = logging.getLogger("recsvc.access")

HEADER = "X-Request-ID"
_HEADER_KEY = HEADER.lower().encode()
MAX_ID_LENGTH = 128

_request_id: ContextVar[str | None] = ContextVar("recsvc_request_id", default=None)
_notes: ContextVar[dict[str, Any] | None] = ContextVar("recsvc_access_notes", default=None)


def request_id() -> str | None:
    """The id of the request being answered (None outside a request)."""
    return _request_id.get()


def note(**fields: Any) -> None:
    """Add fields to the current request's access line (no payloads, no secrets)."""
    notes = _notes.get()
    if notes is not None:
        notes.update(fields)


def valid_id(value: bytes) -> str | None:
    """A client's X-Request-ID when acceptable: 1-128 printable ASCII characters."""
    if 1 <= len(value) <= MAX_ID_LENGTH and all(0x20 <= b < 0x7F for b in value):
        return value.decode("ascii")
    return None


def key_fingerprint(headers: list[tuple[bytes, bytes]]) -> str | None:
    """`k:` and 8 hex digits of the key's SHA-256: enough to tell keys apart in logs, useless
    to call the API with."""
    by_name = dict(headers)
    key = by_name.get(b"x-api-key")
    if key is None:
        scheme, _, token = by_name.get(b"authorization", b"").partition(b" ")
        key = token.strip() if scheme.lower() == b"bearer" else None
    if not key:
        return None
    return "k:" + hashlib.sha256(key).hexdigest()[:8]


class AccessMiddleware:
    def __init__(self, app: ASGIApp, retry_after_seconds: int) -> None:
        self.app = app
        self.retry_after_seconds = retry_after_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = None
        for name, value in scope["headers"]:
            if name == _HEADER_KEY:
                rid = valid_id(value)
                break
        rid = rid or os.urandom(16).hex()
        rid_token = _request_id.set(rid)
        notes: dict[str, Any] = {}
        notes_token = _notes.set(notes)
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                message["headers"] = [*message.get("headers", ()), (_HEADER_KEY, rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            from recsvc.errors import unexpected_error_response

            response = unexpected_error_response(exc, scope, self.retry_after_seconds)
            if started:  # the response is half sent: nothing to do but log and close
                log.error("request %s failed after its response started", rid)
            else:
                await response(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            metrics.observe_request(method, route, status, seconds)
            if log.isEnabledFor(logging.INFO):
                fields: dict[str, Any] = {
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 3),
                    "request_id": rid,
                    "key": key_fingerprint(scope["headers"]),
                    **notes,
                }
                log.info(
                    "%s %s %s %.1f ms %s", method, route, status, seconds * 1000, rid, extra=fields
                )
            _notes.reset(notes_token)
            _request_id.reset(rid_token)

"""Exceptions: every failure of a call is a `RecsvcError`.

    RecsvcError                 status, type, title, detail, errors, request_id
     ├── RecsvcConnectionError  no answer (connection refused or dropped, timeout); status None
     ├── Unauthorized           401  missing or unknown API key
     ├── Forbidden              403  the key lacks the scope
     ├── NotFound               404
     ├── Conflict               409  e.g. a training job is already running
     ├── ValidationFailed       422  `errors` names each invalid field
     └── Unavailable            429, 502, 503, 504 (still so after the retries)

Other statuses (413, 500, ...) raise `RecsvcError` itself.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import httpx
from pydantic import ValidationError

from recsvc_client.models import FieldError

__all__ = [
    "Conflict",
    "Forbidden",
    "NotFound",
    "RecsvcConnectionError",
    "RecsvcError",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "error_from_response",
]


class RecsvcError(Exception):
    """A call that failed. `request_id` is the id the server logged the request under: its
    `X-Request-ID` response header, else the problem document's `request_id`, else the id the
    client sent (every call sends one, the same for all of its retries)."""

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        type: str = "about:blank",
        title: str = "",
        errors: list[FieldError] | None = None,
        request_id: str | None = None,
        problem: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.errors = errors
        self.request_id = request_id
        self.problem = problem or {}
        """The whole problem document as the server sent it (members this client does not
        know included)."""

    def __str__(self) -> str:
        head = f"{self.status} {self.title}: " if self.status is not None else ""
        text = head + self.detail
        if self.errors:
            shown = "; ".join(f"{e.field}: {e.msg}" for e in self.errors[:5])
            more = f" (+{len(self.errors) - 5} more)" if len(self.errors) > 5 else ""
            text += f" [{shown}{more}]"
        if self.request_id:
            text += f" (request id {self.request_id})"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, detail={self.detail!r}, "
            f"request_id={self.request_id!r})"
        )


class RecsvcConnectionError(RecsvcError):
    """No HTTP answer: the connection failed, dropped or timed out (the httpx error is the
    `__cause__`). For POST /v1/models/train and activate the request may have been carried
    out: check before sending it again."""


class Unauthorized(RecsvcError):
    pass


class Forbidden(RecsvcError):
    pass


class NotFound(RecsvcError):
    pass


class Conflict(RecsvcError):
    pass


class ValidationFailed(RecsvcError):
    pass


class Unavailable(RecsvcError):
    pass


_BY_STATUS: dict[int, type[RecsvcError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: ValidationFailed,
    429: Unavailable,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


def error_from_response(response: httpx.Response, sent_request_id: str | None) -> RecsvcError:
    """The exception for an error response, from its problem document when it has one (a proxy's
    HTML page or an empty body still gives status, title and some detail)."""
    status = response.status_code
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = response.reason_phrase or "Error"
    try:
        body = response.json()
    except ValueError:
        body = None
    problem: dict[str, Any] = body if isinstance(body, dict) else {}
    detail = problem.get("detail")
    if not isinstance(detail, str):
        detail = response.text.strip()[:500] or phrase
    errors = None
    if isinstance(problem.get("errors"), list):
        errors = []
        for raw in problem["errors"]:
            try:
                errors.append(FieldError.model_validate(raw))
            except ValidationError:
                continue  # a malformed entry does not hide the error itself
    request_id = (
        response.headers.get("x-request-id")
        or (problem.get("request_id") if isinstance(problem.get("request_id"), str) else None)
        or sent_request_id
    )
    cls = _BY_STATUS.get(status, RecsvcError)
    return cls(
        detail,
        status=status,
        type=problem["type"] if isinstance(problem.get("type"), str) else "about:blank",
        title=problem["title"] if isinstance(problem.get("title"), str) else phrase,
        errors=errors,
        request_id=request_id,
        problem=problem,
    )

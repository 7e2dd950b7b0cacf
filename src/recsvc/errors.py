"""Domain errors and their one rendering: RFC 9457 problem details.

    RecsvcError (status 500)
     ├── InvalidInput        422  with `errors`: [{"loc": [...], "msg": ..., "type": ...}]
     ├── NotFound            404
     ├── Conflict            409
     ├── Unauthorized        401
     ├── Forbidden           403
     ├── PayloadTooLarge     413
     └── ServiceUnavailable  503  with Retry-After

Services raise these, never HTTPException; `install_handlers` turns them (and FastAPI's own
validation errors, unknown routes and wrong methods) into `application/problem+json`, and
`unexpected_error_response` does the same for database outages and anything unexpected
(called by access.AccessMiddleware). A response never carries a stack trace; a problem carries
the request id.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from recsvc import access

log = logging.getLogger("recsvc")

PROBLEM_JSON = "application/problem+json"


class RecsvcError(Exception):
    status = 500

    def __init__(
        self,
        detail: str,
        *,
        errors: Sequence[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = list(errors) if errors is not None else None
        self.headers = headers or {}
        self.extra = extra or {}


class InvalidInput(RecsvcError):
    status = 422


class NotFound(RecsvcError):
    status = 404


class Conflict(RecsvcError):
    status = 409


class Unauthorized(RecsvcError):
    status = 401


class Forbidden(RecsvcError):
    status = 403


class PayloadTooLarge(RecsvcError):
    status = 413


class ServiceUnavailable(RecsvcError):
    status = 503


def problem_response(
    status: int,
    detail: str,
    *,
    errors: Sequence[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    title = HTTPStatus(status).phrase
    body: dict[str, Any] = {
        "type": f"https://recsvc.dev/problems/{title.lower().replace(' ', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = list(errors)
    if extra:
        body.update(extra)
    rid = access.request_id()
    if rid is not None:
        body["request_id"] = rid
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def unexpected_error_response(
    exc: Exception, scope: Scope, retry_after_seconds: int
) -> JSONResponse:
    """What an exception no handler answered becomes (access.AccessMiddleware calls this):
    503 with Retry-After when the database is unreachable, else a logged 500. Never a trace."""
    if is_database_unavailable(exc):
        log.warning("database unavailable: %s", exc.__class__.__name__)
        return problem_response(
            503,
            "the database is unavailable; retry later",
            headers={"Retry-After": str(retry_after_seconds)},
        )
    log.error("unhandled error on %s %s", scope.get("method"), scope.get("path"), exc_info=exc)
    return problem_response(500, "internal error; it has been logged")


def validation_errors(raw: Sequence[Any]) -> list[dict[str, Any]]:
    """pydantic's error list, reduced to what a client needs (no echoed input, no URLs)."""
    out = []
    for err in raw:
        loc = [part for part in err.get("loc", ()) if part not in ("body", "function-after")]
        out.append(
            {"loc": loc, "field": dotted(loc), "msg": err.get("msg", ""), "type": err.get("type")}
        )
    return out


def dotted(loc: Sequence[Any]) -> str:
    """["events", 7, "type"] -> "events[7].type", the form acceptance tests and clients read."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def is_database_unavailable(exc: BaseException) -> bool:
    """True when the database cannot be reached, as opposed to a bad query."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return True
    if isinstance(exc, sa_exc.TimeoutError):  # pool exhausted while connections hang
        return True
    # The serving hot path talks to asyncpg directly; SQLAlchemy keeps asyncpg's error as the
    # cause of the one it raises. A server that is starting up, shutting down or recovering
    # from a crash answers with an operator-intervention error (SQLSTATE 57P01-57P03).
    driver = exc.orig.__cause__ if isinstance(exc, sa_exc.DBAPIError) and exc.orig else exc
    unreachable = asyncpg.PostgresConnectionError | asyncpg.InterfaceError
    if isinstance(driver, unreachable | asyncpg.exceptions.OperatorInterventionError):
        return True
    return isinstance(exc, OSError | TimeoutError)


def install_handlers(app: FastAPI, retry_after_seconds: int) -> None:
    async def on_recsvc_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RecsvcError)
        headers = dict(exc.headers)
        if exc.status == 503:
            headers.setdefault("Retry-After", str(retry_after_seconds))
        return problem_response(
            exc.status, exc.detail, errors=exc.errors, headers=headers, extra=exc.extra
        )

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = validation_errors(exc.errors())
        return problem_response(422, "the request is invalid", errors=errors)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        return problem_response(exc.status_code, detail, headers=exc.headers)

    app.add_exception_handler(RecsvcError, on_recsvc_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)

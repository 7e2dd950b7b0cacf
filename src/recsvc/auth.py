"""API keys with scopes (`ingest`, `read`, `admin`), from `X-API-Key` or `Authorization: Bearer`."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from recsvc.config import Scope, Settings
from recsvc.errors import Forbidden, Unauthorized

# auto_error=False: we answer with our own problem documents; these objects only document
# the two ways of sending a key in openapi.yaml.
ApiKeyHeader = Annotated[str | None, Depends(APIKeyHeader(name="X-API-Key", auto_error=False))]
BearerToken = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


def scopes_of(presented: str, settings: Settings) -> set[str] | None:
    """The scopes of a presented key, or None. Every configured key is compared in constant
    time, and all of them are, so the timing says nothing about which key nearly matched."""
    found: set[str] | None = None
    given = presented.encode()
    for key, scopes in settings.api_keys.items():
        if hmac.compare_digest(given, key.encode()):
            found = set(scopes)
    return found


def _authorize(settings: Settings, presented: str | None, scope: Scope) -> None:
    if not presented:
        raise Unauthorized(
            "an API key is required: send it as X-API-Key or Authorization: Bearer",
            headers={"WWW-Authenticate": "Bearer"},
        )
    scopes = scopes_of(presented, settings)
    if scopes is None:
        raise Unauthorized("unknown API key", headers={"WWW-Authenticate": "Bearer"})
    if scope not in scopes:
        raise Forbidden(f"this API key lacks the {scope!r} scope")


def _presented(api_key: str | None, bearer: HTTPAuthorizationCredentials | None) -> str | None:
    return api_key or (bearer.credentials if bearer is not None else None)


def require(scope: Scope) -> Callable[..., Awaitable[None]]:
    """A route dependency: the request must carry a key with `scope`."""

    async def check(
        request: Request,
        api_key: ApiKeyHeader,
        bearer: BearerToken,
    ) -> None:
        settings: Settings = request.app.state.settings
        if not settings.auth_disabled:
            _authorize(settings, _presented(api_key, bearer), scope)

    return check


async def key_scopes(
    request: Request,
    api_key: ApiKeyHeader,
    bearer: BearerToken,
) -> list[str]:
    """The scopes of the key a request presented (all of them when auth is disabled); use after
    a `require` dependency has admitted the request."""
    settings: Settings = request.app.state.settings
    if settings.auth_disabled:
        return ["admin", "ingest", "read"]
    presented = _presented(api_key, bearer)
    return sorted(scopes_of(presented, settings) or ()) if presented else []


async def require_metrics_access(
    request: Request,
    api_key: ApiKeyHeader,
    bearer: BearerToken,
) -> None:
    """/metrics is open to scrapers unless RECSVC_METRICS_REQUIRE_KEY=true (then: admin)."""
    settings: Settings = request.app.state.settings
    if settings.metrics_require_key and not settings.auth_disabled:
        _authorize(settings, _presented(api_key, bearer), "admin")

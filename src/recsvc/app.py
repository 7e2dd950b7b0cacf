"""The FastAPI application: `create_app()` wires settings, database, routes, errors, access
records (request ids, logs, metrics).

The lifespan builds the engine and shared state and disposes them on shutdown; nothing touches
the database at import time.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.telemetry import TelemetryConfig
from pydantic.json_schema import models_json_schema
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recsvc import __version__, dashboard, db, jobs, metrics
from recsvc.access import AccessMiddleware
from recsvc.api import DOC_MODELS, ops, v1
from recsvc.config import Settings, get_settings
from recsvc.errors import PayloadTooLarge, install_handlers, problem_response
from recsvc.schemas import ValidationRules
from recsvc.serving import SWITCH_INTERVAL_SECONDS, Serving

log = logging.getLogger("recsvc")

_NO_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
}


class BodyLimitMiddleware:
    """Refuse bodies over the limit with 413, by Content-Length or while streaming (chunked)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                response = problem_response(413, self._detail())
                await response(scope, receive, send)
                return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(self._detail())
            return message

        await self.app(scope, limited_receive, send)

    def _detail(self) -> str:
        return f"the request body is larger than {self.max_bytes} bytes"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.require_auth_configured()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        engine = db.make_engine(settings.database_url, budget=db.connection_budget(settings))
        app.state.engine = engine
        app.state.sessionmaker = db.make_sessionmaker(engine)
        app.state.background = set()
        serving = Serving(settings, engine, app.state.sessionmaker)
        app.state.serving = serving
        try:
            await serving.refresh()
        except Exception as exc:  # e.g. the database is down: start anyway, poll recovers
            log.warning("no model or catalog at start-up: %s", exc)
        app.state.background.add(asyncio.create_task(serving.poll_forever()))
        if settings.train_interval_seconds:
            jobs.start_schedule(app, settings.train_interval_seconds)
        try:
            yield
        finally:
            # A job cut short here is noticed by its stale heartbeat and reported as failed.
            background = list(app.state.background)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await serving.close()
            await engine.dispose()
            metrics.worker_exiting()

    app = FastAPI(
        title="recsvc",
        version=__version__,
        summary="Recommendations for customer-service chatbots",
        description=(
            "Stream learner behaviour in, keep the catalog in sync, and ask for ranked, "
            "explainable recommendations. Every /v1 route needs an API key "
            "(`X-API-Key: <key>` or `Authorization: Bearer <key>`) with the right scope "
            "(`ingest`, `read`, `admin`). Errors are RFC 9457 problem documents."
        ),
        lifespan=lifespan,
        # FastAPI's built-in OpenTelemetry checks its providers on every request (about 40 us
        # of a /healthz answer here); recsvc's own records are access.py and metrics.py.
        telemetry=_NO_TELEMETRY,
    )
    app.state.settings = settings
    app.state.rules = ValidationRules.from_settings(settings)
    app.state.head_revision = db.head_revision()
    app.include_router(ops)
    app.include_router(v1)
    dashboard.mount(app)
    install_handlers(app, settings.db_retry_after_seconds)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Outermost: the request id, access line and HTTP metrics cover every response.
    app.add_middleware(AccessMiddleware, retry_after_seconds=settings.db_retry_after_seconds)
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    return app


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the schemas of bodies that routes parse themselves."""
    if app.openapi_schema is None:
        doc = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
        )
        _, defs = models_json_schema(
            [(model, "validation") for model in DOC_MODELS],
            ref_template="#/components/schemas/{model}",
        )
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(defs.get("$defs", {}))
        doc["components"]["schemas"] = dict(sorted(schemas.items()))
        app.openapi_schema = doc
    return app.openapi_schema

"""Cross-cutting HTTP behaviour: problem documents, limits, health, /metrics access,
openapi.yaml. What the metrics count: test_metrics.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy.ext.asyncio import AsyncSession

from conftest import INGEST, OPS, READ, ServerThread, scalar
from recsvc.app import create_app
from recsvc.config import Settings
from recsvc.openapi import render_yaml


async def test_unknown_route_and_wrong_method_are_problems(client: httpx.AsyncClient) -> None:
    missing = await client.get("/v1/nothing-here", headers=OPS)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["title"] == "Not Found"
    wrong = await client.delete("/healthz")
    assert wrong.status_code == 405
    assert wrong.headers["content-type"] == "application/problem+json"


async def test_body_limit(client: httpx.AsyncClient) -> None:
    big = b'{"events": [' + b" " * (2 * 1024 * 1024) + b"]}"
    response = await client.post(
        "/v1/events", content=big, headers={**INGEST, "content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"

    async def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(40):
            yield b" " * 65536

    streamed = await client.post("/v1/events", content=chunks(), headers=INGEST)
    assert streamed.status_code == 413


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["database"] == "ok"
    assert body["model"] == "none_trained"


async def test_metrics_key_when_required(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"metrics_require_key": True}))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://recsvc") as c,
    ):
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/metrics", headers=READ)).status_code == 403
        assert (await c.get("/metrics", headers=OPS)).status_code == 200


def test_refuses_to_start_without_keys(database_url: str) -> None:
    with pytest.raises(ValueError, match="RECSVC_API_KEYS"):
        create_app(Settings(database_url=database_url))
    create_app(Settings(database_url=database_url, auth_disabled=True))


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 8"):
        Settings(api_keys={"abc": ["read"]})


def test_openapi_yaml_matches_the_app() -> None:
    """openapi.yaml is what the service serves; regenerate with `recsvc openapi`."""
    committed = Path(__file__).parents[1] / "openapi.yaml"
    app = create_app(Settings(auth_disabled=True))
    assert committed.read_text(encoding="utf-8") == render_yaml(app), (
        "openapi.yaml is stale: run `recsvc openapi`"
    )
    served = yaml.safe_load(committed.read_text(encoding="utf-8"))
    assert "/v1/events" in served["paths"]
    assert "EventIn" in served["components"]["schemas"]


async def test_readiness_reports_an_unmigrated_database(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    app = create_app(Settings(database_url=url, auth_disabled=True))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://recsvc") as c:
            ready = await c.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["database"] == "not_migrated"
    assert "Retry-After" in ready.headers


def test_a_write_is_committed_before_its_answer(
    settings: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request's transaction commits before the response goes out: a client that got 200
    finds the row from any other connection at once (a slow commit makes the order visible)."""
    commit = AsyncSession.commit

    async def slow_commit(self: AsyncSession) -> None:
        await asyncio.sleep(0.5)
        await commit(self)

    with ServerThread(settings) as server:
        with monkeypatch.context() as patched:  # only around this one request
            patched.setattr(AsyncSession, "commit", slow_commit)
            response = httpx.put(
                f"{server.url}/v1/users/u-durable",
                json={"attributes": {"plan": "pro"}},
                headers=OPS,
                timeout=10,
            )
            stored = asyncio.run(
                scalar(database_url, "SELECT count(*) FROM users WHERE id = 'u-durable'")
            )
            time.sleep(0.6)  # a commit still sleeping ends before the patch is undone
    assert response.status_code in (200, 201)
    assert stored == 1

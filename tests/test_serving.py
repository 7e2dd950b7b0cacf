"""One worker's serving state: failures isolated per request, catalog changes seen without
comparing clocks, and bounded caches."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.pool import NullPool

from conftest import INGEST, READ
from recsvc import db, ingest
from recsvc import serving as serving_module
from recsvc.app import create_app
from recsvc.config import Settings
from recsvc.errors import ServiceUnavailable
from recsvc.schemas import ItemIn
from recsvc.scorer import RecommendRequest, Scorer
from test_recommend import live, trained  # noqa: F401  (fixtures)


async def test_one_bad_request_fails_alone(
    live: httpx.AsyncClient,  # noqa: F811
    app: FastAPI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    serving = app.state.serving
    original = Scorer.recommend
    batches: list[int] = []

    def recommend(self: Scorer, requests: Any, *args: Any) -> Any:
        batches.append(len(requests))
        if any(r.user_id == "boom" for r in requests):
            raise RuntimeError("this request cannot be scored")
        return original(self, requests, *args)

    monkeypatch.setattr(Scorer, "recommend", recommend)
    users = ["u00001", "u00002", "boom", "u00003", "u00004"]
    results = await asyncio.gather(
        *(serving.recommend(RecommendRequest(user_id=u, n=5)) for u in users),
        return_exceptions=True,
    )
    assert batches[0] == len(users)  # they were scored as one batch first
    for user, result in zip(users, results, strict=True):
        if user == "boom":
            assert isinstance(result, RuntimeError)
        else:
            assert not isinstance(result, BaseException), result
            assert result.user_id == user and len(result.items) == 5
    # over HTTP the bad one is a 500 problem without a trace, the others answer
    answers = await asyncio.gather(
        *(live.get(f"/v1/users/{u}/recommendations", headers=READ) for u in users)
    )
    assert [a.status_code for a in answers] == [200, 200, 500, 200, 200]
    assert "Traceback" not in answers[2].text


async def test_a_catalog_change_is_seen_whatever_the_writers_clocks(
    live: httpx.AsyncClient,  # noqa: F811
    app: FastAPI,
    database_url: str,
) -> None:
    """A replica whose clock runs an hour ahead writes an item; then another deletes one. The
    newest `updated_at` does not change and neither does the number of rows (deletes are
    soft), yet every worker must notice the delete."""
    serving = app.state.serving
    engine = db.make_engine(database_url, poolclass=NullPool)
    sessions = db.make_sessionmaker(engine)
    try:
        async with sessions() as session, session.begin():  # the replica with a fast clock
            await ingest.put_item(session, "c0005", ItemIn(title="Python 入门（第2期）"))
            await session.execute(
                ingest.ITEMS.update()
                .where(ingest.ITEMS.c.id == "c0005")
                .values(updated_at=ingest.utcnow().replace(year=ingest.utcnow().year + 1))
            )
        await serving.refresh()
        assert "c0006" not in serving.catalog.unrecommendable
        async with sessions() as session, session.begin():  # another replica, another worker
            await ingest.delete_item(session, "c0006")
    finally:
        await engine.dispose()
    await serving.refresh()
    assert "c0006" in serving.catalog.unrecommendable


async def test_popular_windows_are_bounded(
    app: FastAPI,
    client: httpx.AsyncClient,
) -> None:
    events = [{"user_id": f"u{i}", "item_id": f"c{i % 3}", "type": "view"} for i in range(9)]
    posted = await client.post("/v1/events", json={"events": events}, headers=INGEST)
    assert posted.status_code == 202
    windows = [0.5 + day for day in range(40)] + [1.2, 1.7]  # 1.2 and 1.7 round up to 2 days
    for window in windows:
        response = await client.get("/v1/popular", params={"window_days": window}, headers=READ)
        assert response.status_code == 200
        assert len(response.json()["items"]) == 3
    cache = app.state.serving._popular_cache
    assert len(cache) == serving_module.POPULAR_CACHE_WINDOWS
    assert 2 in cache  # the most recently used whole-day window
    too_long = await client.get("/v1/popular", params={"window_days": 400}, headers=READ)
    assert too_long.status_code == 422


async def test_past_the_pending_cap_requests_are_refused_not_queued(settings: Settings) -> None:
    """Bounded memory: a worker lets at most RECSVC_MAX_PENDING_REQUESTS wait for scoring;
    the next ones get 503 (ServiceUnavailable, with Retry-After) at once."""
    app = create_app(settings.model_copy(update={"max_pending_requests": 2}))
    async with app.router.lifespan_context(app):
        serving = app.state.serving
        asks = [serving.recommend(RecommendRequest(user_id=None, n=3)) for _ in range(5)]
        results = await asyncio.gather(*asks, return_exceptions=True)
    refused = [r for r in results if isinstance(r, ServiceUnavailable)]
    answered = [r for r in results if not isinstance(r, BaseException)]
    assert len(answered) == 2 and len(refused) == 3
    assert refused[0].status == 503

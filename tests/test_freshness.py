"""Which users need the fresh-events query: NOTIFY from every writer, reloads, lost listener."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy.pool import NullPool

from conftest import scalar
from recsvc import db, ingest
from recsvc.schemas import EventIn
from test_recommend import get, live, send, train, trained  # noqa: F401 (fixtures)


def test_notify_payloads_fit_and_round_trip() -> None:
    users = [f"learner-{i:05d}-" + "x" * 90 for i in range(2000)] + ["学员", "a\nb"]
    payloads = ingest.notify_payloads(users + users[:10])
    assert len(payloads) > 1
    assert all(len(p.encode()) < 8000 for p in payloads)
    received = [u for p in payloads for u in ingest.notified_users(p) or []]
    assert sorted(received) == sorted(users)
    assert ingest.notified_users("not json") is None
    assert ingest.notified_users(orjson.dumps({"user": "x"}).decode()) is None


@pytest.fixture
def postgres_only(is_postgres: bool) -> None:
    if not is_postgres:
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; on SQLite every request queries")


async def insert_elsewhere(database_url: str, *events: dict[str, Any]) -> None:
    """Store events through a connection of its own, as another worker or `recsvc import`."""
    engine = db.make_engine(database_url, poolclass=NullPool)
    try:
        async with db.make_sessionmaker(engine)() as session, session.begin():
            await ingest.insert_events(session, [EventIn(**e) for e in events])
    finally:
        await engine.dispose()


async def eventually(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


def may_have(app: FastAPI, user: str) -> bool:
    """Whether the app's worker would query `user`'s events for the model it serves."""
    serving = app.state.serving
    return bool(serving.fresh_users.may_have_events(user, serving.live.cutoff))


@pytest.mark.usefixtures("postgres_only")
async def test_events_stored_by_another_writer_arrive_by_notify(
    live: httpx.AsyncClient,  # noqa: F811
    app: FastAPI,
    database_url: str,
) -> None:
    fresh = app.state.serving.fresh_users
    user = "u00007"
    assert fresh.tracking
    assert not may_have(app, user)  # answered without a query
    assert (await get(live, user))["strategy"] == "als"
    await insert_elsewhere(database_url, {"user_id": user, "item_id": "c0001", "type": "enroll"})
    await eventually(lambda: may_have(app, user))
    assert (await get(live, user))["strategy"] == "als_foldin"
    assert not may_have(app, "u00008")


@pytest.mark.usefixtures("postgres_only")
async def test_without_the_listener_every_request_queries(
    live: httpx.AsyncClient,  # noqa: F811
    app: FastAPI,
    database_url: str,
) -> None:
    serving = app.state.serving
    fresh = serving.fresh_users
    assert fresh.tracking
    await scalar(
        database_url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    await eventually(lambda: not fresh.tracking)
    user = "u00009"
    await insert_elsewhere(database_url, {"user_id": user, "item_id": "c0002", "type": "enroll"})
    assert (await get(live, user))["strategy"] == "als_foldin"  # queried: no notice needed
    await serving.refresh()  # the next poll reconnects and reloads the set with one query
    assert fresh.tracking
    assert may_have(app, user)
    assert not may_have(app, "u00008")


@pytest.mark.usefixtures("postgres_only")
async def test_a_newer_model_starts_with_the_users_it_has_not_seen(
    live: httpx.AsyncClient,  # noqa: F811
    app: FastAPI,
) -> None:
    fresh = app.state.serving.fresh_users
    user = "u00010"
    await send(live, {"user_id": user, "item_id": "c0003", "type": "enroll"})
    assert may_have(app, user)  # the worker that stored them knows at once
    assert (await get(live, user))["strategy"] == "als_foldin"
    await train(live, app)
    assert fresh.tracking
    assert not may_have(app, user)  # the new model holds these events
    assert (await get(live, user))["strategy"] == "als"


@pytest.mark.usefixtures("postgres_only")
async def test_past_its_cap_the_set_is_dropped_until_the_next_model(
    live: httpx.AsyncClient,  # noqa: F811
    app: FastAPI,
) -> None:
    """Bounded memory: more users with unread events than RECSVC_FRESH_USERS_MAX and the
    worker stops remembering them (every request queries, so no event is missed), without
    reloading the too-large set on every poll; the next model starts a new set."""
    serving = app.state.serving
    fresh = serving.fresh_users
    assert fresh.tracking
    fresh._max_users = 3  # the setting, shrunk for the test
    fresh.add(["a1", "a2"])
    assert fresh.tracking
    fresh.add(["a3", "a4"])
    assert not fresh.tracking and fresh.size == 0
    assert may_have(app, "never-seen")  # everyone may have events: every request queries
    await serving.refresh()  # a poll with the same model does not reload the set
    assert not fresh.tracking
    fresh._max_users = 500_000
    await train(live, app)  # a new model, a new cutoff: a new set
    assert fresh.tracking
    assert not may_have(app, "never-seen")

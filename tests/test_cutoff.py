"""The cutoff between a model and fold-in: every acknowledged event is in exactly one of the two,
whatever the commit time; a request caught in a hot swap is answered by one model throughout."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from sqlalchemy.pool import NullPool

from recsvc import artifact, db, ingest, pipeline
from recsvc.config import Settings
from recsvc.schemas import EventIn
from recsvc.scorer import RecentEvent, RecommendRequest
from test_recommend import get, ids, live, send, train, trained  # noqa: F401  (fixtures)

USER = "u00007"


async def recent(app: FastAPI, user: str) -> tuple[RecentEvent, ...]:
    serving = app.state.serving
    return tuple(await serving.recent_events(user, serving.live))


def model_items(settings: Settings, version: str, user: str) -> set[str]:
    """The items in `user`'s row of a stored model."""
    model = artifact.load(settings.models_dir / version)
    row = model.users.index_of(user)
    assert row is not None
    columns = model.user_items[row].indices
    return set(model.items.ids_of(columns))


async def test_events_acknowledged_just_before_training_are_in_the_model_only(
    live: httpx.AsyncClient,  # noqa: F811
    app: FastAPI,
    trained: Settings,  # noqa: F811
) -> None:
    """No settling second: events acknowledged the instant before training are the model's,
    and fold-in adds nothing (it used to add them again, weighing them twice)."""
    before = ids(await get(live, USER, n=10))
    item = next(i for i in (f"c{n:04d}" for n in range(150)) if i not in before)
    await send(live, {"user_id": USER, "item_id": item, "type": "view"})
    assert [e.item_id for e in await recent(app, USER)] == [item]  # folded in, once
    version = await train(live, app, force=True)
    assert await recent(app, USER) == ()
    assert item in model_items(trained, version, USER)
    assert (await get(live, USER))["strategy"] == "als"


async def test_an_ingest_commit_held_across_the_training_snapshot_is_folded_in(
    live: httpx.AsyncClient,  # noqa: F811
    app: FastAPI,
    trained: Settings,  # noqa: F811
    database_url: str,
    is_postgres: bool,
) -> None:
    """An ingest transaction takes 3 s to commit, and training reads the events in between.
    The event is not in the model (training could not see it), so it must be folded in, and
    the events committed before training are in the model and not folded in."""
    if not is_postgres:
        pytest.skip("concurrent writers are PostgreSQL's; SQLite runs one writer at a time")
    await send(live, {"user_id": USER, "item_id": "c0001", "type": "view"})  # before training
    engine = db.make_engine(database_url, poolclass=NullPool)
    held = EventIn(event_id="held-1", user_id=USER, item_id="c0002", type="enroll")
    started = asyncio.Event()

    async def slow_ingest() -> None:
        async with db.make_sessionmaker(engine)() as session:
            await ingest.insert_events(session, [held])
            started.set()
            await asyncio.sleep(3.0)  # the commit is late: training reads meanwhile
            await session.commit()

    try:
        writer = asyncio.create_task(slow_ingest())
        await started.wait()
        await asyncio.sleep(1.5)  # older than the old one-second settling window
        outcome = await pipeline.run_training(trained, app.state.sessionmaker, force=True)
        assert not writer.done(), "training finished before the commit: the test proves nothing"
        await writer
    finally:
        await engine.dispose()
    await app.state.serving.refresh()
    assert app.state.serving.version == outcome.version
    in_model = model_items(trained, outcome.version, USER)
    assert "c0001" in in_model
    folded = await recent(app, USER)
    assert [(e.item_id, e.type) for e in folded] == [("c0002", "enroll")]  # exactly once
    # and the next model holds it, with nothing left to fold in
    again = await pipeline.run_training(trained, app.state.sessionmaker, force=True)
    await app.state.serving.refresh()
    assert app.state.serving.version == again.version
    assert "c0002" in model_items(trained, again.version, USER)
    assert await recent(app, USER) == ()


async def test_a_request_caught_in_a_swap_is_answered_by_one_model(
    live: httpx.AsyncClient,  # noqa: F811
    app: FastAPI,
) -> None:
    """The fold-in query, the scoring and the reported version come from the model the request
    started with, even when another model is swapped in while its query runs."""
    serving = app.state.serving
    old = serving.live
    await send(live, {"user_id": USER, "item_id": "c0003", "type": "enroll"})
    await train(live, app, force=True)  # holds that enrolment
    new = serving.live
    assert new.version != old.version
    serving.live = old
    reader = serving._recent_events

    async def swap_during_the_query(user_id: str, cutoff: ingest.Cutoff | None) -> object:
        rows = await reader(user_id, cutoff)
        serving.live = new  # the poll swaps models while this request waits for the database
        return rows

    serving._recent_events = swap_during_the_query
    try:
        response = await live.get(
            f"/v1/users/{USER}/recommendations",
            params={"n": 10},
            headers={"X-API-Key": "k-chatbot-secret"},
        )
    finally:
        serving._recent_events = reader
    body = response.json()
    assert body["model_version"] == old.version
    assert body["strategy"] == "als_foldin"
    expected = old.scorer.recommend(
        [
            RecommendRequest(
                user_id=USER,
                n=10,
                recent=await serving.recent_events(USER, old),
                diversity=serving.settings.diversity,
            )
        ],
        serving.catalog,
    )[0]
    assert [i["item_id"] for i in body["items"]] == [i.item_id for i in expected.items]
    assert np.allclose([i["score"] for i in body["items"]], [i.score for i in expected.items])
    # the new model holds the enrolment: asked of it, nothing is folded in twice
    assert await serving.recent_events(USER, new) == ()

"""Erasure reaches serving: from the 204 on no worker uses the learner's model row, no version
activated later brings it back, and training rewrites the artifacts that still hold it."""

from __future__ import annotations

import asyncio
import time

import httpx
from fastapi import FastAPI

from conftest import INGEST, OPS, READ, rows
from recsvc import artifact
from recsvc.app import create_app
from recsvc.config import Settings
from test_recommend import get, ids, live, train, trained  # noqa: F401  (fixtures)

USER = "u00012"


def stored_users(settings: Settings) -> dict[str, bool]:
    """Version -> whether its artifact on disk holds USER."""
    return {
        version: USER in artifact.load(settings.models_dir / version).users
        for version in artifact.list_versions(settings.models_dir)
    }


async def test_an_erased_learner_is_forgotten_by_every_worker_and_version(
    live: httpx.AsyncClient,  # noqa: F811
    app: FastAPI,
    trained: Settings,  # noqa: F811
    database_url: str,
) -> None:
    explained = await get(live, USER, n=10, explain="true")
    assert explained["strategy"] == "als"
    own = {r["item_id"] for item in explained["items"] for r in item["reasons"]}
    assert own  # the explanation names the learner's history
    first = app.state.serving.version

    other = create_app(trained)  # a second worker on the same database
    async with other.router.lifespan_context(other):
        transport = httpx.ASGITransport(app=other, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://other") as second:
            assert (await get(second, USER))["strategy"] == "als"

            assert (await live.delete(f"/v1/users/{USER}", headers=OPS)).status_code == 204
            # this worker: at once
            after = await get(live, USER, n=10, explain="true")
            assert after["strategy"] == "popular"
            assert all(not item["reasons"] for item in after["items"])
            # the other worker: within its poll (2 s here; at most 5 s)
            deadline = time.monotonic() + 5
            while (await get(second, USER))["strategy"] != "popular":
                assert time.monotonic() < deadline, "the other worker still uses the model row"
                await asyncio.sleep(0.1)

    # a newer version is trained without the learner; rolling back to the older one (whose
    # artifact held the learner until the training rewrote it) does not bring them back
    second_version = await train(live, app, force=True)
    assert stored_users(trained) == {first: False, second_version: False}
    assert await rows(database_url, "SELECT user_id FROM erased_users") == []
    rollback = await live.post(f"/v1/models/{first}/activate", headers=OPS)
    assert rollback.status_code == 200
    await app.state.serving.refresh()
    assert app.state.serving.version == first
    again = await get(live, USER, n=10, explain="true")
    assert again["strategy"] == "popular"
    assert all(not item["reasons"] for item in again["items"])


async def test_a_version_loaded_after_the_erasure_forgets_the_learner(
    live: httpx.AsyncClient,  # noqa: F811
    app: FastAPI,
    trained: Settings,  # noqa: F811
) -> None:
    """A worker that starts after the erasure, before any training rewrote the artifacts,
    loads a version that still holds the row: the erased list is applied at load."""
    assert (await live.delete(f"/v1/users/{USER}", headers=OPS)).status_code == 204
    assert stored_users(trained)[app.state.serving.version]  # not rewritten yet
    fresh = create_app(trained)
    async with fresh.router.lifespan_context(fresh):
        assert USER in fresh.state.serving.erased
        transport = httpx.ASGITransport(app=fresh, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://fresh") as client:
            assert (await get(client, USER))["strategy"] == "popular"
            response = await client.get(f"/v1/users/{USER}", headers=READ)
            assert response.status_code == 404


async def test_erasure_records_the_learner_in_one_transaction(
    live: httpx.AsyncClient,  # noqa: F811
    database_url: str,
) -> None:
    before = await rows(database_url, "SELECT value FROM revisions WHERE name = 'erasure'")
    assert (await live.delete(f"/v1/users/{USER}", headers=OPS)).status_code == 204
    assert await rows(database_url, "SELECT user_id FROM erased_users") == [USER]
    after = await rows(database_url, "SELECT value FROM revisions WHERE name = 'erasure'")
    assert after == [(before[0] if before else 0) + 1]
    events = await rows(database_url, "SELECT count(*) FROM events WHERE user_id = :u", u=USER)
    assert events == [0]


async def test_a_returning_learner_is_learned_again(
    live: httpx.AsyncClient,  # noqa: F811
    app: FastAPI,
) -> None:
    """The erased list hides rows only in models trained before the erasure: the same id
    coming back with new events is learned by the next model, and folded in until then."""
    assert (await live.delete(f"/v1/users/{USER}", headers=OPS)).status_code == 204
    events = [{"user_id": USER, "item_id": f"c{i:04d}", "type": "enroll"} for i in range(3)]
    response = await live.post("/v1/events", json={"events": events}, headers=INGEST)
    assert response.status_code == 202
    assert (await get(live, USER))["strategy"] == "als_foldin"  # new events only
    await train(live, app, force=True)
    assert USER in app.state.serving.erased  # still listed in this worker ...
    assert (await get(live, USER))["strategy"] == "als"  # ... but the new model is after it

"""Profiles, segments and audiences over HTTP on a small demo slice: answers before the first
model, 4xx for bad input, exclusions fresher than the model, courses newer than the model."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from conftest import INGEST, OPS, READ
from recsvc.config import Settings
from test_learners_demo import train
from test_models import demo  # noqa: F401 (fixture: 800 learners, 150 courses)


async def status(client: httpx.AsyncClient, path: str, **params: Any) -> int:
    return (await client.get(path, params=params, headers=READ)).status_code


async def test_before_the_first_model(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/segments", headers=READ)).json() == {
        "model_version": None,
        "segments": [],
    }
    assert await status(client, "/v1/segments/0/users") == 404
    assert await status(client, "/v1/items/c1/audience") == 409
    topic = await client.post("/v1/audiences", json={"categories": ["英语"]}, headers=READ)
    assert topic.status_code == 409
    assert await status(client, "/v1/users/nobody/profile") == 404
    # A learner with attributes and no events yet has an empty portrait.
    await client.put("/v1/users/u1", json={"attributes": {"city": "上海"}}, headers=INGEST)
    profile = (await client.get("/v1/users/u1/profile", headers=READ)).json()
    assert profile["n_events"] == 0 and profile["segment"] is None
    assert profile["interests"] == {"categories": [], "tags": []}
    # Events without a model: interests from the catalog the events touch.
    await client.put(
        "/v1/items/c1", json={"title": "Python", "categories": ["编程"]}, headers=INGEST
    )
    event = {"user_id": "u1", "item_id": "c1", "type": "enroll"}
    accepted = await client.post("/v1/events", json={"events": [event]}, headers=INGEST)
    assert accepted.status_code == 202
    profile = (await client.get("/v1/users/u1/profile", headers=READ)).json()
    assert profile["interests"]["categories"] == [{"name": "编程", "affinity": 1.0, "evidence": 1}]
    assert profile["journey"]["n_consumed"] == 1 and profile["model_version"] is None
    assert {x["label"] for x in profile["labels"]} == {"new"}


@pytest.mark.slow
async def test_bad_input_gets_a_problem_document(
    demo: Settings,  # noqa: F811
    app: FastAPI,
    client: httpx.AsyncClient,
) -> None:
    first = await train(app, client)
    for path, params in [
        ("/v1/items/c0001/audience", {"n": 0}),
        ("/v1/items/c0001/audience", {"n": 1001}),
        ("/v1/items/c0001/audience", {"n": "many"}),
        ("/v1/segments/-1/users", {}),
        ("/v1/segments/x/users", {}),
        ("/v1/segments/0/users", {"limit": 0}),
        ("/v1/segments/0/users", {"cursor": "not-a-cursor"}),
        ("/v1/users/u00001/profile", {"tz": "Mars/Olympus"}),
    ]:
        response = await client.get(path, params=params, headers=READ)
        assert response.status_code == 422, (path, params, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    assert await status(client, "/v1/segments/999/users") == 404
    assert await status(client, "/v1/items/no-such-course/audience") == 404
    assert await status(client, "/v1/users/no-such-learner/profile") == 404
    for body in [
        {},
        {"categories": [], "tags": []},
        {"categories": ["英语"], "n": 0},
        {"categories": ["英语"], "n": 1001},
        {"categories": ["英语"], "surprise": 1},
        {"categories": "英语"},
    ]:
        response = await client.post("/v1/audiences", json=body, headers=READ)
        assert response.status_code == 422, (body, response.text)

    # A cursor is bound to its segment and its model version.
    page = (await client.get("/v1/segments/0/users", params={"limit": 2}, headers=READ)).json()
    cursor = page["next_cursor"]
    assert cursor is not None and page["model_version"] == first
    assert await status(client, "/v1/segments/1/users", cursor=cursor) == 422
    assert await status(client, "/v1/segments/0/users", cursor=cursor) == 200
    started = await client.post("/v1/models/train", json={"force": True}, headers=OPS)
    assert started.status_code == 202
    await train_done(app, client, started.json()["job_id"])
    stale = await client.get("/v1/segments/0/users", params={"cursor": cursor}, headers=READ)
    assert stale.status_code == 409 and "start again" in stale.json()["detail"]


async def train_done(app: FastAPI, client: httpx.AsyncClient, job_id: str) -> None:
    from test_models import wait_for_job

    job = await wait_for_job(client, job_id)
    assert job["state"] == "succeeded", job
    await app.state.serving.refresh()


@pytest.mark.slow
async def test_audiences_leave_out_consumers_newer_than_the_model_and_cover_new_courses(
    demo: Settings,  # noqa: F811
    app: FastAPI,
    client: httpx.AsyncClient,
) -> None:
    await train(app, client)
    response = await client.get("/v1/items/c0001/audience", params={"n": 5}, headers=READ)
    assert response.status_code == 200
    audience = response.json()
    assert audience["strategy"] == "als" and len(audience["users"]) == 5
    scores = [m["score"] for m in audience["users"]]
    assert scores == sorted(scores, reverse=True)
    top = audience["users"][0]["user_id"]
    # The top learner enrols now: gone from the audience at once, no training needed.
    event = {"user_id": top, "item_id": "c0001", "type": "enroll"}
    accepted = await client.post("/v1/events", json={"events": [event]}, headers=INGEST)
    assert accepted.status_code == 202
    again = (await client.get("/v1/items/c0001/audience", params={"n": 5}, headers=READ)).json()
    assert top not in {m["user_id"] for m in again["users"]}
    topic = await client.post(
        "/v1/audiences",
        json={"categories": ["英语"], "n": 50, "exclude_consumed": False},
        headers=READ,
    )
    assert topic.status_code == 200 and topic.json()["strategy"] == "topic"
    assert topic.json()["basis"] > 0 and len(topic.json()["users"]) == 50
    nothing = await client.post("/v1/audiences", json={"tags": ["无此标签"]}, headers=READ)
    assert nothing.json()["users"] == [] and nothing.json()["basis"] == 0

    # A course newer than the model: the courses most like it in text stand in for it.
    similar = (await client.get("/v1/items/c0001", headers=READ)).json()
    new_course = {
        "title": similar["title"] + "（2027新版）",
        "categories": similar["categories"],
        "tags": similar["tags"],
    }
    assert (
        await client.put("/v1/items/brand-new", json=new_course, headers=INGEST)
    ).status_code == 201
    fresh = await client.get("/v1/items/brand-new/audience", params={"n": 20}, headers=READ)
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["strategy"] == "content" and fresh.json()["basis"] > 0
    assert len(fresh.json()["users"]) == 20

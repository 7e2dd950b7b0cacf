"""Online recommendations over HTTP: freshness, strategies, filters, explanations, queries."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from conftest import INGEST, OPS, READ, ServerThread, activate_behind_the_api
from recsvc import metrics
from recsvc.config import Settings
from recsvc.demo_data import generate
from test_metrics import increase, scrape
from test_models import load_demo, wait_for_job

BATCH_SIZE = "recsvc_scoring_batch_size"

DEMO = {"n_users": 800, "n_items": 150}


@pytest.fixture
def trained(settings: Settings, tmp_path: Path) -> Settings:
    """A small demo data set, loaded (the model trained on it holds every event, so the
    model, not fold-in, answers for users without newer events)."""
    load_demo(settings, tmp_path / "data", **DEMO)
    return settings


async def train(client: httpx.AsyncClient, app: FastAPI, **body: Any) -> str:
    """Train over HTTP; then make the app pick the new model up now instead of at its next
    poll (test_hot_swap.py covers the polling)."""
    started = await client.post("/v1/models/train", json=body, headers=OPS)
    job = await wait_for_job(client, started.json()["job_id"])
    assert job["state"] == "succeeded", job
    await app.state.serving.refresh()
    assert app.state.serving.version == job["version"]
    return str(job["version"])


@pytest.fixture
async def live(trained: Settings, app: FastAPI, client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The client, with a trained model loaded by the app."""
    await train(client, app)
    return client


CATALOG = {item["item_id"]: item for item in generate(**DEMO).items}


def subject(item_id: str) -> str:
    return CATALOG[item_id]["categories"][0]


async def get(client: httpx.AsyncClient, user: str, **params: Any) -> dict[str, Any]:
    response = await client.get(f"/v1/users/{user}/recommendations", params=params, headers=READ)
    assert response.status_code == 200, response.text
    return response.json()


async def post(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/recommendations", json=body, headers=READ)
    assert response.status_code == 200, response.text
    return response.json()


def ids(result: dict[str, Any]) -> list[str]:
    return [item["item_id"] for item in result["items"]]


async def send(client: httpx.AsyncClient, *events: dict[str, Any]) -> None:
    response = await client.post("/v1/events", json={"events": list(events)}, headers=INGEST)
    assert response.status_code == 202


async def test_before_any_model_popular_still_answers(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    await send(client, *({"user_id": f"u{i}", "item_id": "c1", "type": "view"} for i in range(3)))
    await send(client, {"user_id": "u9", "item_id": "c2", "type": "view"})
    result = await get(client, "someone")
    assert result["model_version"] is None
    assert result["strategy"] == "popular"
    assert ids(result) == ["c1", "c2"]


async def test_new_enrolments_are_folded_in_on_the_next_request(live: httpx.AsyncClient) -> None:
    user = "u00007"
    before = await get(live, user, n=10)
    assert before["strategy"] == "als"
    assert before["model_version"]
    # three courses of one subject the user has not consumed
    target = subject(ids(before)[-1])
    chosen = [i for i in CATALOG if subject(i) == target and i not in ids(before)][:3]
    assert len(chosen) == 3
    await send(live, *({"user_id": user, "item_id": i, "type": "enroll"} for i in chosen))
    after = await get(live, user, n=10)
    assert after["strategy"] == "als_foldin"
    assert ids(after) != ids(before)
    assert not set(chosen) & set(ids(after))


async def test_strategies_for_new_unknown_and_anonymous_users(live: httpx.AsyncClient) -> None:
    await send(
        live,
        {"user_id": "brand-new", "item_id": "c0001", "type": "view"},
        {"user_id": "brand-new", "item_id": "c0002", "type": "enroll"},
    )
    assert (await get(live, "brand-new"))["strategy"] == "als_foldin"
    unknown = await get(live, "never-seen")
    assert unknown["strategy"] == "popular"
    assert len(unknown["items"]) == 10
    anonymous = await post(live, session_items=["c0001", "c0003"], n=5)
    assert anonymous["strategy"] == "als_foldin"
    assert anonymous["user_id"] is None
    assert len(anonymous["items"]) == 5


async def test_explanations_are_the_users_own_items(live: httpx.AsyncClient) -> None:
    user = "u00011"
    own = {e["item_id"] for e in generate(**DEMO).events if e["user_id"] == user}
    result = await get(live, user, n=5, explain="true")
    assert result["items"]
    for item in result["items"]:
        assert item["reasons"], item
        for reason in item["reasons"]:
            assert reason["item_id"] in own
            assert reason["title"] == CATALOG[reason["item_id"]]["title"]
    plain = await get(live, user, n=5)
    assert all("reasons" not in item for item in plain["items"])


async def test_filters_hold_in_every_strategy(live: httpx.AsyncClient) -> None:
    user, fresh = "u00023", "filters-fresh"
    await send(live, {"user_id": fresh, "item_id": "c0005", "type": "enroll"})
    calls = {
        "als": lambda **kw: get(live, user, **kw),
        "als_foldin": lambda **kw: get(live, fresh, **kw),
        "popular": lambda **kw: get(live, "nobody-at-all", **kw),
        "query": lambda **kw: post(live, user_id=user, query="Python", **_post_params(kw)),
        "similar": lambda **kw: _similar(live, "c0001", **kw),
    }
    # category
    for strategy, call in calls.items():
        result = await call(n=10, category="Python编程")
        assert result["items"], strategy
        assert all(subject(i) == "Python编程" for i in ids(result)), strategy
    # categories, repeated: items of either
    for strategy, call in calls.items():
        result = await call(n=20, category=["Python编程", "英语"])
        assert {subject(i) for i in ids(result)} == {"Python编程", "英语"}, strategy
    # exclude: what each strategy would say first is left out when excluded
    for strategy, call in calls.items():
        first = ids(await call(n=5))[0]
        again = ids(await call(n=5, exclude=first))
        assert first not in again, strategy
    # an item made unavailable after training, and a disliked item
    for strategy, call in calls.items():
        first = ids(await call(n=5))[0]
        item = {k: v for k, v in CATALOG[first].items() if k != "item_id"}
        put = await live.put(
            f"/v1/items/{first}", json={**item, "available": False}, headers=INGEST
        )
        assert put.status_code == 200
        assert first not in ids(await call(n=20)), strategy
    disliked_by_user = ids(await get(live, user, n=3))[0]
    await send(live, {"user_id": user, "item_id": disliked_by_user, "type": "dislike"})
    assert disliked_by_user not in ids(await get(live, user, n=20))
    assert disliked_by_user not in ids(await post(live, user_id=user, query="课程", n=20))


def _post_params(params: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"n": params.get("n", 10)}
    if "category" in params:
        category = params["category"]
        body["categories"] = category if isinstance(category, list) else [category]
    if "exclude" in params:
        body["exclude"] = [params["exclude"]]
    return body


async def _similar(client: httpx.AsyncClient, item: str, **params: Any) -> dict[str, Any]:
    response = await client.get(f"/v1/items/{item}/similar", params=params, headers=READ)
    assert response.status_code == 200, response.text
    return response.json()


async def test_chinese_query_matches_and_follows_taste(live: httpx.AsyncClient) -> None:
    query = "Python数据分析"
    python_fan, designer = "taste-python", "taste-design"
    python_items = [i for i in CATALOG if subject(i) in ("Python编程", "数据分析")][:6]
    design_items = [i for i in CATALOG if subject(i) == "UI设计"][:6]
    await send(
        live, *({"user_id": python_fan, "item_id": i, "type": "purchase"} for i in python_items[:4])
    )
    await send(
        live, *({"user_id": designer, "item_id": i, "type": "purchase"} for i in design_items[:4])
    )
    first = await post(live, user_id=python_fan, query=query, n=8)
    second = await post(live, user_id=designer, query=query, n=8)
    assert first["strategy"].startswith("query")
    for item_id in ids(first)[:3]:
        text = " ".join(
            [
                CATALOG[item_id]["title"],
                CATALOG[item_id]["description"],
                *CATALOG[item_id]["tags"],
                *CATALOG[item_id]["categories"],
            ]
        )
        assert "Python" in text or "数据分析" in text, text
    assert set(ids(first)) & set(ids(second))
    assert ids(first) != ids(second)


async def test_similar_items_and_popular(live: httpx.AsyncClient) -> None:
    similar = await _similar(live, "c0001", n=5)
    assert similar["strategy"] == "als"
    assert "c0001" not in ids(similar)
    assert len(similar["items"]) == 5
    missing = await live.get("/v1/items/nothing-like-it/similar", headers=READ)
    assert missing.status_code == 404
    popular = (await live.get("/v1/popular", params={"n": 5}, headers=READ)).json()
    assert popular["strategy"] == "popular"
    assert len(popular["items"]) == 5
    windowed = await live.get("/v1/popular", params={"n": 5, "window_days": 365}, headers=READ)
    assert windowed.status_code == 200
    assert len(windowed.json()["items"]) == 5
    too_long = await live.get("/v1/popular", params={"n": 5, "window_days": 366}, headers=READ)
    assert too_long.status_code == 422
    assert (await live.get("/v1/popular", params={"n": 0}, headers=READ)).status_code == 422
    assert (await live.get("/v1/popular", params={"n": 5})).status_code == 401


async def test_new_course_is_reachable_by_text(live: httpx.AsyncClient, app: FastAPI) -> None:
    """A course added after training has no interactions; its text makes it findable."""
    course = {"title": "Rust系统编程入门", "categories": ["Rust"], "tags": ["rust", "入门"]}
    assert (await live.put("/v1/items/c-rust", json=course, headers=INGEST)).status_code == 201
    await train(live, app, force=True)
    found = await post(live, query="Rust系统编程", n=3)
    assert "c-rust" in ids(found)
    similar = await _similar(live, "c-rust", n=3)
    assert similar["strategy"] == "content"


async def test_bad_requests(live: httpx.AsyncClient) -> None:
    bad = await live.post("/v1/recommendations", json={"n": 1000, "colour": 1}, headers=READ)
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json()["errors"]} == {"n", "colour"}
    assert (await live.get("/v1/users/u1/recommendations?n=abc", headers=READ)).status_code == 422
    assert (await live.get("/v1/users/u1/recommendations", headers=INGEST)).status_code == 403


def without_scores(result: dict[str, Any]) -> dict[str, Any]:
    """The answer with every score and reason weight left out (ids, titles, order stay)."""
    items = [
        {
            **{k: v for k, v in item.items() if k != "score"},
            **(
                {"reasons": [(r["item_id"], r["title"]) for r in item["reasons"]]}
                if "reasons" in item
                else {}
            ),
        }
        for item in result["items"]
    ]
    return {**result, "items": items}


def scores(result: dict[str, Any]) -> list[float]:
    return [
        number
        for item in result["items"]
        for number in [item["score"], *(r["weight"] for r in item.get("reasons", []))]
    ]


async def test_concurrent_requests_are_scored_in_shared_batches(
    trained: Settings, server: ServerThread
) -> None:
    """32 requests at once to a real server: some are scored together (a batch of more than
    one in recsvc_scoring_batch_size), and each gets exactly the answer it gets alone."""
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        started = await http.post("/v1/models/train", headers=OPS)
        job = await wait_for_job(http, started.json()["job_id"])
        assert job["state"] == "succeeded", job
        deadline = time.monotonic() + 30
        while (await http.get("/readyz")).json()["model"] != job["version"]:
            assert time.monotonic() < deadline, "the server did not load the model"
            await asyncio.sleep(0.1)
        # known users, one with events newer than the model (fold-in), an unknown one
        await send(http, {"user_id": "u00005", "item_id": "c0100", "type": "enroll"})
        users = [f"u{i:05d}" for i in range(1, 31)] + ["u00005", "never-seen"]
        requests = [(user, {"n": 5, "explain": i % 2 == 0}) for i, user in enumerate(users)]
        alone = [await get(http, user, **params) for user, params in requests]
        assert {r["strategy"] for r in alone} == {"als", "als_foldin", "popular"}

        before = await scrape(http)
        for _ in range(5):  # a round almost always suffices; more rounds cannot hide a bug
            together = await asyncio.gather(*(get(http, u, **params) for u, params in requests))
            assert [without_scores(r) for r in together] == [without_scores(r) for r in alone]
            for one, other in zip(together, alone, strict=True):  # float32 products: batched
                assert scores(one) == pytest.approx(scores(other), rel=1e-5, abs=1e-6)  # vs not
            after = await scrape(http)
            batches = increase(before, after, f"{BATCH_SIZE}_count")
            singles = increase(before, after, f"{BATCH_SIZE}_bucket", le="1.0")
            requests_scored = increase(before, after, f"{BATCH_SIZE}_sum")
            assert requests_scored % len(requests) == 0  # every request scored exactly once
            if batches - singles > 0:
                break
        assert batches - singles > 0, f"{batches:.0f} batches, all of size 1"
        assert batches < requests_scored


async def test_a_corrupt_activated_model_is_refused_and_the_old_one_serves(
    live: httpx.AsyncClient, app: FastAPI, trained: Settings
) -> None:
    serving = app.state.serving
    serving_before = serving.version
    newer = await train(live, app, force=True)
    # roll back to the first version, then break the newer one on disk and activate it behind
    # the API's back (as another replica or an operator with SQL could)
    assert (
        await live.post(f"/v1/models/{serving_before}/activate", headers=OPS)
    ).status_code == 200
    await serving.refresh()
    assert serving.version == serving_before
    (trained.models_dir / newer / "factors.user.npy").write_bytes(b"garbage")
    await activate_behind_the_api(trained.database_url, newer)
    failures = metrics.ARTIFACT_LOAD_FAILURES._value.get()
    await serving.refresh()
    assert serving.version == serving_before
    assert metrics.ARTIFACT_LOAD_FAILURES._value.get() == failures + 1
    ready = (await live.get("/readyz")).json()
    assert ready["model"] == serving_before
    assert newer in ready["model_error"]
    assert (await get(live, "u00003"))["model_version"] == serving_before

"""Prometheus metrics count what happened: exact increments, read from /metrics as a scraper would.

The counters live in the process-wide registry and other tests also move them, so every test
reads them before and after and asserts on the difference.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from conftest import INGEST, OPS, READ, events
from recsvc.config import Settings
from test_models import load_demo

# (sample name, labels) -> value
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    """Every sample of /metrics, keyed by sample name and labels."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when it has not been created yet (a labelled child appears on its
    first increment)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def increase(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


EVENTS = "recsvc_events_total"
REQUESTS = "recsvc_http_requests_total"
RECOMMENDATIONS = "recsvc_recommendations_total"
LATENCY_COUNT = "recsvc_http_request_duration_seconds_count"


async def test_event_counters_count_accepted_duplicates_and_rejected(
    client: httpx.AsyncClient,
) -> None:
    before = await scrape(client)

    first = await client.post("/v1/events", json={"events": events(5)}, headers=INGEST)
    assert first.json() == {"accepted": 5, "duplicates": 0}
    # the same 5 again (a retry) plus 2 new ones
    again = events(5) + events(2, prefix="other-")
    second = await client.post("/v1/events", json={"events": again}, headers=INGEST)
    assert second.json() == {"accepted": 2, "duplicates": 5}
    bad = await client.post(
        "/v1/events", json={"events": events(3, type="no-such-type")}, headers=INGEST
    )
    assert bad.status_code == 422
    # one bad event refuses the whole batch: both are counted, each under its own type
    mixed = events(1, prefix="m-", type="enroll") + events(1, prefix="n-", type="bogus")
    assert (await client.post("/v1/events", json={"events": mixed}, headers=INGEST)).is_error

    after = await scrape(client)
    assert increase(before, after, EVENTS, type="view", outcome="accepted") == 7
    assert increase(before, after, EVENTS, type="view", outcome="duplicate") == 5
    assert increase(before, after, EVENTS, type="unknown", outcome="rejected") == 4
    assert increase(before, after, EVENTS, type="enroll", outcome="rejected") == 1
    assert increase(before, after, EVENTS, type="enroll", outcome="accepted") == 0
    events_route = {"method": "POST", "route": "/v1/events"}
    assert increase(before, after, REQUESTS, **events_route, status="202") == 2
    assert increase(before, after, REQUESTS, **events_route, status="422") == 2
    assert increase(before, after, LATENCY_COUNT, **events_route) == 4


async def test_recommendations_are_counted_by_strategy_and_route(
    client: httpx.AsyncClient,
) -> None:
    await client.post(
        "/v1/events",
        json={"events": [{"user_id": f"u{i}", "item_id": "c1", "type": "view"} for i in range(3)]},
        headers=INGEST,
    )
    before = await scrape(client)

    for user in ("a", "b", "c", "d"):
        response = await client.get(f"/v1/users/{user}/recommendations", headers=READ)
        assert response.json()["strategy"] == "popular"
    for _ in range(2):
        response = await client.post("/v1/recommendations", json={"n": 3}, headers=READ)
        assert response.json()["strategy"] == "popular"
    forbidden = await client.get("/v1/users/a/recommendations", headers=INGEST)
    assert forbidden.status_code == 403
    missing = await client.get("/v1/no-such-route", headers=READ)
    assert missing.status_code == 404

    after = await scrape(client)
    # 6 lists served; the refused request made none
    assert increase(before, after, RECOMMENDATIONS, strategy="popular") == 6
    assert increase(before, after, RECOMMENDATIONS, strategy="als") == 0
    user_route = {"method": "GET", "route": "/v1/users/{user_id}/recommendations"}
    assert increase(before, after, REQUESTS, **user_route, status="200") == 4
    assert increase(before, after, REQUESTS, **user_route, status="403") == 1
    post_route = {"method": "POST", "route": "/v1/recommendations"}
    assert increase(before, after, REQUESTS, **post_route, status="200") == 2
    # by route template, never the raw path
    assert increase(before, after, REQUESTS, method="GET", route="unmatched", status="404") == 1
    assert not any(
        dict(labels).get("route") == "/v1/users/a/recommendations" for _, labels in after
    )
    # the first scrape is counted too, once it has been answered
    assert increase(before, after, REQUESTS, method="GET", route="/metrics", status="200") == 1


async def test_model_training_and_fold_in_gauges(
    client: httpx.AsyncClient, app: FastAPI, settings: Settings, tmp_path: Path
) -> None:
    """What /metrics says about the deployment matches the database: the active model's age
    and ndcg@10, training jobs by state, and the version this worker serves."""
    await asyncio.to_thread(load_demo, settings, tmp_path / "data", n_users=300, n_items=80)
    started = await client.post("/v1/models/train", json={}, headers=OPS)
    assert started.status_code == 202
    job_url = f"/v1/models/jobs/{started.json()['job_id']}"
    for _ in range(600):
        job = (await client.get(job_url, headers=OPS)).json()
        if job["state"] in ("succeeded", "failed"):
            break
        await asyncio.sleep(0.1)
    assert job["state"] == "succeeded"
    await app.state.serving.refresh()
    active = (await client.get("/v1/models/active", headers=OPS)).json()
    user = (await client.get("/v1/users/u00001/recommendations", headers=READ)).json()
    assert user["strategy"] == "als"
    before = await scrape(client)
    await client.post(
        "/v1/events",
        json={"events": [{"user_id": "u00001", "item_id": "c0002", "type": "view"}]},
        headers=INGEST,
    )
    fresh = (await client.get("/v1/users/u00001/recommendations", headers=READ)).json()
    assert fresh["strategy"] == "als_foldin"

    after = await scrape(client)
    assert increase(before, after, "recsvc_fold_ins_total") == 1
    assert value(after, "recsvc_training_jobs", state="succeeded") == 1
    assert value(after, "recsvc_training_last_duration_seconds") > 0
    assert value(after, "recsvc_model_ndcg_at_10") == pytest.approx(active["metrics"]["ndcg@10"])
    assert 0 <= value(after, "recsvc_model_age_seconds") < 600
    assert value(after, "recsvc_model_info", version=active["version"]) == 1
    assert value(after, "recsvc_database_up") == 1
    assert ("recsvc_db_pool_connections_in_use", frozenset({("pool", "sqlalchemy")})) in after
    assert ("recsvc_fresh_users", frozenset()) in after

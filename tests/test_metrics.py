"""Prometheus metrics count what happened: exact increments, read from /metrics as a scraper would.

The counters live in the process-wide registry and other tests also move them, so every test
reads them before and after and asserts on the difference.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from conftest import INGEST, READ, events

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


ACCEPTED = "recsvc_events_accepted_total"
DUPLICATES = "recsvc_events_duplicate_total"
REJECTED = "recsvc_event_batches_rejected_total"
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

    after = await scrape(client)
    assert increase(before, after, ACCEPTED) == 7
    assert increase(before, after, DUPLICATES) == 5
    assert increase(before, after, REJECTED) == 1
    events_route = {"method": "POST", "route": "/v1/events"}
    assert increase(before, after, REQUESTS, **events_route, status="202") == 2
    assert increase(before, after, REQUESTS, **events_route, status="422") == 1
    assert increase(before, after, LATENCY_COUNT, **events_route) == 3


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

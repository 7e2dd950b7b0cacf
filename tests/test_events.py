"""POST /v1/events: validation, idempotency, all-or-nothing batches, auth."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from conftest import INGEST, OPS, READ, ServerThread, events, scalar


async def count(database_url: str) -> int:
    return int(await scalar(database_url, "SELECT count(*) FROM events"))


async def test_batch_of_1000_is_stored_once(client: httpx.AsyncClient, database_url: str) -> None:
    batch = {"events": events(1000)}
    first = await client.post("/v1/events", json=batch, headers=INGEST)
    assert first.status_code == 202
    assert first.json() == {"accepted": 1000, "duplicates": 0}
    again = await client.post("/v1/events", json=batch, headers=INGEST)
    assert again.status_code == 202
    assert again.json() == {"accepted": 0, "duplicates": 1000}
    assert await count(database_url) == 1000


async def test_partly_repeated_batch_counts_each(
    client: httpx.AsyncClient, database_url: str
) -> None:
    await client.post("/v1/events", json={"events": events(10)}, headers=INGEST)
    mixed = events(10) + events(5, prefix="new")
    response = await client.post("/v1/events", json={"events": mixed}, headers=INGEST)
    assert response.json() == {"accepted": 5, "duplicates": 10}
    # the same id twice inside one batch is stored once
    twice = events(1, prefix="dup") * 2
    response = await client.post("/v1/events", json={"events": twice}, headers=INGEST)
    assert response.json() == {"accepted": 1, "duplicates": 1}
    assert await count(database_url) == 16


async def test_events_without_id_are_all_stored(
    client: httpx.AsyncClient, database_url: str
) -> None:
    batch = [{"user_id": "u", "item_id": "c", "type": "view"}] * 3
    response = await client.post("/v1/events", json={"events": batch}, headers=INGEST)
    assert response.json() == {"accepted": 3, "duplicates": 0}
    assert await count(database_url) == 3


async def test_concurrent_identical_batches_store_once(
    server: ServerThread, database_url: str
) -> None:
    """Two producers retrying the same batch at the same moment, over real HTTP."""
    batch = {"events": events(1000, prefix="race")}
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=30) as a,
        httpx.AsyncClient(base_url=server.url, timeout=30) as b,
    ):
        results = await asyncio.gather(
            a.post("/v1/events", json=batch, headers=INGEST),
            b.post("/v1/events", json=batch, headers=INGEST),
        )
    assert [r.status_code for r in results] == [202, 202]
    bodies = sorted((r.json()["accepted"], r.json()["duplicates"]) for r in results)
    assert sum(accepted for accepted, _ in bodies) == 1000
    assert sum(dup for _, dup in bodies) == 1000
    assert await count(database_url) == 1000


def _future(hours: float) -> str:
    return (datetime.now(UTC) + timedelta(hours=hours)).isoformat()


@pytest.mark.parametrize(
    ("field", "value", "expected_loc"),
    [
        ("type", "teleport", ["events", 7, "type"]),
        ("user_id", None, ["events", 7, "user_id"]),  # None here means "missing"
        ("item_id", "", ["events", 7, "item_id"]),
        ("user_id", "u" * 129, ["events", 7, "user_id"]),
        ("timestamp", _future(1), ["events", 7, "timestamp"]),
        ("context", "not-an-object", ["events", 7, "context"]),
        ("context", {"blob": "x" * 5000}, ["events", 7, "context"]),
        ("timestamp", "2026-11-28T10:00:00", ["events", 7, "timestamp"]),  # no offset
        ("value", "lots", ["events", 7, "value"]),
    ],
)
async def test_invalid_eighth_event_rejects_whole_batch(
    client: httpx.AsyncClient,
    database_url: str,
    field: str,
    value: object,
    expected_loc: list[object],
) -> None:
    batch = events(20)
    if value is None:
        del batch[7][field]
    else:
        batch[7][field] = value
    response = await client.post("/v1/events", json={"events": batch}, headers=INGEST)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert [e["loc"] for e in problem["errors"]] == [expected_loc]
    assert problem["errors"][0]["field"] == f"events[7].{field}"
    assert await count(database_url) == 0


async def test_unknown_type_lists_allowed_types(client: httpx.AsyncClient) -> None:
    batch = events(8)
    batch[7]["type"] = "teleport"
    response = await client.post("/v1/events", json={"events": batch}, headers=INGEST)
    message = response.json()["errors"][0]["msg"]
    for allowed in ("view", "enroll", "purchase", "complete", "rate", "dislike"):
        assert allowed in message


async def test_rate_needs_a_value_from_1_to_5(client: httpx.AsyncClient) -> None:
    for value in (None, 0, 6):
        event = {"user_id": "u", "item_id": "c", "type": "rate", "value": value}
        response = await client.post("/v1/events", json={"events": [event]}, headers=INGEST)
        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "events[0].value"
    ok = {"user_id": "u", "item_id": "c", "type": "rate", "value": 4}
    assert (
        await client.post("/v1/events", json={"events": [ok]}, headers=INGEST)
    ).status_code == 202


async def test_timestamp_a_little_ahead_is_clock_skew(client: httpx.AsyncClient) -> None:
    event = {"user_id": "u", "item_id": "c", "type": "view", "timestamp": _future(0.03)}
    response = await client.post("/v1/events", json={"events": [event]}, headers=INGEST)
    assert response.status_code == 202


async def test_batch_size_limits(client: httpx.AsyncClient, database_url: str) -> None:
    too_many = await client.post("/v1/events", json={"events": events(1001)}, headers=INGEST)
    assert too_many.status_code == 422
    assert too_many.json()["errors"][0]["loc"] == ["events"]
    empty = await client.post("/v1/events", json={"events": []}, headers=INGEST)
    assert empty.status_code == 422
    assert await count(database_url) == 0


@pytest.mark.parametrize("body", [b"not json", b'{"events": [', b"[]", b"", b'{"evnts": []}'])
async def test_malformed_bodies(client: httpx.AsyncClient, database_url: str, body: bytes) -> None:
    response = await client.post(
        "/v1/events", content=body, headers={**INGEST, "content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert "Traceback" not in response.text
    assert await count(database_url) == 0


async def test_keys_and_scopes(client: httpx.AsyncClient, database_url: str) -> None:
    batch = {"events": events(3)}
    assert (await client.post("/v1/events", json=batch)).status_code == 401
    wrong = await client.post("/v1/events", json=batch, headers={"X-API-Key": "k-nobody-knows"})
    assert wrong.status_code == 401
    assert (await client.post("/v1/events", json=batch, headers=READ)).status_code == 403
    assert await count(database_url) == 0
    assert (await client.post("/v1/events", json=batch, headers=INGEST)).status_code == 202
    bearer = {"Authorization": "Bearer k-ops-secret"}
    batch2 = {"events": events(3, prefix="b")}
    assert (await client.post("/v1/events", json=batch2, headers=bearer)).status_code == 202
    assert await count(database_url) == 6


async def test_event_types_are_listed(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/event-types", headers=OPS)
    assert response.status_code == 200
    body = response.json()
    assert body["types"]["purchase"] == 5.0
    assert body["rating_type"] == "rate"
    assert body["negative_types"] == ["dislike"]


async def test_stored_fields(client: httpx.AsyncClient, database_url: str) -> None:
    event = {
        "event_id": "x1",
        "user_id": "学员-1",
        "item_id": "课程-9",
        "type": "rate",
        "value": 4.5,
        "timestamp": "2026-11-01T08:00:00+08:00",
        "context": {"channel": "chatbot", "session_id": "s1"},
    }
    response = await client.post("/v1/events", json={"events": [event]}, headers=INGEST)
    assert response.status_code == 202
    assert await scalar(database_url, "SELECT user_id FROM events") == "学员-1"
    assert await scalar(database_url, "SELECT value FROM events") == 4.5
    occurred = await scalar(database_url, "SELECT occurred_at FROM events")
    if isinstance(occurred, str):  # SQLite keeps datetimes as text
        occurred = datetime.fromisoformat(occurred)
    as_utc = occurred.replace(tzinfo=UTC) if occurred.tzinfo is None else occurred
    assert as_utc == datetime(2026, 11, 1, 0, 0, tzinfo=UTC)

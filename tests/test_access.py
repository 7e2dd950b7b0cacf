"""Every response carries X-Request-ID (errors included), problem documents carry it as
`request_id`, and the access line is one JSON object that never holds the API key."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

from conftest import INGEST, OPS, READ, events
from recsvc import logs
from recsvc.app import create_app
from recsvc.config import Settings

UNREACHABLE_DB = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"


@pytest.fixture
def access_lines() -> Iterator[io.StringIO]:
    """The recsvc.access logger formatted as `recsvc serve` formats it (JSON), into a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    formatter = logging.config.DictConfigurator(logs.config("json")).configure_formatter(
        logs.config("json")["formatters"]["json"]
    )
    handler.setFormatter(formatter)
    logger = logging.getLogger("recsvc.access")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_every_status_carries_the_request_id(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    small = settings.model_copy(update={"max_body_bytes": 1024})
    app = create_app(small)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://recsvc") as limited,
    ):
        too_large = await limited.post(
            "/v1/events", content=b"x" * 5000, headers={**INGEST, "X-Request-ID": "big-1"}
        )
    responses = {
        401: await client.get("/v1/popular", headers={"X-Request-ID": "no-key-1"}),
        404: await client.get("/v1/items/nope", headers={**READ, "X-Request-ID": "missing-1"}),
        413: too_large,
        422: await client.post(
            "/v1/events",
            json={"events": events(1, type="bogus")},
            headers={**INGEST, "X-Request-ID": "bad-1"},
        ),
        200: await client.get("/healthz", headers={"X-Request-ID": "ok-1"}),
    }
    expected = {401: "no-key-1", 404: "missing-1", 413: "big-1", 422: "bad-1", 200: "ok-1"}
    for status, response in responses.items():
        assert response.status_code == status
        assert response.headers["X-Request-ID"] == expected[status]
        if status != 200:
            assert response.json()["request_id"] == expected[status]


async def test_503_and_500_carry_it_too(settings: Settings) -> None:
    """The database unreachable (503 with Retry-After) and an unexpected error (500, no
    trace): both answered by the access layer, with the id."""
    app = create_app(settings.model_copy(update={"database_url": UNREACHABLE_DB}))

    async def broken() -> None:
        raise RuntimeError("secret internals")

    app.add_api_route("/boom", broken)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://recsvc") as c,
    ):
        down = await c.post(
            "/v1/events", json={"events": events(1)}, headers={**INGEST, "X-Request-ID": "d-1"}
        )
        ready = await c.get("/readyz")
        boom = await c.get("/boom", headers={"X-Request-ID": "b-1"})
    assert down.status_code == 503 and down.headers["Retry-After"]
    assert down.headers["X-Request-ID"] == "d-1" and down.json()["request_id"] == "d-1"
    assert ready.status_code == 503 and len(ready.headers["X-Request-ID"]) == 32
    assert boom.status_code == 500 and boom.headers["X-Request-ID"] == "b-1"
    assert boom.json()["request_id"] == "b-1"
    assert "secret internals" not in boom.text and "Traceback" not in boom.text


@pytest.mark.parametrize("given", ["", "x" * 129, "tab\there", "naïve"])
async def test_an_unusable_id_is_replaced(client: httpx.AsyncClient, given: str) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": given.encode()})
    generated = response.headers["X-Request-ID"]
    assert generated != given and len(generated) == 32 and generated.isalnum()


async def test_ids_are_generated_and_distinct(client: httpx.AsyncClient) -> None:
    ids = {(await client.get("/healthz")).headers["X-Request-ID"] for _ in range(5)}
    assert len(ids) == 5


async def test_the_access_line_is_one_json_object_without_the_key(
    client: httpx.AsyncClient, app: FastAPI, access_lines: io.StringIO
) -> None:
    secret = OPS["X-API-Key"]
    await client.post("/v1/events", json={"events": events(3)}, headers=INGEST)
    response = await client.get(
        "/v1/users/u1/recommendations?n=3", headers={**OPS, "X-Request-ID": "chat-turn-7"}
    )
    assert response.status_code == 200
    await client.get("/v1/popular", headers={"Authorization": f"Bearer {secret}"})

    text = access_lines.getvalue()
    assert secret not in text and "k-producer-secret" not in text
    assert '"c1"' not in text  # no event payloads
    records = lines(access_lines)
    line = next(r for r in records if r["request_id"] == "chat-turn-7")
    assert line["route"] == "/v1/users/{user_id}/recommendations"
    assert line["method"] == "GET" and line["status"] == 200
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] > 0
    assert line["strategy"] == response.json()["strategy"]
    assert "model_version" in line
    assert line["logger"] == "recsvc.access" and line["level"] == "INFO" and line["time"]
    # the same key, by header or bearer, has the same short fingerprint
    assert line["key"] == records[-1]["key"] and str(line["key"]).startswith("k:")
    assert len(str(line["key"])) == 10
    assert records[0]["key"] != line["key"]  # another key, another fingerprint

"""API fuzzing with schemathesis against a real uvicorn server and the committed openapi.yaml.

The server uses the session's test database: SQLite by default, PostgreSQL when
RECSVC_TEST_DATABASE_URL is set (as in CI). Deterministic: a fixed seed, hypothesis derandomized,
a bounded number of examples per operation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import text
from sqlalchemy.pool import NullPool

from conftest import KEYS, TABLES, ServerThread
from recsvc import db
from recsvc.config import Settings

SEED = 20261201
MAX_EXAMPLES = 25
# Stateful: scenarios of linked calls (PUT item -> GET/DELETE/similar, PUT user -> GET/DELETE).
STATEFUL_SCENARIOS = 15
STATEFUL_STEPS = 6
SPEC = Path(__file__).resolve().parents[2] / "openapi.yaml"
ALL_SCOPES = {"X-API-Key": "k-ops-secret"}

schema = schemathesis.openapi.from_path(
    SPEC,
    config=schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "mode": "all"},
        }
    ),
)


@pytest.fixture(scope="module")
def fuzz_server(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    settings = Settings(
        database_url=database_url, api_keys=KEYS, models_dir=tmp_path_factory.mktemp("models")
    )
    with ServerThread(settings) as running:
        yield running


def problem_documents(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool:
    """Every 4xx and 5xx the application answers is an RFC 9457 problem document
    (application/problem+json)."""
    if response.status_code < 400 or refused_by_the_http_parser(response):
        return True
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/problem+json"), content_type
    body = response.json()
    assert body["status"] == response.status_code, body
    assert {"type", "title", "detail"} <= body.keys(), body
    return True


async def empty_tables(database_url: str) -> None:
    engine = db.make_engine(database_url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            for table in TABLES:
                await conn.execute(text(f"DELETE FROM {table}"))  # constants
    finally:
        await engine.dispose()


def refused_by_the_http_parser(response: schemathesis.Response) -> bool:
    """uvicorn's own answer to a request its HTTP parser cannot read (seen for request lines of
    hundreds of kilobytes): a plain-text 400 sent before the application sees the request,
    documented in docs/design.md section 2."""
    return response.status_code == 400 and response.text == "Invalid HTTP request received."


def app_status_code_conformance(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    if refused_by_the_http_parser(response):
        return True
    return status_code_conformance(ctx, response, case)


def app_content_type_conformance(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    if refused_by_the_http_parser(response):
        return True
    return content_type_conformance(ctx, response, case)


CHECKS = [
    not_a_server_error,
    app_status_code_conformance,
    app_content_type_conformance,
    response_schema_conformance,
    problem_documents,
]


@schema.parametrize()
def test_api(case: schemathesis.Case, fuzz_server: ServerThread) -> None:
    """Every operation, positive and negative inputs, with the all-scopes key."""
    case.call_and_validate(base_url=fuzz_server.url, headers=ALL_SCOPES, checks=CHECKS)


def test_stateful_links(fuzz_server: ServerThread, database_url: str) -> None:
    """Sequences that feed one response into the next call, with links schemathesis infers
    from the document (PUT item -> GET/DELETE/similar, PUT user -> GET/DELETE/recommendations).
    Each scenario starts from empty tables, so that a scenario's responses depend on its
    inputs only (hypothesis requires that). Training is left out: when a job still runs
    decides 202 or 409, which no scenario controls."""
    linked = schema.include(tag=["catalog", "recommend"])

    class Workflow(linked.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            asyncio.run(empty_tables(database_url))

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": fuzz_server.url, "headers": ALL_SCOPES}

        def validate_response(
            self, response: schemathesis.Response, case: schemathesis.Case, **kwargs: Any
        ) -> None:
            case.validate_response(response, checks=CHECKS, headers=ALL_SCOPES)

    Workflow.run(
        settings=hypothesis.settings(
            max_examples=STATEFUL_SCENARIOS,
            stateful_step_count=STATEFUL_STEPS,
            derandomize=True,
            # No replay or shrinking: server state makes a replayed scenario draw differently.
            phases=[hypothesis.Phase.generate],
            database=None,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
    )


async def test_regression_context_integer_beyond_64_bits(client: httpx.AsyncClient) -> None:
    """Found by test_api: orjson cannot serialise such an integer, which was a 500."""
    event = {"user_id": "u1", "item_id": "c1", "type": "view", "context": {"n": [2**64]}}
    response = await client.post("/v1/events", headers=ALL_SCOPES, json={"events": [event]})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [e["type"] for e in response.json()["errors"]] == ["context_invalid"]
    assert response.json()["errors"][0]["field"] == "events[0].context"

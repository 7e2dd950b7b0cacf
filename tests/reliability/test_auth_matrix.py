"""Every operation in openapi.yaml against every kind of credential: 401/403 exactly when
docs/design.md section 2 says, and never otherwise."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI

from conftest import KEYS
from recsvc import auth
from recsvc.app import create_app
from recsvc.config import Settings

SPEC = Path(__file__).resolve().parents[2] / "openapi.yaml"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}

# operationId -> the scope docs/design.md section 2 requires (None: no key needed).
REQUIRED_SCOPE: dict[str, str | None] = {
    "healthz": None,
    "readyz": None,
    "metrics": None,  # admin when RECSVC_METRICS_REQUIRE_KEY=true: test_metrics_key_when_required
    "ingest_events": "ingest",
    "event_types": "read",
    "put_item": "ingest",
    "get_item": "read",
    "delete_item": "ingest",
    "put_items": "ingest",
    "put_user": "ingest",
    "get_user": "read",
    "delete_user": "admin",
    "train_model": "admin",
    "get_training_job": "read",
    "list_models": "read",
    "get_active_model": "read",
    "activate_model": "admin",
    "recommend_for_user": "read",
    "recommend": "read",
    "similar_items": "read",
    "popular_items": "read",
    "get_user_profile": "read",
    "list_segments": "read",
    "list_segment_users": "read",
    "item_audience": "read",
    "topic_audience": "read",
    "stats_overview": "read",
    "list_user_events": "read",
}

# Plausible path parameters and minimal valid bodies, so an authorised request is not refused
# for its input (auth runs first anyway: test_auth_comes_before_input_validation).
PATH_PARAMS = {
    "item_id": "c1",
    "user_id": "u1",
    "job_id": "no-such-job",
    "version": "v-none",
    "segment_id": "0",
}
BODIES: dict[str, Any] = {
    "ingest_events": {"events": [{"user_id": "u1", "item_id": "c1", "type": "view"}]},
    "put_item": {"title": "Python for data analysis"},
    "put_items": {"items": [{"item_id": "c2", "title": "SQL basics"}]},
    "put_user": {"attributes": {"level": "beginner"}},
    "train_model": {"force": False},
    "recommend": {"user_id": "u1", "n": 3},
    "topic_audience": {"categories": ["编程"], "n": 5},
}

SINGLE_SCOPE_KEYS = {"admin": "k-admin-only", "read": "k-read-only", "ingest": "k-ingest-only"}
MATRIX_KEYS = {**KEYS, **{key: [scope] for scope, key in SINGLE_SCOPE_KEYS.items()}}
UNKNOWN_KEY = "k-nobody-has-this"


def operations() -> list[tuple[str, str, str, dict[str, Any]]]:
    """(operationId, METHOD, path, operation object) for every operation of openapi.yaml."""
    document = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    found = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                found.append((operation["operationId"], method.upper(), path, operation))
    return found


OPERATIONS = operations()


def test_every_operation_has_a_scope_rule() -> None:
    ids = [op_id for op_id, *_ in OPERATIONS]
    assert len(ids) == len(set(ids)), "duplicate operationId"
    assert set(REQUIRED_SCOPE) == set(ids)


def test_every_required_body_has_an_example() -> None:
    needs_body = {
        op_id for op_id, _, _, op in OPERATIONS if op.get("requestBody", {}).get("required")
    }
    assert needs_body <= set(BODIES)


def test_the_document_declares_security_where_a_key_is_needed() -> None:
    for op_id, _, _, operation in OPERATIONS:
        if REQUIRED_SCOPE[op_id] is not None:
            assert operation.get("security"), op_id
            assert {"401", "403"} <= set(operation["responses"]), op_id


@pytest.fixture
async def matrix_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    application = create_app(settings.model_copy(update={"api_keys": MATRIX_KEYS}))
    async with application.router.lifespan_context(application):
        yield _client(application)


def _client(application: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://recsvc")


async def send(
    client: httpx.AsyncClient, method: str, path: str, op_id: str, headers: dict[str, str]
) -> httpx.Response:
    url = path.format(**PATH_PARAMS)
    body = BODIES.get(op_id)
    return await client.request(method, url, headers=headers, json=body)


def assert_problem(response: httpx.Response, status: int, what: str) -> None:
    assert response.status_code == status, (what, response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json"), what
    assert response.json()["status"] == status, what


def credentials() -> list[tuple[str, dict[str, str], set[str] | None]]:
    """(label, headers, scopes the key carries; None: no or unknown key)."""
    cases: list[tuple[str, dict[str, str], set[str] | None]] = [
        ("no key", {}, None),
        ("unknown X-API-Key", {"X-API-Key": UNKNOWN_KEY}, None),
        ("unknown Bearer", {"Authorization": f"Bearer {UNKNOWN_KEY}"}, None),
    ]
    for scope, key in SINGLE_SCOPE_KEYS.items():
        cases.append((f"{scope}-only X-API-Key", {"X-API-Key": key}, {scope}))
        cases.append((f"{scope}-only Bearer", {"Authorization": f"Bearer {key}"}, {scope}))
    return cases


@pytest.mark.parametrize(
    ("op_id", "method", "path"),
    [(op_id, method, path) for op_id, method, path, _ in OPERATIONS],
    ids=[op_id for op_id, *_ in OPERATIONS],
)
async def test_auth_matrix(
    matrix_client: httpx.AsyncClient, op_id: str, method: str, path: str
) -> None:
    required = REQUIRED_SCOPE[op_id]
    async with matrix_client as client:
        for label, headers, scopes in credentials():
            what = f"{method} {path} with {label}"
            response = await send(client, method, path, op_id, headers)
            if required is None:
                assert response.status_code not in (401, 403), (what, response.text)
                assert response.status_code < 500, (what, response.text)
            elif scopes is None:
                assert_problem(response, 401, what)
                assert response.headers["www-authenticate"] == "Bearer", what
            elif required not in scopes:
                assert_problem(response, 403, what)
                assert "www-authenticate" not in response.headers, what
            else:
                assert response.status_code not in (401, 403), (what, response.text)
                assert response.status_code < 500, (what, response.text)


async def test_auth_comes_before_input_validation(matrix_client: httpx.AsyncClient) -> None:
    """A bad body, path or query gets 401/403 without a fitting key, and 422 only with one."""
    bad: list[tuple[str, str, dict[str, Any], str]] = [
        ("POST", "/v1/events", {"content": b"{not json"}, "k-read-only"),
        ("PUT", "/v1/items/c1", {"json": {"unknown_field": 1}}, "k-read-only"),
        ("GET", "/v1/users/u1/recommendations?n=0", {}, "k-ingest-only"),
        ("GET", "/v1/items/" + "x" * 200, {}, "k-ingest-only"),
    ]
    async with matrix_client as client:
        for method, url, body, lacking in bad:
            what = f"{method} {url[:40]}"
            assert_problem(await client.request(method, url, **body), 401, what)
            lacks = {"X-API-Key": lacking}
            assert_problem(await client.request(method, url, headers=lacks, **body), 403, what)
            fits = {"X-API-Key": "k-ops-secret"}
            assert_problem(await client.request(method, url, headers=fits, **body), 422, what)


async def test_x_api_key_wins_over_bearer(matrix_client: httpx.AsyncClient) -> None:
    async with matrix_client as client:
        both = {"X-API-Key": UNKNOWN_KEY, "Authorization": "Bearer k-read-only"}
        assert_problem(await client.get("/v1/event-types", headers=both), 401, "unknown wins")
        both = {"X-API-Key": "k-read-only", "Authorization": f"Bearer {UNKNOWN_KEY}"}
        assert (await client.get("/v1/event-types", headers=both)).status_code == 200


async def test_metrics_key_when_required(settings: Settings) -> None:
    strict = settings.model_copy(update={"api_keys": MATRIX_KEYS, "metrics_require_key": True})
    application = create_app(strict)
    async with application.router.lifespan_context(application), _client(application) as client:
        assert_problem(await client.get("/metrics"), 401, "no key")
        assert_problem(await client.get("/metrics", headers={"X-API-Key": UNKNOWN_KEY}), 401, "?")
        for scope in ("read", "ingest"):
            key = {"Authorization": f"Bearer {SINGLE_SCOPE_KEYS[scope]}"}
            assert_problem(await client.get("/metrics", headers=key), 403, scope)
        admin = await client.get("/metrics", headers={"X-API-Key": "k-admin-only"})
        assert admin.status_code == 200
        # healthz and readyz stay open
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200


def test_key_comparison_is_constant_time_by_construction(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scopes_of compares the presented key with every configured key through
    hmac.compare_digest, whether it matches the first, the last, or none."""
    configured = settings.model_copy(update={"api_keys": MATRIX_KEYS})
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    keys = list(MATRIX_KEYS)
    for presented in [keys[0], keys[-1], UNKNOWN_KEY, keys[0][:-1], keys[0] + "x", "k"]:
        calls.clear()
        scopes = auth.scopes_of(presented, configured)
        assert len(calls) == len(keys), presented
        assert sorted(b for _, b in calls) == sorted(k.encode() for k in keys)
        assert all(a == presented.encode() for a, _ in calls)
        expected = set(MATRIX_KEYS[presented]) if presented in MATRIX_KEYS else None
        assert scopes == expected


async def test_every_request_compares_every_key(
    matrix_client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bytes] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    async with matrix_client as client:
        for key in [next(iter(MATRIX_KEYS)), UNKNOWN_KEY]:
            calls.clear()
            await client.get("/v1/event-types", headers={"X-API-Key": key})
            assert len(calls) == len(MATRIX_KEYS), key

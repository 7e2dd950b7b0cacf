"""recsvc_client (clients/python), the typed client: every operation of openapi.yaml has a method
on both clients, its models mirror the spec's schemas, retries store events exactly once, results
are typed and errors carry the problem and the request id. Against a real server on a real port
(conftest's `server`), and against scripted transports for the retry timing."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import recsvc_client
import yaml
from pydantic import BaseModel
from recsvc_client import (
    AsyncRecsvcClient,
    Audience,
    AudienceMember,
    Conflict,
    Forbidden,
    Health,
    IngestResult,
    ItemOut,
    ItemWithId,
    JobOut,
    ModelVersionList,
    ModelVersionOut,
    NotFound,
    Profile,
    Readiness,
    Reason,
    Recommendations,
    RecommendedItem,
    RecsvcClient,
    RecsvcConnectionError,
    RecsvcError,
    SegmentList,
    SegmentMembers,
    SegmentOut,
    Unauthorized,
    Unavailable,
    UpsertResult,
    UserOut,
    ValidationFailed,
)
from recsvc_client import client as client_module
from recsvc_client import models as client_models

from conftest import INGEST, OPS, READ, ServerThread, rows, scalar
from recsvc.config import Settings

ADMIN_KEY, READ_KEY, INGEST_KEY = OPS["X-API-Key"], READ["X-API-Key"], INGEST["X-API-Key"]
SPEC = yaml.safe_load((Path(__file__).parents[1] / "openapi.yaml").read_text(encoding="utf-8"))
SCHEMAS: dict[str, dict[str, Any]] = SPEC["components"]["schemas"]
OPERATIONS: dict[str, dict[str, Any]] = {
    operation["operationId"]: operation
    for methods in SPEC["paths"].values()
    for operation in methods.values()
}
FAST = {"backoff": 0.0, "max_retry_after": 0.0}  # retries without waiting


def count_events(database_url: str) -> int:
    return int(asyncio.run(scalar(database_url, "SELECT count(*) FROM events")))


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits between attempts, recorded instead of slept."""
    recorded: list[float] = []

    async def async_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(client_module, "_sleep", recorded.append)
    monkeypatch.setattr(client_module, "_async_sleep", async_sleep)
    return recorded


# --- 1. every operation of openapi.yaml is a method, with the spec's arguments ------------------


def test_the_operation_map_is_the_spec() -> None:
    assert len(OPERATIONS) >= 21
    assert set(recsvc_client.OPERATIONS) == set(OPERATIONS)


def test_every_operation_is_a_method_of_both_clients() -> None:
    """A new route in openapi.yaml without a client method fails here."""
    missing = []
    for operation_id in sorted(OPERATIONS):
        name = recsvc_client.OPERATIONS.get(operation_id, operation_id)
        sync_method = getattr(RecsvcClient, name, None)
        async_method = getattr(AsyncRecsvcClient, name, None)
        if not callable(sync_method) or inspect.iscoroutinefunction(sync_method):
            missing.append(f"RecsvcClient.{name} ({operation_id})")
        if not inspect.iscoroutinefunction(async_method):
            missing.append(f"async AsyncRecsvcClient.{name} ({operation_id})")
    assert missing == []


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return SCHEMAS[ref.rsplit("/", 1)[-1]] if ref else schema


def expected_arguments(operation: dict[str, Any]) -> dict[str, tuple[str, bool, Any]]:
    """name -> (where, required, default) of every argument the spec gives the operation: path
    and query parameters, and the properties of its JSON body."""
    out: dict[str, tuple[str, bool, Any]] = {}
    for parameter in operation.get("parameters", []):
        schema = parameter["schema"]
        out[parameter["name"]] = (
            parameter["in"],
            parameter.get("required", False),
            schema.get("default"),
        )
    body = operation.get("requestBody")
    if body:
        schema = _resolve(body["content"]["application/json"]["schema"])
        required = set(schema.get("required", []))
        for name, prop in schema["properties"].items():
            out[name] = ("body", name in required, prop.get("default"))
    return out


def argument_drift(operation_id: str, client_class: type) -> list[str]:
    """How the method's arguments differ from the spec's path/query parameters and body fields:
    the same names; required ones without a default (positional), optional ones keyword-only
    with the spec's default."""
    expected = expected_arguments(OPERATIONS[operation_id])
    method = getattr(client_class, recsvc_client.OPERATIONS[operation_id])
    parameters = dict(inspect.signature(method).parameters)
    where = f"{client_class.__name__}.{method.__name__}"
    problems = []
    if parameters.pop("self").kind is not inspect.Parameter.POSITIONAL_ONLY:
        problems.append(f"{where}: self")
    if set(parameters) != set(expected):
        problems.append(f"{where}: arguments {sorted(parameters)}, spec {sorted(expected)}")
    for name, (_, required, default) in expected.items():
        parameter = parameters.get(name)
        if parameter is None:
            continue
        if required and (
            parameter.default is not inspect.Parameter.empty
            or parameter.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD
        ):
            problems.append(f"{where}({name}): required, so positional without a default")
        if not required and parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
            problems.append(f"{where}({name}): optional, so keyword-only")
        if not required and None not in (default, parameter.default):
            if parameter.default != default:
                problems.append(f"{where}({name}): default {parameter.default!r}, spec {default!r}")
    return problems


def test_method_arguments_are_the_specs() -> None:
    problems = [
        problem
        for operation_id in sorted(OPERATIONS)
        for client_class in (RecsvcClient, AsyncRecsvcClient)
        for problem in argument_drift(operation_id, client_class)
    ]
    assert problems == []


def test_argument_drift_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above fails when the server adds a query parameter or renames a body field."""
    popular = json.loads(json.dumps(OPERATIONS["popular_items"]))
    popular["parameters"].append({"name": "language", "in": "query", "schema": {}})
    monkeypatch.setitem(OPERATIONS, "popular_items", popular)
    assert argument_drift("popular_items", RecsvcClient)
    request = json.loads(json.dumps(SCHEMAS["RecommendationsRequest"]))
    request["properties"]["limit"] = request["properties"].pop("n")
    monkeypatch.setitem(SCHEMAS, "RecommendationsRequest", request)
    assert argument_drift("recommend", AsyncRecsvcClient)


# --- 2. the client's models mirror components/schemas -------------------------------------------


def client_model_classes() -> dict[str, type[BaseModel]]:
    return {
        name: cls
        for name, cls in vars(client_models).items()
        if isinstance(cls, type)
        and issubclass(cls, BaseModel)
        and cls.__module__ == client_models.__name__
        and cls.__name__ == name
        and not name.startswith("_")
    }


def _refs(schema: Any) -> set[str]:
    if isinstance(schema, dict):
        found = {schema["$ref"].rsplit("/", 1)[-1]} if "$ref" in schema else set()
        for value in schema.values():
            found |= _refs(value)
        return found
    if isinstance(schema, list):
        return set().union(*(_refs(value) for value in schema)) if schema else set()
    return set()


def _classes(annotation: Any) -> set[str]:
    found = {annotation.__name__} if isinstance(annotation, type) else set()
    for arg in typing.get_args(annotation):
        found |= _classes(arg)
    return found


def drift(model: type[BaseModel], schema: dict[str, Any]) -> list[str]:
    """How `model` differs from the schema: fields, required fields, referenced schemas."""
    problems = []
    fields, properties = set(model.model_fields), set(schema.get("properties", {}))
    if fields != properties:
        problems.append(f"fields: missing {properties - fields}, unknown {fields - properties}")
    required = {name for name, info in model.model_fields.items() if info.is_required()}
    if required != set(schema.get("required", [])):
        problems.append(f"required: client {sorted(required)}, spec {schema.get('required')}")
    for name in fields & properties:
        refs = _refs(schema["properties"][name])
        missing = refs - _classes(model.model_fields[name].annotation)
        if missing:
            problems.append(f"{name}: does not use the models of {sorted(missing)}")
    return problems


def test_every_schema_has_a_client_model() -> None:
    assert set(client_model_classes()) == set(SCHEMAS)


def test_client_models_mirror_the_schemas() -> None:
    models = client_model_classes()
    problems = {
        name: drift(models[name], schema) for name, schema in SCHEMAS.items() if name in models
    }
    assert {name: found for name, found in problems.items() if found} == {}


def test_drift_is_caught() -> None:
    """The check above fails when the server renames, adds or un-requires a field."""
    schema = json.loads(json.dumps(SCHEMAS["RecommendedItem"]))
    assert drift(client_models.RecommendedItem, schema) == []
    schema["properties"]["ranking_score"] = schema["properties"].pop("score")
    schema["required"] = ["item_id", "ranking_score", "title"]
    assert len(drift(client_models.RecommendedItem, schema)) == 2
    added = json.loads(json.dumps(SCHEMAS["Health"]))
    added["properties"]["version"] = {"type": "string"}
    assert drift(client_models.Health, added)
    loosened = json.loads(json.dumps(SCHEMAS["ItemOut"]))
    loosened["required"].remove("updated_at")
    assert drift(client_models.ItemOut, loosened)
    retyped = json.loads(json.dumps(SCHEMAS["Recommendations"]))
    retyped["properties"]["items"]["items"]["$ref"] = "#/components/schemas/Edition"
    assert drift(client_models.Recommendations, retyped)


def test_responses_ignore_fields_a_newer_server_adds() -> None:
    body = {"status": "ok", "uptime_seconds": 3}
    assert client_models.Health.model_validate(body) == Health(status="ok")
    with pytest.raises(ValueError, match="extra"):  # requests refuse typos instead
        client_models.RecommendationsRequest.model_validate({"sesion_items": ["c1"]})


# --- 3. retries store events exactly once -------------------------------------------------------

PROBLEM_503 = {
    "type": "https://recsvc.dev/problems/service-unavailable",
    "title": "Service Unavailable",
    "status": 503,
    "detail": "the database is unavailable; retry later",
}


def unavailable(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        503,
        headers={"Retry-After": "0", "Content-Type": "application/problem+json"},
        content=json.dumps(PROBLEM_503).encode(),
        request=request,
    )


class DropAfterCommit(httpx.BaseTransport):
    """POST /v1/events: attempt 1 reaches the server, which commits, then the connection drops;
    attempt 2 gets a 503 with Retry-After: 0; attempt 3 and later reach the server."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.attempts: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != "/v1/events":
            return self.inner.handle_request(request)
        self.attempts.append(request)
        if len(self.attempts) == 1:
            response = self.inner.handle_request(request)
            response.read()
            response.close()
            assert response.status_code == 202, response.text
            raise httpx.RemoteProtocolError("connection dropped after the commit", request=request)
        if len(self.attempts) == 2:
            return unavailable(request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class AsyncDropAfterCommit(httpx.AsyncBaseTransport):
    """DropAfterCommit for the async client."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.attempts: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != "/v1/events":
            return await self.inner.handle_async_request(request)
        self.attempts.append(request)
        if len(self.attempts) == 1:
            response = await self.inner.handle_async_request(request)
            await response.aread()
            await response.aclose()
            assert response.status_code == 202, response.text
            raise httpx.RemoteProtocolError("connection dropped after the commit", request=request)
        if len(self.attempts) == 2:
            return unavailable(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def new_events(n: int, user: str = "u1") -> list[dict[str, Any]]:
    """Events without event ids: the client must give them theirs."""
    return [{"user_id": user, "item_id": f"c{i}", "type": "view"} for i in range(n)]


def assert_one_logical_call(attempts: list[httpx.Request], events: list[dict[str, Any]]) -> None:
    """Three attempts of one call: one request id, one body, the events' filled-in ids."""
    assert len(attempts) == 3
    request_ids = {attempt.headers["x-request-id"] for attempt in attempts}
    assert len(request_ids) == 1 and request_ids != {""}
    bodies = [json.loads(attempt.content) for attempt in attempts]
    assert bodies[0] == bodies[1] == bodies[2]
    ids = [event["event_id"] for event in events]
    assert all(ids) and len(set(ids)) == len(ids)
    assert [event["event_id"] for event in bodies[0]["events"]] == ids


def test_ingestion_retried_after_a_dropped_commit_is_stored_once(
    server: ServerThread, database_url: str, waits: list[float]
) -> None:
    transport = DropAfterCommit()
    events = new_events(5)
    with RecsvcClient(server.url, INGEST_KEY, transport=transport, **FAST) as client:
        result = client.ingest_events(events)
    assert_one_logical_call(transport.attempts, events)
    # attempt 3 finds every event stored by attempt 1: counted as duplicates, stored once
    assert result == IngestResult(accepted=0, duplicates=5)
    assert count_events(database_url) == 5
    stored = asyncio.run(rows(database_url, "SELECT event_id FROM events"))
    assert sorted(stored) == sorted(event["event_id"] for event in events)
    assert waits == [0.0, 0.0]


async def test_async_ingestion_retried_after_a_dropped_commit_is_stored_once(
    server: ServerThread, database_url: str, waits: list[float]
) -> None:
    transport = AsyncDropAfterCommit()
    events = new_events(4, user="u-async")
    async with AsyncRecsvcClient(server.url, INGEST_KEY, transport=transport, **FAST) as client:
        result = await client.send_events(events)
    assert_one_logical_call(transport.attempts, events)
    assert result == IngestResult(accepted=0, duplicates=4)
    assert await scalar(database_url, "SELECT count(*) FROM events") == 4
    assert waits == [0.0, 0.0]


def test_send_events_batches_and_resending_the_same_objects_stores_nothing_twice(
    server: ServerThread, database_url: str
) -> None:
    transport = Recorder(httpx.HTTPTransport())
    events: list[Any] = new_events(4)
    events.append(recsvc_client.Event(user_id="u2", item_id="c9", type="enroll"))
    with RecsvcClient(server.url, INGEST_KEY, transport=transport, max_batch_size=2) as client:
        first = client.send_events(iter(events))
        again = client.send_events(events)  # ids were written into the dicts and the Event
        assert client.send_events([]) == IngestResult(accepted=0, duplicates=0)
    assert first == IngestResult(accepted=5, duplicates=0)
    assert again == IngestResult(accepted=0, duplicates=5)
    sizes = [len(json.loads(request.content)["events"]) for request in transport.requests]
    assert sizes == [2, 2, 1, 2, 2, 1]
    assert count_events(database_url) == 5
    assert events[4].event_id is not None


def test_send_events_keeps_each_body_under_the_limit() -> None:
    bodies: list[bytes] = []

    def accept(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        n = len(json.loads(request.content)["events"])
        return httpx.Response(202, json={"accepted": n, "duplicates": 0})

    context = {"said": "我想学Python数据分析" * 20}  # Chinese: 3 bytes a character, unescaped
    events = [
        {"user_id": "u1", "item_id": f"c{i}", "type": "view", "context": context} for i in range(40)
    ]
    limit = 4096
    transport = httpx.MockTransport(accept)
    with RecsvcClient("http://recsvc.test", "k", transport=transport, max_body_bytes=limit) as c:
        result = c.send_events(events)
    assert result.accepted == 40
    assert len(bodies) > 1
    assert all(len(body) <= limit for body in bodies)
    assert sum(len(json.loads(body)["events"]) for body in bodies) == 40


# --- retry policy, on scripted answers ----------------------------------------------------------

POPULAR = {
    "user_id": None,
    "model_version": None,
    "strategy": "popular",
    "degraded": False,
    "items": [],
}


def scripted(*answers: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[str]]:
    """A transport giving these answers in turn (an exception is raised), recording the
    X-Request-ID of each attempt."""
    queue: Iterator[httpx.Response | Exception] = iter(answers)
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["x-request-id"])
        answer = next(queue)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handler), seen


def test_retry_after_is_honoured_capped_and_otherwise_jittered(waits: list[float]) -> None:
    transport, seen = scripted(
        httpx.Response(503, headers={"Retry-After": "7"}),
        httpx.Response(429, headers={"Retry-After": "1000"}),
        httpx.Response(502),
        httpx.Response(200, json=POPULAR),
    )
    with RecsvcClient(
        "http://recsvc.test", "k", transport=transport, retries=3, backoff=0.5, max_retry_after=30
    ) as client:
        result = client.popular_items(n=5)
    assert isinstance(result, Recommendations)
    assert waits[:2] == [7.0, 30.0]
    assert 0 <= waits[2] <= 0.5 * 2**2
    assert len(seen) == 4 and len(set(seen)) == 1  # one request id for the whole call

    jitter = RecsvcClient("http://recsvc.test", "k", backoff=0.5, max_backoff=8)
    delays = [jitter._delay(3, None) for _ in range(200)]
    assert all(0 <= d <= 4 for d in delays) and len(set(delays)) > 100  # full jitter
    assert max(jitter._delay(20, None) for _ in range(200)) <= 8  # capped


def test_retries_give_up_with_the_last_answer(waits: list[float]) -> None:
    transport, seen = scripted(*[httpx.Response(503, headers={"Retry-After": "1"})] * 3)
    with RecsvcClient("http://recsvc.test", "k", transport=transport, retries=2) as client:
        with pytest.raises(Unavailable) as raised:
            client.get_item("c1")
    assert len(seen) == 3 and raised.value.status == 503
    assert raised.value.request_id == seen[0]
    assert waits == [1.0, 1.0]


def test_client_errors_are_not_retried(waits: list[float]) -> None:
    transport, seen = scripted(httpx.Response(422, json={"detail": "bad"}))
    with RecsvcClient("http://recsvc.test", "k", transport=transport) as client:
        with pytest.raises(ValidationFailed):
            client.recommend(query="x")
    assert len(seen) == 1 and waits == []


def test_training_and_activation_are_not_sent_again_once_they_may_have_arrived(
    waits: list[float],
) -> None:
    job = {
        "job_id": "j1", "state": "queued", "force": False, "version": None, "error": None,
        "created_at": "2026-01-01T00:00:00Z", "started_at": None, "finished_at": None,
    }  # fmt: skip
    dropped = httpx.RemoteProtocolError("server disconnected")
    transport, seen = scripted(dropped)
    with RecsvcClient("http://recsvc.test", "k", transport=transport) as client:
        with pytest.raises(RecsvcConnectionError) as raised:
            client.train_model()
    assert len(seen) == 1 and raised.value.status is None
    assert raised.value.request_id == seen[0]
    assert isinstance(raised.value.__cause__, httpx.RemoteProtocolError)

    for answer in (httpx.ReadTimeout("slow"), httpx.Response(502), httpx.Response(504)):
        transport, seen = scripted(answer, httpx.Response(200, json={}))
        with RecsvcClient("http://recsvc.test", "k", transport=transport) as client:
            with pytest.raises(RecsvcError):
                client.activate_model("v1")
        assert len(seen) == 1, answer

    # never sent, or refused before acting: safe to send again
    transport, seen = scripted(
        httpx.ConnectError("refused"),
        httpx.Response(503, headers={"Retry-After": "0"}),
        httpx.Response(202, json=job),
    )
    with RecsvcClient("http://recsvc.test", "k", transport=transport) as client:
        assert client.train_model(force=True).job_id == "j1"
    assert len(seen) == 3

    # the same failures on read-only or deduplicated calls are retried
    transport, seen = scripted(
        httpx.ReadTimeout("slow"), dropped, httpx.Response(200, json=POPULAR)
    )
    with RecsvcClient("http://recsvc.test", "k", transport=transport) as client:
        assert client.recommend(session_items=["c1"]).strategy == "popular"
    assert len(seen) == 3


def test_readiness_503_is_an_answer() -> None:
    not_ready = {
        "status": "not_ready", "database": "unreachable", "schema_revision": None,
        "model": "none_trained",
    }  # fmt: skip
    transport, seen = scripted(httpx.Response(503, json=not_ready))
    with RecsvcClient("http://recsvc.test", None, transport=transport) as client:
        readiness = client.readyz()
    assert isinstance(readiness, Readiness) and not readiness.ready and len(seen) == 1
    transport, seen = scripted(httpx.Response(503, text="<html>upstream down</html>"))
    with RecsvcClient("http://recsvc.test", None, transport=transport) as client:
        with pytest.raises(Unavailable, match="upstream down"):
            client.readyz()


def test_request_id_from_header_then_problem_then_the_one_sent() -> None:
    problem = {**PROBLEM_503, "status": 404, "title": "Not Found", "request_id": "from-body"}
    cases = [
        (httpx.Response(404, headers={"X-Request-ID": "from-header"}, json=problem), "from-header"),
        (httpx.Response(404, json=problem), "from-body"),
        (httpx.Response(404), None),
    ]
    for answer, expected in cases:
        transport, seen = scripted(answer)
        with RecsvcClient("http://recsvc.test", "k", transport=transport) as client:
            with pytest.raises(NotFound) as raised:
                client.get_user("u1")
        assert raised.value.request_id == (expected or seen[0])


def test_unexpected_answers_raise_recsvc_errors() -> None:
    transport, _ = scripted(httpx.Response(200, json={"item_id": "c1"}))  # fields missing
    with RecsvcClient("http://recsvc.test", "k", transport=transport) as client:
        with pytest.raises(RecsvcError, match="unexpected answer"):
            client.get_item("c1")
    transport, _ = scripted(httpx.ConnectError("refused"))
    with RecsvcClient("http://recsvc.test", "k", transport=transport, retries=0) as client:
        with pytest.raises(RecsvcConnectionError):
            client.healthz()


def test_timeouts_connect_and_read_apart() -> None:
    with RecsvcClient("http://recsvc.test", "k") as client:
        timeout = client._http.timeout
    assert timeout.connect is not None and timeout.read is not None
    assert timeout.connect < timeout.read
    custom = httpx.Timeout(2.0, connect=0.5)
    with RecsvcClient("http://recsvc.test", "k", timeout=custom) as client:
        assert client._http.timeout == custom


# --- 4. typed results from the live service -----------------------------------------------------

COURSES = {
    "python": ["Python basics", "Web scraping with requests", "Django web apps", "Async IO"],
    "data": [
        "Pandas data analysis",
        "SQL for analysts",
        "Statistics refresher",
        "Excel dashboards",
    ],
    "design": ["Figma for beginners", "Typography essentials", "Colour theory", "UX research"],
}
ITEMS = [
    {"item_id": f"c-{category}-{i}", "title": title, "categories": [category]}
    for category, titles in COURSES.items()
    for i, title in enumerate(titles)
]


def learner_events(n_users: int = 36) -> list[dict[str, Any]]:
    """Each learner keeps to one subject: views three of its courses, enrols in one."""
    out = []
    subjects = list(COURSES)
    for u in range(n_users):
        subject = subjects[u % len(subjects)]
        for k in range(3):
            out.append(
                {"user_id": f"u{u}", "item_id": f"c-{subject}-{(u + k) % 4}", "type": "view"}
            )
        out.append({"user_id": f"u{u}", "item_id": f"c-{subject}-{u % 4}", "type": "enroll"})
    return out


def wait_until_served(client: RecsvcClient, version: str) -> None:
    deadline = time.monotonic() + 20
    while client.readyz().model != version:
        assert time.monotonic() < deadline, "the server did not load the model"
        time.sleep(0.1)


def test_every_operation_against_the_live_service(server: ServerThread) -> None:
    with RecsvcClient(server.url, ADMIN_KEY, **FAST) as client:
        assert client.healthz() == Health(status="ok")
        readiness = client.readyz()
        assert isinstance(readiness, Readiness) and readiness.ready
        assert readiness.model == "none_trained"
        assert "recsvc_" in client.metrics()
        types = client.event_types()
        assert types.types["enroll"] == 4.0 and types.rating_type == "rate"

        first = client.put_item(
            "c-python-0", **{k: v for k, v in ITEMS[0].items() if k != "item_id"}
        )
        assert isinstance(first, ItemOut) and first.title == "Python basics"
        assert first.categories == ["python"] and first.available
        upserted = client.put_items([ItemWithId(**ITEMS[1]), *ITEMS[2:]])
        assert upserted == UpsertResult(upserted=len(ITEMS) - 1)
        assert client.get_item("c-data-1").title == "SQL for analysts"

        profile = client.put_user("u0", attributes={"lang": "zh"})
        assert isinstance(profile, UserOut) and profile.attributes == {"lang": "zh"}
        sent = client.send_events(learner_events())
        assert sent == IngestResult(accepted=len(learner_events()), duplicates=0)
        learner = client.get_user("u0")
        assert learner.n_events == 4 and learner.event_counts == {"view": 3, "enroll": 1}

        job = client.train_model()
        assert isinstance(job, JobOut) and job.state in ("queued", "running", "succeeded")
        job = client.wait_for_training_job(job.job_id, max_wait=120, interval=0.05)
        assert job.state == "succeeded", job.error
        assert job.version is not None
        versions = client.list_models()
        assert isinstance(versions, ModelVersionList)
        assert [v.version for v in versions.versions] == [job.version]
        active = client.get_active_model()
        assert isinstance(active, ModelVersionOut) and active.version == job.version
        assert active.n_users == 36 and "ndcg@10" in active.metrics
        assert client.activate_model(job.version).status == "active"
        wait_until_served(client, job.version)

        mine = client.recommend_for_user("u0", n=3, explain=True, exclude=["c-python-3"])
        assert isinstance(mine, Recommendations) and mine.user_id == "u0"
        assert mine.model_version == job.version and mine.strategy.startswith("als")
        assert 0 < len(mine.items) <= 3
        assert all(isinstance(item, RecommendedItem) for item in mine.items)
        assert "c-python-3" not in {item.item_id for item in mine.items}
        assert "c-python-0" not in {item.item_id for item in mine.items}  # enrolled
        reasons = [reason for item in mine.items for reason in item.reasons or []]
        assert reasons and all(isinstance(reason, Reason) for reason in reasons)

        chat = client.recommend(
            session_items=["c-data-0"], query="SQL", n=2, categories=["data"], explain=True
        )
        assert chat.user_id is None and chat.items and len(chat.items) <= 2
        assert all(item.item_id.startswith("c-data-") for item in chat.items)
        assert isinstance(chat.items[0].score, float)

        similar = client.similar_items("c-design-0", n=3, category="design")
        assert similar.items and all(i.item_id.startswith("c-design-") for i in similar.items)
        popular = client.popular_items(n=2, category=["python", "data"], window_days=30)
        assert len(popular.items) == 2

        client.delete_item("c-design-3")
        with pytest.raises(NotFound):
            client.get_item("c-design-3")
        client.delete_user("u35")
        with pytest.raises(NotFound):
            client.get_user("u35")


# --- 5. errors carry the problem and the request id ---------------------------------------------


class Recorder(httpx.BaseTransport):
    """Passes requests on, keeping them and the answers."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []
        self.responses: list[httpx.Response] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = self.inner.handle_request(request)
        self.responses.append(response)
        return response

    def close(self) -> None:
        self.inner.close()

    def request_id(self) -> str:
        """The id the server logged the last request under: the one the client sent, which the
        server echoes in its X-Request-ID header (when it sends one)."""
        sent = self.requests[-1].headers["x-request-id"]
        answered = self.responses[-1].headers.get("x-request-id")
        assert answered in (None, sent)
        return sent


def raises(error: type[RecsvcError], call: Callable[[], object]) -> RecsvcError:
    with pytest.raises(error) as raised:
        call()
    return raised.value


def test_errors_carry_the_problem_and_the_request_id(
    server: ServerThread, database_url: str
) -> None:
    recorder = Recorder(httpx.HTTPTransport())
    with RecsvcClient(server.url, ADMIN_KEY, transport=recorder, **FAST) as client:
        missing = raises(NotFound, lambda: client.get_item("no-such-course"))
        assert missing.status == 404 and missing.title == "Not Found"
        assert missing.type.endswith("/not-found")
        assert missing.detail == "item 'no-such-course' is not in the catalog"
        assert missing.request_id == recorder.request_id()
        assert missing.request_id in str(missing) and len(recorder.requests) == 1

        bad = [
            {"user_id": "u1", "item_id": "c1", "type": "view"},
            {"user_id": "u1", "item_id": "c2", "type": "teleport"},
        ]
        invalid = raises(ValidationFailed, lambda: client.ingest_events(bad))
        assert invalid.status == 422 and invalid.request_id == recorder.request_id()
        assert invalid.errors is not None and len(invalid.errors) == 1
        assert invalid.errors[0].field == "events[1].type"
        assert invalid.errors[0].loc == ["events", 1, "type"]
        assert "teleport" in invalid.errors[0].msg and "events[1].type" in str(invalid)
        assert count_events(database_url) == 0  # all or nothing

        too_many = raises(ValidationFailed, lambda: client.recommend(n=0))
        assert too_many.errors and too_many.errors[0].field == "n"

    with RecsvcClient(server.url, "k-not-a-real-key", **FAST) as stranger:
        assert stranger.healthz().status == "ok"  # needs no key
        denied = raises(Unauthorized, stranger.event_types)
        assert denied.status == 401 and denied.detail and denied.request_id
    with RecsvcClient(server.url, READ_KEY, **FAST) as reader:
        forbidden = raises(Forbidden, lambda: reader.put_item("c1", title="x"))
        assert forbidden.status == 403


# --- 6. the async client ------------------------------------------------------------------------


async def test_async_client_typed_results_and_errors(server: ServerThread) -> None:
    async with AsyncRecsvcClient(server.url, ADMIN_KEY, **FAST) as client:
        assert (await client.healthz()).status == "ok"
        await client.put_items(ITEMS)
        sent = await client.send_events(learner_events(12))
        assert sent.accepted == 48
        item = await client.get_item("c-data-0")
        assert isinstance(item, ItemOut) and item.categories == ["data"]
        popular = await client.popular_items(n=3, category="data")
        assert isinstance(popular, Recommendations) and popular.strategy.startswith("popular")
        assert popular.model_version is None and len(popular.items) == 3
        assert all(isinstance(i, RecommendedItem) for i in popular.items)
        chat = await client.recommend(query="Figma", n=1)
        assert isinstance(chat, Recommendations)
        with pytest.raises(NotFound) as raised:
            await client.get_training_job("no-such-job")
        assert raised.value.status == 404 and raised.value.request_id
        with pytest.raises(ValidationFailed) as invalid:
            await client.put_item("c1", title="x" * 1001)
        assert invalid.value.errors and invalid.value.errors[0].field == "title"


# --- 7. learners: portraits, segments, audiences ------------------------------------------------


def test_learner_operations_against_the_live_service(settings: Settings) -> None:
    """With RECSVC_SEGMENTS=3, for the three subjects of `learner_events` (by default the
    server picks 4..12 segments by silhouette)."""
    events = learner_events()
    with (
        ServerThread(settings.model_copy(update={"segments": 3})) as server,
        RecsvcClient(server.url, READ_KEY, **FAST) as reader,
    ):
        with RecsvcClient(server.url, ADMIN_KEY, **FAST) as admin:
            admin.put_items(ITEMS)
            admin.send_events(events)

        # before the first model: no segments, no audiences; profiles are computed anyway
        assert reader.list_segments() == SegmentList(model_version=None, segments=[])
        raises(NotFound, lambda: reader.list_segment_users(0))
        no_model = raises(Conflict, lambda: reader.item_audience("c-data-0"))
        assert no_model.status == 409 and no_model.request_id
        raises(Conflict, lambda: reader.topic_audience(tags=["sql"]))
        empty = raises(ValidationFailed, lambda: reader.topic_audience(n=5))
        assert empty.status == 422 and "category or tag" in str(empty)
        raises(ValidationFailed, lambda: reader.item_audience("c-data-0", n=0))

        profile = reader.get_user_profile("u1", tz="Asia/Shanghai")  # u1 studies "data"
        assert isinstance(profile, Profile) and profile.user_id == "u1"
        assert profile.n_events == 4 and profile.model_version is None
        assert profile.segment is None
        assert [interest.name for interest in profile.interests.categories] == ["data"]
        assert profile.interests.categories[0].evidence == 4
        assert profile.activity.timezone == "Asia/Shanghai"
        assert profile.activity.last_seen is not None
        assert [course.item_id for course in profile.journey.consumed] == ["c-data-1"]
        assert all(isinstance(label.rule, str) for label in profile.labels)
        raises(ValidationFailed, lambda: reader.get_user_profile("u1", tz="Mars/Olympus"))
        raises(NotFound, lambda: reader.get_user_profile("nobody"))

        with RecsvcClient(server.url, ADMIN_KEY, **FAST) as admin:
            job = admin.train_model()
            job = admin.wait_for_training_job(job.job_id, max_wait=120, interval=0.05)
            assert job.state == "succeeded", job.error
            assert job.version is not None
            wait_until_served(admin, job.version)

        # segments: every learner in exactly one, paged by cursor
        segments = reader.list_segments()
        assert segments.model_version == job.version and segments.segments
        assert all(isinstance(segment, SegmentOut) for segment in segments.segments)
        assert sum(segment.size for segment in segments.segments) == 36
        members: list[str] = []
        for segment in segments.segments:
            first = reader.list_segment_users(segment.segment_id, limit=2)
            assert isinstance(first, SegmentMembers) and first.model_version == job.version
            assert len(first.users) == min(2, segment.size)
            assert first.next_cursor is not None or segment.size <= 2
            everyone = list(reader.iter_segment_users(segment.segment_id, limit=2))
            assert everyone[:2] == first.users and len(everyone) == segment.size
            members += everyone
        assert sorted(members) == sorted(f"u{u}" for u in range(36))
        assert reader.get_user_profile("u1").segment is not None

        # audiences: learners who enrolled in the course are left out
        audience = reader.item_audience("c-data-0", n=36)
        assert isinstance(audience, Audience) and audience.item_id == "c-data-0"
        assert audience.model_version == job.version and audience.basis >= 1
        assert audience.users and all(isinstance(m, AudienceMember) for m in audience.users)
        enrolled = {
            e["user_id"] for e in events if e["item_id"] == "c-data-0" and e["type"] == "enroll"
        }
        assert enrolled and enrolled.isdisjoint(member.user_id for member in audience.users)
        scores = [member.score for member in audience.users]
        assert scores == sorted(scores, reverse=True)
        topic = reader.topic_audience(categories=["design"], n=3, exclude_consumed=False)
        assert topic.item_id is None and 0 < len(topic.users) <= 3


def test_iter_segment_users_follows_next_cursor() -> None:
    pages = {
        None: {"segment_id": 3, "model_version": "v1", "users": ["a", "b"], "next_cursor": "c1"},
        "c1": {"segment_id": 3, "model_version": "v1", "users": ["c", "d"], "next_cursor": "c2"},
        "c2": {"segment_id": 3, "model_version": "v1", "users": ["e"], "next_cursor": None},
    }
    seen: list[httpx.URL] = []

    def page(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(200, json=pages[request.url.params.get("cursor")])

    transport = httpx.MockTransport(page)
    with RecsvcClient("http://recsvc.test", "k", transport=transport) as client:
        assert list(client.iter_segment_users(3, limit=2)) == ["a", "b", "c", "d", "e"]
        with pytest.raises(TypeError):
            client.list_segment_users("3")  # type: ignore[arg-type]
    assert [url.path for url in seen] == ["/v1/segments/3/users"] * 3
    assert [url.params.get("cursor") for url in seen] == [None, "c1", "c2"]
    assert {url.params["limit"] for url in seen} == {"2"}


async def test_async_learner_operations(server: ServerThread) -> None:
    async with AsyncRecsvcClient(server.url, ADMIN_KEY, **FAST) as client:
        await client.put_items(ITEMS)
        await client.send_events(learner_events(3))
        segments = await client.list_segments()
        assert isinstance(segments, SegmentList) and segments.segments == []
        profile = await client.get_user_profile("u2")
        assert isinstance(profile, Profile) and profile.n_events == 4
        assert [interest.name for interest in profile.interests.categories] == ["design"]
        with pytest.raises(Conflict):
            await client.topic_audience(categories=["design"])
        with pytest.raises(ValidationFailed):
            await client.topic_audience(categories=[])
        with pytest.raises(NotFound):
            async for _ in client.iter_segment_users(0):
                pass

"""Hostile input (issue 10, part 4): every request below gets a 4xx, or is stored verbatim and
read back identically, and never a 5xx, a crash, a hang or a connection dropped without an
answer. Runs on SQLite and on PostgreSQL (RECSVC_TEST_DATABASE_URL).

Bodies are written with `json.dumps` (ASCII escapes), so a NUL travels as `\\u0000` and a lone
surrogate as `\\ud800`, exactly as a hostile client would send them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn

from conftest import INGEST, OPS, READ, TABLES, free_port, rows, scalar
from recsvc.app import create_app
from recsvc.config import Settings

HOSTILE: dict[str, str] = {
    "sql": "'; DROP TABLE events; --",
    "html": "<script>alert(1)</script>",
    "nul": "a\x00b",
    "lone_surrogate": "\ud800",
    "astral": "😀𠀀",
    "long": "x" * 10_000,
}
# Values a client cannot get stored: NUL (PostgreSQL text and jsonb cannot hold it, so it is
# refused on both databases alike) and a lone surrogate (not valid JSON text, not UTF-8).
NEVER_STORED = {"nul", "lone_surrogate"}
JSON = {"Content-Type": "application/json"}


def body(value: Any) -> bytes:
    return json.dumps(value).encode()  # ensure_ascii: "\u0000", "\ud800" as escapes


def seg(value: str) -> str:
    """A path segment or query value, percent-encoded (a lone surrogate as its WTF-8 bytes,
    which are not UTF-8)."""
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


async def tables_intact(database_url: str) -> None:
    for table in TABLES:
        await scalar(database_url, f"SELECT count(*) FROM {table}")  # noqa: S608 (constants)


class Outcomes:
    """Collects every unacceptable answer, so one run reports them all."""

    def __init__(self) -> None:
        self.bad: list[str] = []

    def check(self, what: str, response: httpx.Response, allowed: set[int]) -> bool:
        """True when the request succeeded (2xx)."""
        if response.status_code not in allowed:
            self.bad.append(f"{what}: {response.status_code} {response.text[:200]}")
        if response.status_code >= 400:
            ctype = response.headers.get("content-type", "")
            if not ctype.startswith("application/problem+json"):
                self.bad.append(f"{what}: {response.status_code} is not a problem document")
        return response.is_success

    def same(self, what: str, got: Any, sent: Any) -> None:
        if got != sent:
            self.bad.append(f"{what}: stored {str(got)[:80]!r}, sent {str(sent)[:80]!r}")

    def assert_none(self) -> None:
        assert not self.bad, "\n".join(self.bad)


def accept(name: str, ok: int) -> set[int]:
    return {422} if name in NEVER_STORED else {ok, 422}


# --- strings in bodies, paths and query parameters ----------------------------------------------


@pytest.mark.parametrize("name", HOSTILE)
async def test_hostile_strings_in_events(
    name: str, client: httpx.AsyncClient, database_url: str
) -> None:
    value, out = HOSTILE[name], Outcomes()
    for n, field in enumerate(["user_id", "item_id", "type", "event_id"]):
        event = {"event_id": f"e{n}", "user_id": "u1", "item_id": "c1", "type": "view"}
        event[field] = value
        r = await client.post("/v1/events", content=body({"events": [event]}), headers=INGEST)
        allowed = {422} if field == "type" or name == "long" else accept(name, 202)
        if out.check(f"event {field}", r, allowed):
            stored = await rows(
                database_url,
                f"SELECT {field} FROM events WHERE {field} = :v",  # noqa: S608 (constant names)
                v=value,
            )
            out.same(f"event {field}", stored, [value])
    # Context: free text inside JSON (keys and values).
    for n, context in enumerate([{"q": value}, {value: 1}]):
        event = {"event_id": f"ctx{n}", "user_id": "u1", "item_id": "c1", "type": "view"}
        r = await client.post(
            "/v1/events", content=body({"events": [{**event, "context": context}]}), headers=INGEST
        )
        allowed = {422} if name == "long" else accept(name, 202)  # "long": over 4 KiB
        if out.check(f"event context {n}", r, allowed):
            stored = await rows(
                database_url, "SELECT context FROM events WHERE event_id = :e", e=f"ctx{n}"
            )
            parsed = [json.loads(c) if isinstance(c, str) else c for c in stored]  # SQLite
            out.same(f"event context {n}", parsed, [context])
    await tables_intact(database_url)
    out.assert_none()


@pytest.mark.parametrize("name", HOSTILE)
async def test_hostile_strings_in_items_and_users(
    name: str, client: httpx.AsyncClient, database_url: str
) -> None:
    value, out = HOSTILE[name], Outcomes()
    item_fields: list[tuple[str, Any, bool]] = [
        ("title", value, len(value) <= 1000),
        ("description", value, True),
        ("categories", [value], len(value) <= 128),
        ("tags", [value], len(value) <= 128),
        ("attributes", {"level": value}, True),
        ("attributes", {value: "key"}, True),
    ]
    for n, (field, sent, fits) in enumerate(item_fields):
        item_id = f"i{n}"
        r = await client.put(f"/v1/items/{item_id}", content=body({field: sent}), headers=INGEST)
        if out.check(f"item {field}", r, accept(name, 201) if fits else {422}):
            out.same(f"item {field} (PUT answer)", r.json()[field], sent)
            got = await client.get(f"/v1/items/{item_id}", headers=READ)
            if out.check(f"item {field} read back", got, {200}):
                out.same(f"item {field} read back", got.json()[field], sent)
    for n, attributes in enumerate(
        [{"bio": value}, {value: "key"}, {"list": [value, {"k": value}]}]
    ):
        user_id = f"u{n}"
        r = await client.put(
            f"/v1/users/{user_id}", content=body({"attributes": attributes}), headers=INGEST
        )
        if out.check(f"user attributes {n}", r, accept(name, 201)):
            got = await client.get(f"/v1/users/{user_id}", headers=READ)
            if out.check(f"user attributes {n} read back", got, {200}):
                out.same(f"user attributes {n} read back", got.json()["attributes"], attributes)
    await tables_intact(database_url)
    out.assert_none()


PATH_IDS = {**HOSTILE, "invalid_utf8": "\udcff"}  # %FF: not UTF-8 at all


@pytest.mark.parametrize("name", PATH_IDS)
async def test_hostile_path_ids(name: str, client: httpx.AsyncClient, database_url: str) -> None:
    """URL-encoded ids in paths: refused, or stored and addressed by the same URL. An id with a
    `/` (the HTML one) cannot be addressed in a path at all: 404 from routing."""
    value, out = PATH_IDS[name], Outcomes()
    raw = "%FF" if name == "invalid_utf8" else seg(value)
    not_found = {404, 422}
    r = await client.put(f"/v1/items/{raw}", content=body({"title": "t"}), headers=INGEST)
    if out.check("PUT item", r, {201, 404, 422}):
        stored_id = r.json()["item_id"]
        if name not in NEVER_STORED | {"invalid_utf8"}:
            out.same("PUT item id", stored_id, value)
        got = await client.get(f"/v1/items/{raw}", headers=READ)
        if out.check("GET item", got, {200}):
            out.same("GET item id", got.json()["item_id"], stored_id)
    r = await client.put(f"/v1/users/{raw}", content=body({"attributes": {}}), headers=INGEST)
    if out.check("PUT user", r, {201, 404, 422}):
        stored_id = r.json()["user_id"]
        got = await client.get(f"/v1/users/{raw}", headers=READ)
        if out.check("GET user", got, {200}):
            out.same("GET user id", got.json()["user_id"], stored_id)
    reads = [
        f"/v1/users/{raw}/recommendations",
        f"/v1/items/{raw}/similar",
        f"/v1/models/jobs/{raw}",
        f"/v1/items/{raw}",
        f"/v1/users/{raw}",
    ]
    for url in reads:
        out.check(f"GET {url[:40]}", await client.get(url, headers=OPS), {200} | not_found)
    for url in [f"/v1/items/{raw}", f"/v1/users/{raw}"]:
        out.check(f"DELETE {url[:40]}", await client.delete(url, headers=OPS), {204} | not_found)
    out.check("activate", await client.post(f"/v1/models/{raw}/activate", headers=OPS), not_found)
    await tables_intact(database_url)
    out.assert_none()


@pytest.mark.parametrize("name", PATH_IDS)
async def test_hostile_query_parameters_and_recommendation_bodies(
    name: str, client: httpx.AsyncClient, database_url: str
) -> None:
    value, out = PATH_IDS[name], Outcomes()
    raw = "%FF" if name == "invalid_utf8" else seg(value)
    await client.put("/v1/items/c1", content=body({"title": "t"}), headers=INGEST)
    for url in [
        f"/v1/users/u1/recommendations?exclude={raw}&category={raw}",
        f"/v1/popular?exclude={raw}&category={raw}",
        f"/v1/popular?window_days={raw}",
        f"/v1/items/c1/similar?exclude={raw}&category={raw}",
        f"/v1/users/u1/recommendations?n={raw}&explain={raw}&diversity={raw}",
    ]:
        out.check(f"GET {url[:50]}", await client.get(url, headers=READ), {200, 404, 422})
    if name != "invalid_utf8":
        for field, sent in [
            ("user_id", value),
            ("query", value),
            ("session_items", [value]),
            ("exclude", [value]),
            ("categories", [value]),
        ]:
            r = await client.post(
                "/v1/recommendations", content=body({field: sent}), headers=READ | JSON
            )
            out.check(
                f"POST recommendations {field}", r, {422} if name in NEVER_STORED else {200, 422}
            )
    await tables_intact(database_url)
    out.assert_none()


# --- structure and size limits (in-process) ------------------------------------------------------


def nested(depth: int, kind: str) -> str:
    return (
        ('{"a":' * depth + "1" + "}" * depth) if kind == "object" else ("[" * depth + "]" * depth)
    )


def event_with_context(context: str) -> str:
    return '{"events":[{"user_id":"u1","item_id":"c1","type":"view","context":' + context + "}]}"


@pytest.mark.parametrize("kind", ["object", "array"])
async def test_deeply_nested_json_is_refused(
    kind: str, client: httpx.AsyncClient, database_url: str
) -> None:
    deep = nested(10_000, kind)
    wrapped = deep if kind == "object" else '{"a":' + deep + "}"
    r = await client.post("/v1/events", content=event_with_context(wrapped), headers=INGEST | JSON)
    assert r.status_code == 422, r.text
    for url in ["/v1/users/u1", "/v1/items/c1"]:
        r = await client.put(url, content='{"attributes":' + wrapped + "}", headers=INGEST | JSON)
        assert r.status_code == 422, r.text
    assert await scalar(database_url, "SELECT count(*) FROM events") == 0
    # Moderately nested (within the JSON parser's depth) and small is a valid context.
    ok = event_with_context(nested(100, "object"))
    r = await client.post("/v1/events", content=ok, headers=INGEST | JSON)
    assert r.status_code == 202, r.text


@pytest.mark.parametrize(
    "url",
    [
        "/v1/users/u1/recommendations?n=101",
        "/v1/users/u1/recommendations?n=1000000000000000000000000",
        "/v1/users/u1/recommendations?n=0",
        "/v1/users/u1/recommendations?n=-1",
        "/v1/users/u1/recommendations?n=1e3",
        "/v1/items/c1/similar?n=101",
        "/v1/popular?n=101",
    ],
)
async def test_n_above_the_maximum_is_422(url: str, client: httpx.AsyncClient) -> None:
    r = await client.get(url, headers=READ)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"][-1] == "n"


@pytest.mark.parametrize("n", [101, 10**30, 0, -5, 1.5, "ten"])
async def test_n_above_the_maximum_in_a_body_is_422(n: Any, client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/recommendations", content=body({"user_id": "u1", "n": n}), headers=READ | JSON
    )
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("field", ["session_items", "exclude", "categories"])
async def test_ten_thousand_ids_in_a_body_are_refused(
    field: str, client: httpx.AsyncClient
) -> None:
    ids = [f"c{i}" for i in range(10_000)]
    r = await client.post("/v1/recommendations", content=body({field: ids}), headers=READ | JSON)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == field


async def test_ten_thousand_ids_in_a_query_are_refused_or_handled(
    client: httpx.AsyncClient,
) -> None:
    exclude = ",".join(f"c{i}" for i in range(10_000))  # ~59 KB, over the 20,000 characters
    r = await client.get(f"/v1/users/u1/recommendations?exclude={exclude}", headers=READ)
    assert r.status_code == 422, r.text
    short = ",".join(["c"] * 10_000)  # 10,000 ids in 19,999 characters: within the limit
    r = await client.get(f"/v1/popular?exclude={short}", headers=READ)
    assert r.status_code == 200, r.text
    categories = "&".join(["category=k"] * 5_000)  # httpx refuses URLs over 64 KiB
    r = await client.get(f"/v1/popular?{categories}", headers=READ)
    assert r.status_code == 422, r.text


@pytest.mark.parametrize(
    ("url", "field", "kind"),
    [
        ("/v1/users/u1/recommendations?diversity=2", "query.diversity", "less_than_equal"),
        ("/v1/users/u1/recommendations?diversity=NaN", "query.diversity", "less_than_equal"),
        ("/v1/users/u1/recommendations?explain=perhaps", "query.explain", "bool_parsing"),
        (
            "/v1/users/u1/recommendations?max_per_family=0",
            "query.max_per_family",
            "greater_than_equal",
        ),
        ("/v1/users/u1/recommendations?n=", "query.n", "int_parsing"),
        (
            "/v1/users/u1/recommendations?category=a&category=",
            "query.category[1]",
            "string_too_short",
        ),
        ("/v1/items/c1/similar?max_per_family=x", "query.max_per_family", "int_parsing"),
        ("/v1/popular?window_days=0", "query.window_days", "greater_than"),
        ("/v1/popular?window_days=366", "query.window_days", "less_than_equal"),
    ],
)
async def test_a_bad_query_parameter_is_422_naming_it(
    url: str, field: str, kind: str, client: httpx.AsyncClient
) -> None:
    r = await client.get(url, headers=READ)
    assert r.status_code == 422, r.text
    assert [(e["field"], e["type"]) for e in r.json()["errors"]] == [(field, kind)]


async def test_unknown_and_repeated_query_parameters(client: httpx.AsyncClient) -> None:
    """Parameters a route does not know are ignored; a repeated single-valued one counts once,
    the last value (as FastAPI reads them)."""
    r = await client.get("/v1/users/u1/recommendations?n=2&colour=blue&n=3", headers=READ)
    assert r.status_code == 200, r.text
    r = await client.get("/v1/users/u1/recommendations?n=2&n=101", headers=READ)
    assert r.status_code == 422, r.text


# --- the real server: raw sockets ---------------------------------------------------------------


@contextlib.contextmanager
def serving(settings: Settings, http: str = "auto") -> Iterator[int]:
    """uvicorn on a real port in a thread, with the HTTP implementation asked for."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="error", http=http
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def read_response(sock: socket.socket, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response from a raw socket; fails if the server closes without one."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed without a (complete) response: {data[:200]!r}"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(status_line.split()[1]), headers, rest[:length]


def request_head(method: str, target: str, headers: dict[str, str]) -> bytes:
    lines = [
        f"{method} {target} HTTP/1.1",
        "Host: recsvc",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


FIFTY_MB = 50 * 1024 * 1024


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_fifty_megabyte_body_gets_413_before_it_is_read(
    framing: str, settings: Settings, database_url: str
) -> None:
    """The sender pushes up to 50 MB while the main thread waits for the answer: the 413 comes
    back long before the body is all sent (by the declared length at once; chunked, soon after
    the 2 MiB limit)."""
    headers = {**INGEST, "Content-Type": "application/json"}
    if framing == "content-length":
        headers["Content-Length"] = str(FIFTY_MB)
    else:
        headers["Transfer-Encoding"] = "chunked"
    sent = 0
    done = threading.Event()

    def send_body(sock: socket.socket) -> None:
        nonlocal sent
        piece = b'{"events":[' + b" " * (64 * 1024 - 11)
        try:
            while sent < FIFTY_MB and not done.is_set():
                data = (
                    piece if framing == "content-length" else b"%x\r\n%s\r\n" % (len(piece), piece)
                )
                sock.sendall(data)
                sent += len(piece)
                piece = b" " * len(piece)
        except OSError:  # the server answered and closed: expected
            pass

    with serving(settings) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request_head("POST", "/v1/events", headers))
        sender = threading.Thread(target=send_body, args=(sock,), daemon=True)
        started = time.monotonic()
        sender.start()
        try:
            status, response_headers, payload = read_response(sock, timeout=20)
        finally:
            done.set()
            sender.join(timeout=10)
        elapsed = time.monotonic() - started
    assert status == 413, payload
    assert response_headers["content-type"].startswith("application/problem+json")
    assert json.loads(payload)["status"] == 413
    assert sent < FIFTY_MB // 4, f"the server read {sent} bytes before refusing"
    assert elapsed < 10
    assert asyncio.run(scalar(database_url, "SELECT count(*) FROM events")) == 0


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_hundred_kilobyte_query_string_gets_an_answer(http: str, settings: Settings) -> None:
    """A 100 KB request target: refused with a 4xx, never a 5xx or a silently dropped
    connection. httptools parses it and the app answers 422 (exclude is at most 20,000
    characters); h11 refuses a request head over its 16 KiB buffer with 400 by itself."""
    exclude = ",".join(f"c{i:06d}" for i in range(100 * 1024 // 8))
    target = f"/v1/users/u1/recommendations?exclude={exclude}"
    assert len(target) > 100 * 1024
    with serving(settings, http) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request_head("GET", target, READ))
        status, _, payload = read_response(sock)
    assert 400 <= status < 500 and status != 408, payload
    # A 100 KB header value likewise.
    with serving(settings, http) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request_head("GET", "/v1/popular", {**READ, "X-Padding": "p" * 100 * 1024}))
        status, _, payload = read_response(sock)
    assert status == 200 or 400 <= status < 500, payload


def test_clients_trickling_headers_do_not_block_others(settings: Settings) -> None:
    """20 connections that send a request line and then one header byte per second hold no
    worker: ordinary requests meanwhile answer as fast as ever. (uvicorn has no timeout for a
    request head in progress: such a connection stays open as long as it keeps trickling; see
    the report / deploy notes.)"""
    with serving(settings) as port:
        slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        try:
            for sock in slow:
                sock.sendall(b"GET /v1/popular HTTP/1.1\r\nHost: recsvc\r\nX-Slow: ")
            latencies = []
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                for _ in range(6):
                    for sock in slow:
                        sock.sendall(b"y")
                    for _ in range(3):
                        started = time.monotonic()
                        r = client.get("/v1/popular", headers=READ)
                        latencies.append(time.monotonic() - started)
                        assert r.status_code == 200, r.text
                    time.sleep(1)
            assert max(latencies) < 1.0, latencies
            # The trickling clients finish their heads and are answered normally.
            for sock in slow:
                sock.sendall(b"\r\nX-API-Key: k-chatbot-secret\r\n\r\n")
            for sock in slow:
                status, _, _ = read_response(sock)
                assert status == 200
        finally:
            for sock in slow:
                sock.close()


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "1" * 400])
async def test_non_finite_and_huge_numbers_in_free_json(
    number: str, client: httpx.AsyncClient, database_url: str
) -> None:
    """pydantic's JSON parser reads NaN, Infinity and 1e999 as floats (and 400 digits as an int)
    inside free objects; PostgreSQL jsonb cannot store them: refused with 422 on both."""
    out = Outcomes()
    r = await client.put(
        "/v1/users/u1", content='{"attributes":{"x":' + number + "}}", headers=INGEST | JSON
    )
    if out.check("user attributes", r, {422}):
        out.check("user read back", await client.get("/v1/users/u1", headers=READ), {200})
    r = await client.put(
        "/v1/items/c1", content='{"attributes":{"x":' + number + "}}", headers=INGEST | JSON
    )
    if out.check("item attributes", r, {422}):
        out.check("item read back", await client.get("/v1/items/c1", headers=READ), {200})
    r = await client.post(
        "/v1/events", content=event_with_context('{"x":' + number + "}"), headers=INGEST | JSON
    )
    out.check("event context", r, {422})
    await tables_intact(database_url)
    out.assert_none()

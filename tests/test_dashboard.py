"""The dashboard's server side: the hourly rollup (kept at ingest, taken back at erasure,
backfilled by migration 0005), GET /v1/stats/overview, GET /v1/users/{id}/events, and the static
pages with their headers. The pages in a real browser: test_dashboard_browser.py."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from alembic import command
from recsvc_client import NotFound, Overview, RecsvcClient, Timeline
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from conftest import INGEST, OPS, READ, ServerThread, events, rows
from recsvc import dashboard, db, ingest
from recsvc.schemas import EventIn


def _hour(delta_hours: int = 0) -> datetime:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return now + timedelta(hours=delta_hours)


def _at(hour: datetime, minute: int) -> str:
    return (hour + timedelta(minutes=minute)).isoformat()


async def _rollup(database_url: str) -> dict[tuple[str, str], int]:
    engine = db.make_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(text("SELECT hour, type, count FROM event_counts_hourly"))
            return {(_utc(r.hour).isoformat(), r.type): int(r.count) for r in result if r.count > 0}
    finally:
        await engine.dispose()


def _utc(value: object) -> datetime:
    if isinstance(value, str):  # SQLite, read with text(): the stored string
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def test_rollup_counts_stored_events_once_and_forgets_erased_ones(
    client: httpx.AsyncClient, database_url: str
) -> None:
    now, before = _hour(), _hour(-3)
    batch = [
        *events(3, prefix="a", user="u1", type="view", timestamp=_at(now, 1)),
        *events(2, prefix="b", user="u2", type="click", timestamp=_at(now, 2)),
        *events(4, prefix="c", user="u1", type="view", timestamp=_at(before, 59)),
    ]
    assert (await client.post("/v1/events", json={"events": batch}, headers=INGEST)).json() == {
        "accepted": 9,
        "duplicates": 0,
    }
    # Repeats of an event_id are not stored, so not counted; a new one in the same batch is.
    again = [*batch[:3], *events(1, prefix="d", user="u2", type="view", timestamp=_at(now, 3))]
    assert (await client.post("/v1/events", json={"events": again}, headers=INGEST)).json() == {
        "accepted": 1,
        "duplicates": 3,
    }
    expected = {
        (now.isoformat(), "view"): 4,
        (now.isoformat(), "click"): 2,
        (before.isoformat(), "view"): 4,
    }
    assert await _rollup(database_url) == expected

    overview = (await client.get("/v1/stats/overview", headers=READ)).json()
    assert overview["events_total"] == 10
    assert overview["learners_total"] == 2
    series = overview["events_per_hour"]
    assert series["hours"] == 168
    start = datetime.fromisoformat(series["start"])
    assert start == now - timedelta(hours=167)
    charted = {
        ((start + timedelta(hours=i)).isoformat(), kind): n
        for kind, counts in series["counts"].items()
        for i, n in enumerate(counts)
        if n
    }
    assert charted == expected
    assert all(len(counts) == 168 for counts in series["counts"].values())

    # Erasure takes the learner's events out of the rollup in the same transaction.
    assert (await client.delete("/v1/users/u1", headers=OPS)).status_code == 204
    assert await _rollup(database_url) == {
        (now.isoformat(), "view"): 1,
        (now.isoformat(), "click"): 2,
    }
    after = (await client.get("/v1/stats/overview", headers=READ)).json()
    assert after["events_total"] == 3
    assert await rows(database_url, "SELECT user_id FROM event_learners") == ["u2"]


async def test_overview_windows_and_contents(client: httpx.AsyncClient) -> None:
    old = [
        *events(2, prefix="old", user="u1", timestamp=_at(_hour(-30), 5)),  # in 7 days only
        *events(1, prefix="older", user="u1", timestamp=_at(_hour(-24 * 8), 5)),  # in neither
        *events(1, prefix="new", user="u3", type="enroll", timestamp=_at(_hour(), 0)),
    ]
    assert (
        await client.post("/v1/events", json={"events": old}, headers=INGEST)
    ).status_code == 202
    put = await client.put("/v1/items/c1", json={"title": "数据分析入门"}, headers=INGEST)
    assert put.status_code == 201
    assert (await client.delete("/v1/items/c1", headers=INGEST)).status_code == 204
    await client.put("/v1/items/c2", json={"title": "Python 基础"}, headers=INGEST)
    await client.get("/v1/popular", headers=READ)

    body = (await client.get("/v1/stats/overview", headers=READ)).json()
    assert body["key_scopes"] == ["read"]
    assert body["events_total"] == 4
    assert body["courses_total"] == 1  # c1 is deleted
    counts = body["events_per_hour"]["counts"]
    assert sum(sum(c[-24:]) for c in counts.values()) == 1  # the last 24 hours
    assert sum(sum(c) for c in counts.values()) == 3  # the last 7 days
    assert counts["enroll"][-1] == 1  # the current hour is the last entry
    assert body["readiness"]["status"] == "ready"
    assert body["readiness"]["model"] == "none_trained"
    assert body["active_model"] is None
    assert body["recommendations_by_strategy"].get("popular", 0) >= 1
    assert body["fresh_users"] >= 0
    ops = (await client.get("/v1/stats/overview", headers=OPS)).json()
    assert ops["key_scopes"] == ["admin", "ingest", "read"]


async def test_overview_and_timeline_need_a_read_key(client: httpx.AsyncClient) -> None:
    for path in ("/v1/stats/overview", "/v1/users/u1/events"):
        assert (await client.get(path)).status_code == 401
        assert (await client.get(path, headers={"X-API-Key": "k-not-a-key"})).status_code == 401
        refused = await client.get(path, headers=INGEST)
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"


async def test_timeline_newest_first_with_titles(client: httpx.AsyncClient) -> None:
    await client.put("/v1/items/c1", json={"title": "日语N1高分突破"}, headers=INGEST)
    batch = [
        {"event_id": f"t{i}", "user_id": "u1", "item_id": f"c{i % 2}", "type": "view"}
        | {"timestamp": _at(_hour(-i), 0)}
        for i in range(5)
    ]
    await client.post("/v1/events", json={"events": batch}, headers=INGEST)
    body = (await client.get("/v1/users/u1/events?limit=3", headers=READ)).json()
    assert body["user_id"] == "u1"
    assert [e["event_id"] for e in body["events"]] == ["t0", "t1", "t2"]
    assert [e["title"] for e in body["events"]] == ["", "日语N1高分突破", ""]
    assert {"item_id", "type", "value", "occurred_at", "received_at"} <= set(body["events"][0])

    missing = await client.get("/v1/users/nobody/events", headers=READ)
    assert missing.status_code == 404
    for bad in ("0", "201", "x"):
        refused = await client.get(f"/v1/users/u1/events?limit={bad}", headers=READ)
        assert refused.status_code == 422
        assert refused.json()["errors"][0]["field"] == "query.limit"
    # A learner with a profile and no events has an empty timeline.
    await client.put("/v1/users/u9", json={"attributes": {}}, headers=INGEST)
    assert (await client.get("/v1/users/u9/events", headers=READ)).json()["events"] == []


async def test_dashboard_pages_are_served_with_their_headers(client: httpx.AsyncClient) -> None:
    redirect = await client.get("/dashboard", follow_redirects=False)
    assert redirect.status_code == 307
    assert redirect.headers["location"] == "/dashboard/"
    page = await client.get("/dashboard/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "script-src 'self'" in csp and "unsafe" not in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["x-frame-options"] == "DENY"
    # Every file the page loads is served from the package, none from another host.
    for asset in ("app.js", "charts.js", "app.css", "vendor/uplot/uPlot.iife.min.js"):
        response = await client.get(f"/dashboard/{asset}")
        assert response.status_code == 200, asset
        assert "http://" not in response.text.replace("http://www.w3.org", "")
        assert response.headers["content-security-policy"] == csp
    assert (await client.get("/dashboard/nothing.js")).status_code == 404
    html = page.text
    assert 'id="api-key"' in html and 'for="api-key"' in html
    assert "name=" not in html.split('id="sign-in-form"')[1].split("</form>")[0]


def test_vendored_chart_library_ships_with_its_license() -> None:
    vendor = dashboard.STATIC / "vendor" / "uplot"
    assert (vendor / "LICENSE").read_text().startswith("The MIT License")
    assert (vendor / "uPlot.iife.min.js").stat().st_size > 10_000


# --- migration 0005 backfills the rollup from the events stored before it ----------------------


@pytest.fixture
def empty_database(database_url: str, tmp_path: Path):
    """A new, empty database on the same server as the test database."""
    if db.is_sqlite(database_url):
        yield f"sqlite+aiosqlite:///{tmp_path / 'backfill.db'}"
        return
    server = make_url(database_url)
    name = f"recsvc_backfill_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        engine = db.make_engine(
            server.render_as_string(hide_password=False),
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
        )
        try:
            async with engine.connect() as conn:
                await conn.execute(text(sql))
        finally:
            await engine.dispose()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_migration_backfills_the_rollup(empty_database: str) -> None:
    url = empty_database
    command.upgrade(db.alembic_config(url), "0004")
    stored = [
        ("u1", "view", datetime(2026, 11, 3, 10, 5, 59, 123000, tzinfo=UTC)),
        ("u1", "view", datetime(2026, 11, 3, 10, 59, 59, tzinfo=UTC)),
        ("u2", "click", datetime(2026, 11, 3, 10, 0, tzinfo=UTC)),
        ("u2", "view", datetime(2026, 11, 3, 11, 0, tzinfo=UTC)),
    ]

    async def insert() -> None:
        engine = db.make_engine(url, poolclass=NullPool)
        try:
            async with db.make_sessionmaker(engine)() as session, session.begin():
                await session.execute(
                    ingest.EVENTS.insert(),
                    [
                        {
                            "event_id": f"e{i}",
                            "user_id": user,
                            "item_id": "c1",
                            "type": kind,
                            "occurred_at": when,
                            "received_at": datetime.now(UTC),
                        }
                        for i, (user, kind, when) in enumerate(stored)
                    ],
                )
        finally:
            await engine.dispose()

    asyncio.run(insert())
    command.upgrade(db.alembic_config(url), "head")
    ten, eleven = "2026-11-03T10:00:00+00:00", "2026-11-03T11:00:00+00:00"
    assert asyncio.run(_rollup(url)) == {
        (ten, "view"): 2,
        (ten, "click"): 1,
        (eleven, "view"): 1,
    }

    # The backfilled hours are the rows ingest writes: a later event adds to the same row.
    async def ingest_one() -> None:
        engine = db.make_engine(url, poolclass=NullPool)
        try:
            async with db.make_sessionmaker(engine)() as session, session.begin():
                event = EventIn(
                    user_id="u3", item_id="c1", type="view", timestamp="2026-11-03T10:30:00Z"
                )
                await ingest.insert_events(session, [event])
        finally:
            await engine.dispose()

    asyncio.run(ingest_one())
    assert asyncio.run(_rollup(url))[(ten, "view")] == 3
    assert asyncio.run(rows(url, "SELECT count(*) FROM event_counts_hourly")) == [3]
    learners = "SELECT user_id FROM event_learners ORDER BY user_id"
    assert asyncio.run(rows(url, learners)) == ["u1", "u2", "u3"]
    command.downgrade(db.alembic_config(url), "0004")
    command.upgrade(db.alembic_config(url), "head")


def test_the_python_client_reads_the_overview_and_a_timeline(server: ServerThread) -> None:
    batch = events(3, prefix="p", user="u1", timestamp=_at(_hour(), 0))
    httpx.post(f"{server.url}/v1/events", json={"events": batch}, headers=INGEST).raise_for_status()
    with RecsvcClient(server.url, READ["X-API-Key"]) as client:
        overview = client.stats_overview()
        assert isinstance(overview, Overview)
        assert overview.events_total == 3 and overview.key_scopes == ["read"]
        assert overview.events_per_hour.counts["view"][-1] == 3
        assert overview.readiness.ready
        timeline = client.list_user_events("u1", limit=2)
        assert isinstance(timeline, Timeline)
        assert [e.event_id for e in timeline.events] == ["p2", "p1"]  # same time: newest id
        with pytest.raises(NotFound):
            client.list_user_events("nobody")

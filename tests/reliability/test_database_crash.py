"""Issue 10: the PostgreSQL server crashing (`pg_ctl stop -m immediate`) under a stream of event
batches loses no acknowledged event and stores none twice: `recsvc serve` answers 503 while the
database is down, recovers by itself, and producers resend what was not acknowledged.

Runs on a throw-away cluster of its own (initdb in a temporary folder, its own port), whatever
database the rest of the suite uses."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _processes import (
    Server,
    cluster,
    failed_attempts,
    finish_producers,
    postgres_bin,
    start_producers,
)

from conftest import free_port, rows, scalar
from recsvc import db

pytestmark = pytest.mark.slow

CRASHES = 3
PRODUCERS = 4


@dataclass(repr=False)
class Outcome:
    alive: bool
    sent: set[str]
    acknowledged: set[str]
    stored: set[str]
    duplicated: list[str]
    total: int
    before_first: int
    after_last: int
    failures: dict[str, int]
    unexpected: list[str]
    log: Path


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    """One run: producers streaming into `recsvc serve` while its database crashes CRASHES
    times; the tests below judge different sides of it."""
    tmp_path = tmp_path_factory.mktemp("database-crash")
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin")
    rng = random.Random(20_000)
    began = time.monotonic()
    with cluster(bindir, free_port()) as pg:
        pg.createdb("recsvc")
        url = pg.url("recsvc")
        asyncio.run(db.upgrade(url))
        server = Server(url, tmp_path, free_port(), workers=1)
        server.start()
        try:
            server.wait_ready()
            producers, stop = start_producers(server.url, PRODUCERS, seed=20_000)
            try:
                crashes: list[tuple[float, float]] = []  # (down, up) times
                for _ in range(CRASHES):
                    time.sleep(rng.uniform(1.0, 2.0))  # of load
                    down = time.monotonic()
                    pg.crash()
                    time.sleep(1.0)
                    pg.start()
                    crashes.append((down, time.monotonic()))
                time.sleep(3.0)  # producers catch up on the database that came back
                finish_producers(producers, stop)
            finally:
                stop.set()
            alive = server.process is not None and server.process.poll() is None
        finally:
            server.stop()

        sent = set().union(*(p.sent for p in producers))
        acknowledged = set().union(*(p.acknowledged for p in producers))
        stored = set(asyncio.run(rows(url, "SELECT event_id FROM events")))
        duplicated = asyncio.run(
            rows(url, "SELECT event_id FROM events GROUP BY event_id HAVING count(*) > 1")
        )
        total = asyncio.run(scalar(url, "SELECT count(*) FROM events"))

    before_first = sum(n for p in producers for t, n in p.acknowledged_at if t < crashes[0][0])
    after_last = sum(n for p in producers for t, n in p.acknowledged_at if t > crashes[-1][1])
    failures = failed_attempts(producers)
    print(
        f"\n[database crash] acknowledged {len(acknowledged)}, found "
        f"{len(acknowledged & stored)}, duplicated {len(duplicated)}, crashes {len(crashes)}; "
        f"acknowledged before the first crash {before_first}, after the last restart "
        f"{after_last}, sent {len(sent)}, stored {total}, failed attempts {failures}, "
        f"run {time.monotonic() - began:.1f} s"
    )
    yield Outcome(
        alive=alive,
        sent=sent,
        acknowledged=acknowledged,
        stored=stored,
        duplicated=duplicated,
        total=total,
        before_first=before_first,
        after_last=after_last,
        failures=failures,
        unexpected=[u for p in producers for u in p.unexpected],
        log=server.log,
    )


def test_database_crash_loses_no_acknowledged_event(outcome: Outcome) -> None:
    assert outcome.alive, "recsvc serve died with its database"
    lost = outcome.acknowledged - outcome.stored
    assert not lost, f"{len(lost)} acknowledged events lost, e.g. {sorted(lost)[:10]}"
    assert outcome.duplicated == [] and outcome.total == len(outcome.stored)
    assert outcome.stored <= outcome.sent
    # every batch was acknowledged in the end: the service recovered by itself
    assert outcome.acknowledged == outcome.sent == outcome.stored
    assert outcome.unexpected == []
    assert outcome.before_first > 0 and outcome.after_last > 0
    # the outage was felt: some attempts failed (503 or a dropped connection)
    assert sum(outcome.failures.values()) > 0


def test_database_outage_is_answered_503_not_500(outcome: Outcome) -> None:
    """While the database is down or still recovering, the service says so (503 with
    Retry-After), and logs no unhandled-error traceback."""
    errors = [
        json.loads(line)
        for line in outcome.log.read_text().splitlines()
        if line.startswith("{") and '"level": "ERROR"' in line
    ]
    last_lines = sorted({e.get("exc_info", "").strip().splitlines()[-2][:200] for e in errors})
    assert outcome.failures.get("500", 0) == 0, (
        f"{outcome.failures} during the outage; server errors logged: {last_lines}"
    )
    assert errors == []

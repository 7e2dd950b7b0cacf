"""Issue 10: `recsvc serve` SIGKILLed at random moments under a stream of event batches loses no
acknowledged event and stores none twice, once producers resend what was not acknowledged.

RECSVC_CRASH_RUNS (default 1) repeats the run with other seeds; RECSVC_CRASH_WORKERS (default 1)
sets the worker processes; RECSVC_CRASH_KILLS (default 10) the kills per run."""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import pytest
from _processes import Server, failed_attempts, finish_producers, start_producers

from conftest import free_port, rows, scalar

pytestmark = pytest.mark.slow

RUNS = int(os.environ.get("RECSVC_CRASH_RUNS", "1"))
WORKERS = int(os.environ.get("RECSVC_CRASH_WORKERS", "1"))
KILLS = int(os.environ.get("RECSVC_CRASH_KILLS", "10"))
PRODUCERS = 4


@pytest.mark.parametrize("run", range(RUNS))
def test_sigkilled_server_loses_no_acknowledged_event(
    run: int, database_url: str, tmp_path: Path
) -> None:
    seed = 10_000 + run
    rng = random.Random(seed)
    began = time.monotonic()
    server = Server(database_url, tmp_path, free_port(), workers=WORKERS)
    server.start()
    server.wait_ready()
    producers, stop = start_producers(server.url, PRODUCERS, seed)
    restarts: list[float] = []
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.1, 1.5))  # of serving, under load
            server.kill()
            time.sleep(rng.choice([0.0, 0.0, 0.2]))
            server.start()
            restarts.append(server.wait_ready())
        time.sleep(0.5)  # the last server also takes some load
        finish_producers(producers, stop)
    finally:
        stop.set()
        server.stop()

    sent = set().union(*(p.sent for p in producers))
    acknowledged = set().union(*(p.acknowledged for p in producers))
    stored = asyncio.run(rows(database_url, "SELECT event_id FROM events"))
    duplicated = asyncio.run(
        rows(database_url, "SELECT event_id FROM events GROUP BY event_id HAVING count(*) > 1")
    )
    total = asyncio.run(scalar(database_url, "SELECT count(*) FROM events"))
    stored_set = set(stored)
    lost = acknowledged - stored_set
    failures = failed_attempts(producers)
    print(
        f"\n[server crash run {run}, seed {seed}, workers {WORKERS}] acknowledged "
        f"{len(acknowledged)}, found {len(acknowledged & stored_set)}, duplicated "
        f"{len(duplicated)}, kills {server.kills}; sent {len(sent)}, stored {total}, "
        f"attempts {sum(p.attempts for p in producers)}, failed attempts {failures}, "
        f"restart {min(restarts):.1f}-{max(restarts):.1f} s, "
        f"run {time.monotonic() - began:.1f} s"
    )
    assert server.kills >= KILLS
    assert not lost, f"{len(lost)} acknowledged events lost, e.g. {sorted(lost)[:10]}"
    assert duplicated == []
    assert total == len(stored_set)  # no event id stored twice
    assert stored_set <= sent  # nothing stored that was never sent
    # every batch was eventually acknowledged, so everything sent is stored
    assert acknowledged == sent == stored_set
    assert [u for p in producers for u in p.unexpected] == []
    assert sum(failures.values()) > 0  # the kills were felt by the producers

"""Ingest throughput: events/s for 1000-event batches over real HTTP into PostgreSQL.

    python bench/ingest.py [--batches 300] [--connections 4] [--repeats 3] [--write-readme]

One uvicorn worker (`recsvc serve`) in its own process on a throw-away PostgreSQL database; the
load generator is a separate Python process with pre-serialised bodies (every event has a new
event_id, so every row is really inserted), and reports how much CPU it used itself, since it
shares the machine's cores with the server and PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import platform
import resource
import time
from datetime import UTC, datetime, timedelta

import httpx
import orjson
from sqlalchemy import text
from sqlalchemy.pool import NullPool

from common import (
    BENCH_KEY,
    DEFAULT_PG,
    recsvc_server,
    summary,
    throwaway_database,
    write_readme_section,
)
from recsvc import db

TYPES = ["view", "view", "view", "click", "search_click", "favorite", "enroll", "purchase"]


def make_bodies(run: int, batches: int, batch_size: int) -> list[bytes]:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    bodies = []
    for b in range(batches):
        events = [
            {
                "event_id": f"r{run}-b{b}-e{i}",
                "user_id": f"u{(b * 7919 + i * 31) % 50000}",
                "item_id": f"c{(i * i + b) % 2000}",
                "type": TYPES[i % len(TYPES)],
                "timestamp": (start + timedelta(seconds=b * batch_size + i)).isoformat(),
                "context": {"channel": "app", "session_id": f"s{b}-{i // 50}"},
            }
            for i in range(batch_size)
        ]
        bodies.append(orjson.dumps({"events": events}))
    return bodies


async def _send_all(base: str, bodies: list[bytes], connections: int) -> tuple[float, int]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"X-API-Key": BENCH_KEY, "content-type": "application/json"}
    accepted = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal accepted
        while not queue.empty():
            body = queue.get_nowait()
            response = await client.post("/v1/events", content=body, headers=headers)
            response.raise_for_status()
            accepted += response.json()["accepted"]

    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(connections)))
        return time.perf_counter() - started, accepted


def load_generator(base: str, bodies: list[bytes], connections: int, out: dict) -> None:
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    elapsed, accepted = asyncio.run(_send_all(base, bodies, connections))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    out.update(
        elapsed=elapsed,
        accepted=accepted,
        cpu=(cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
    )


def run_once(base: str, bodies: list[bytes], connections: int) -> dict:
    with multiprocessing.Manager() as manager:
        out = manager.dict()
        proc = multiprocessing.get_context("spawn").Process(
            target=load_generator, args=(base, bodies, connections, out)
        )
        proc.start()
        proc.join()
        return dict(out)


async def _count(url: str) -> int:
    engine = db.make_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(text("SELECT count(*) FROM events"))).scalar_one())
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-url", default=DEFAULT_PG, help="PostgreSQL server to use")
    parser.add_argument("--batches", type=int, default=300, help="batches per measured run")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=4, help="concurrent connections")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs after a warm-up")
    parser.add_argument("--write-readme", action="store_true", help="put the figures in README")
    args = parser.parse_args()

    with throwaway_database(args.server_url) as url, recsvc_server(url) as base:
        run_once(base, make_bodies(0, 30, args.batch_size), args.connections)  # warm-up
        rates, client_cpu, sent = [], [], 30 * args.batch_size
        for run in range(1, args.repeats + 1):
            result = run_once(
                base, make_bodies(run, args.batches, args.batch_size), args.connections
            )
            assert result["accepted"] == args.batches * args.batch_size, result
            sent += result["accepted"]
            rates.append(result["accepted"] / result["elapsed"])
            client_cpu.append(result["cpu"] / result["elapsed"])
            print(
                f"run {run}: {rates[-1]:,.0f} events/s "
                f"({result['elapsed']:.2f} s, load generator CPU {client_cpu[-1]:.0%} of a core)"
            )
        stored = asyncio.run(_count(url))
        assert stored == sent, f"{stored} rows stored, {sent} acknowledged"

    line = (
        f"{summary(rates)} events/s — median (min–max) of {args.repeats} runs after a warm-up; "
        f"{args.batches} batches of {args.batch_size} events per run, {args.connections} "
        f"connections, 1 uvicorn worker, PostgreSQL on the same machine; the Python load "
        f"generator used {summary(client_cpu, '{:.0%}')} of a core. All {stored:,} acknowledged "
        f"events were counted in the table afterwards."
    )
    print(line)
    if args.write_readme:
        machine = f"{platform.machine()}, {multiprocessing.cpu_count()} cores"
        write_readme_section(
            "ingest",
            f"`python bench/ingest.py --write-readme` ({machine}, "
            f"{datetime.now(UTC):%Y-%m-%d}):\n\n{line}\n",
        )


if __name__ == "__main__":
    main()

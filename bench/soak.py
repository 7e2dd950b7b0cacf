"""Soak: ten minutes of mixed load on `recsvc serve --workers 2`, minute by minute.

    python bench/soak.py [--minutes 10] [--users 5000] [--items 500] [--write-readme]

Loads a slice of the demo data set into a throw-away PostgreSQL database, trains a first model,
and starts `recsvc serve --workers 2`. Then, at once and for `--minutes`:

- 4 ingest producers send batches of 50 events with their own ids, at most five a second each
  (a batch that was not acknowledged is sent again, with the same ids, until it is);
- 8 recommendation connections (keep-alive) ask GET /v1/users/{id}/recommendations?n=10 for
  random learners, known and new;
- a stream of item updates (PUT /v1/items/{id}, two a second);
- one training run (POST /v1/models/train, forced) at the half, which the workers swap in.

Every minute it prints requests/s, events/s, 5xx and other errors, the p99 of the
recommendations and each worker's resident memory (VmRSS). At the end it counts the events in
the database against those acknowledged, and reports each worker's RSS growth from the end of
minute 2 to the end of the run. Not covered: a client on another machine, SQLite.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import random  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from common import (  # noqa: E402
    BENCH_KEY,
    DEFAULT_PG,
    recsvc_server,
    throwaway_database,
    write_readme_section,
)
from recsvc import db, pipeline  # noqa: E402
from recsvc.bulk import run_import  # noqa: E402
from recsvc.config import Settings  # noqa: E402
from recsvc.demo_data import generate, write_jsonl  # noqa: E402
from recsvc.schemas import ValidationRules  # noqa: E402

HEADERS = {"X-API-Key": BENCH_KEY}
# Between a producer's batches: 4 producers then send up to 1,000 events/s, a busy site's stream.
PRODUCER_PAUSE = 0.2


@dataclass
class Minute:
    """What happened in one minute (threads add to it under `lock`)."""

    recommendations: int = 0
    events: int = 0
    other_requests: int = 0
    server_errors: int = 0
    other_errors: int = 0
    latencies: list[float] = field(default_factory=list)


class Load:
    def __init__(self, base: str, users: int, items: int, seconds: float) -> None:
        self.base, self.users, self.items = base, users, items
        self.deadline = time.monotonic() + seconds
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.minutes: list[Minute] = [Minute()]
        self.acknowledged: set[str] = set()
        self.training: str | None = None

    def now(self) -> Minute:
        index = int((time.monotonic() - self.started) // 60)
        with self.lock:
            while len(self.minutes) <= index:
                self.minutes.append(Minute())
            return self.minutes[index]

    def record(self, response: httpx.Response | None, kind: str, seconds: float = 0) -> None:
        minute = self.now()
        with self.lock:
            if response is None:
                minute.other_errors += 1
            elif response.status_code >= 500:
                minute.server_errors += 1
            elif response.status_code >= 400:
                minute.other_errors += 1
            elif kind == "recommend":
                minute.recommendations += 1
                minute.latencies.append(seconds)
            else:
                minute.other_requests += 1

    def produce(self, producer: int) -> None:
        with httpx.Client(base_url=self.base, headers=HEADERS, timeout=30) as http:
            rng = random.Random(producer)
            batch_no = 0
            while time.monotonic() < self.deadline:
                batch = [
                    {
                        "event_id": f"soak-{producer}-{batch_no}-{i}",
                        "user_id": f"u{rng.randrange(self.users):05d}",
                        "item_id": f"c{rng.randrange(1, self.items + 1):04d}",
                        "type": rng.choice(("view", "view", "view", "enroll", "favorite")),
                    }
                    for i in range(50)
                ]
                while True:  # until acknowledged, with the same ids
                    try:
                        response = http.post("/v1/events", json={"events": batch})
                    except httpx.HTTPError:
                        response = None
                    self.record(response, "ingest")
                    if response is not None and response.status_code == 202:
                        break
                    time.sleep(0.2)
                minute = self.now()
                with self.lock:
                    self.acknowledged.update(e["event_id"] for e in batch)
                    minute.events += len(batch)
                batch_no += 1
                time.sleep(PRODUCER_PAUSE)

    def recommend(self, connection: int) -> None:
        rng = random.Random(100 + connection)
        with httpx.Client(base_url=self.base, headers=HEADERS, timeout=30) as http:
            while time.monotonic() < self.deadline:
                user = f"u{rng.randrange(int(self.users * 1.2)):05d}"  # a sixth are new
                began = time.perf_counter()
                try:
                    response = http.get(f"/v1/users/{user}/recommendations", params={"n": 10})
                except httpx.HTTPError:
                    response = None
                self.record(response, "recommend", time.perf_counter() - began)

    def update_items(self) -> None:
        rng = random.Random(200)
        with httpx.Client(base_url=self.base, headers=HEADERS, timeout=30) as http:
            n = 0
            while time.monotonic() < self.deadline:
                item = f"c{rng.randrange(1, self.items + 1):04d}"
                body = {"title": f"Soak course {item} revision {n}", "categories": ["soak"]}
                try:
                    response = http.put(f"/v1/items/{item}", json=body)
                except httpx.HTTPError:
                    response = None
                self.record(response, "item")
                n += 1
                time.sleep(0.5)

    def train_midway(self) -> None:
        time.sleep(max(0.0, (self.deadline - time.monotonic()) / 2))
        with httpx.Client(base_url=self.base, headers=HEADERS, timeout=30) as http:
            started = http.post("/v1/models/train", json={"force": True})
            self.record(started, "train")
            job = started.json().get("job_id")
            while job and time.monotonic() < self.deadline:
                state = http.get(f"/v1/models/jobs/{job}").json()
                if state["state"] in ("succeeded", "failed"):
                    self.training = f"{state['state']} ({state.get('version')})"
                    print(f"  training {self.training}", flush=True)
                    return
                time.sleep(1)


def worker_pids(server_pid: int) -> list[int]:
    """uvicorn's worker processes (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    workers = [
        int(pid)
        for pid in children
        if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    return sorted(workers) or [server_pid]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def server_pid(port: str) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in argv and port.encode() in argv:
                return int(entry.name)
    raise RuntimeError("the recsvc serve process was not found")


async def load_data(url: str, folder: Path, users: int, items: int) -> str:
    settings = Settings(database_url=url, models_dir=folder / "models")
    files = write_jsonl(generate(n_users=users, n_items=items), folder / "data")
    engine = db.make_engine(url, poolclass=NullPool)
    try:
        sessionmaker = db.make_sessionmaker(engine)
        rules = ValidationRules.from_settings(settings)
        for kind in ("items", "users", "events"):
            await run_import(kind, str(files[kind]), sessionmaker, rules, progress=False)
        outcome = await pipeline.run_training(settings, sessionmaker, force=True)
    finally:
        await engine.dispose()
    return outcome.version


async def count_events(url: str, prefix: str) -> tuple[int, int]:
    """(stored soak events, event ids stored more than once)."""
    engine = db.make_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            stored = await conn.scalar(
                text("SELECT count(*) FROM events WHERE event_id LIKE :p"), {"p": prefix + "%"}
            )
            repeated = await conn.scalar(
                text(
                    "SELECT count(*) FROM (SELECT event_id FROM events WHERE event_id LIKE :p "
                    "GROUP BY event_id HAVING count(*) > 1) AS r"
                ),
                {"p": prefix + "%"},
            )
    finally:
        await engine.dispose()
    return int(stored or 0), int(repeated or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server-url", default=DEFAULT_PG, help="PostgreSQL server to use")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--write-readme", action="store_true", help="put the figures in README")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, throwaway_database(args.server_url) as url:
        folder = Path(tmp)
        version = asyncio.run(load_data(url, folder, args.users, args.items))
        print(f"loaded {args.users:,} learners, {args.items:,} courses; trained {version}")
        models = str(folder / "models")
        with recsvc_server(url, workers=2, RECSVC_MODELS_DIR=models) as base:
            pid = server_pid(base.rsplit(":", 1)[1])
            load = Load(base, args.users, args.items, args.minutes * 60)
            threads = [threading.Thread(target=load.produce, args=(i,)) for i in range(4)]
            threads += [threading.Thread(target=load.recommend, args=(i,)) for i in range(8)]
            threads += [
                threading.Thread(target=load.update_items),
                threading.Thread(target=load.train_midway),
            ]
            for thread in threads:
                thread.start()
            rss: list[list[float]] = []
            header = "minute  recs/s  events/s  5xx  other errors  p99 ms  RSS MB per worker"
            print(header, flush=True)
            for minute in range(1, int(np.ceil(args.minutes)) + 1):
                time.sleep(max(0.0, load.started + 60 * minute - time.monotonic()))
                rss.append([rss_mb(p) for p in worker_pids(pid)])
                done = load.minutes[minute - 1] if len(load.minutes) >= minute else Minute()
                p99 = np.percentile(done.latencies, 99) * 1000 if done.latencies else float("nan")
                print(
                    f"{minute:>6}  {done.recommendations / 60:>6.0f}  {done.events / 60:>8.0f}"
                    f"  {done.server_errors:>3}  {done.other_errors:>12}  {p99:>6.1f}  "
                    + ", ".join(f"{m:,.0f}" for m in rss[-1]),
                    flush=True,
                )
            for thread in threads:
                thread.join(60)
        stored, repeated = asyncio.run(count_events(url, "soak-"))

    total = Minute()
    for m in load.minutes:
        total.recommendations += m.recommendations
        total.events += m.events
        total.server_errors += m.server_errors
        total.other_errors += m.other_errors
        total.latencies += m.latencies
    lost = len(load.acknowledged) - stored
    first = rss[1] if len(rss) > 1 else rss[0]
    growth = [(b - a) / a * 100 for a, b in zip(first, rss[-1], strict=False)]
    p99_all = np.percentile(total.latencies, 99) * 1000 if total.latencies else float("nan")
    print(
        f"\n{total.recommendations:,} recommendations (p99 {p99_all:.1f} ms), "
        f"{len(load.acknowledged):,} events acknowledged, {stored:,} stored, {lost:,} lost, "
        f"{repeated} stored twice; {total.server_errors} 5xx, {total.other_errors} other errors; "
        f"training midway: {load.training or 'did not finish'}; RSS growth from minute 2 to "
        f"minute {len(rss)}: " + ", ".join(f"{g:+.1f}%" for g in growth)
    )
    if args.write_readme:
        today = datetime.now(UTC).date().isoformat()
        body = (
            f"`python bench/soak.py` ({today}; {args.minutes:g} minutes, 2 workers, "
            f"{args.users:,} learners, {args.items:,} courses, PostgreSQL on the same 2-core "
            "machine): "
            f"{total.recommendations:,} recommendations from 8 connections (p99 "
            f"{p99_all:.1f} ms), {len(load.acknowledged):,} events acknowledged from 4 "
            f"producers and {stored:,} stored ({lost} lost, {repeated} twice), item updates "
            f"twice a second, and a training run midway: {load.training or 'did not finish'}; "
            f"{total.server_errors} responses 5xx; "
            "each worker's RSS from the end of minute 2 to the end: "
            + ", ".join(
                f"{a:,.0f} → {b:,.0f} MB ({g:+.1f}%)"
                for a, b, g in zip(first, rss[-1], growth, strict=False)
            )
            + ".\n"
        )
        write_readme_section("soak", body)


if __name__ == "__main__":
    main()

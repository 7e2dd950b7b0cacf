"""Serving speed: GET recommendations vs GET /healthz of the same server, measured with wrk.

    python bench/serve.py [--users 1000000 --items 100000 --factors 64 --fresh 2000]
                          [--write-readme]

Sets up a throw-away PostgreSQL database with a generated model (random factors, 1M users x
100k items, five interactions per user, registered and active) and fresh events for `--fresh`
of the 10,000 requested users (default a fifth; received after the model, so those requests
query and fold them in; the others need no query, see src/recsvc/freshness.py), starts
`recsvc serve` with one uvicorn worker, and runs wrk (Debian package `wrk`, in its own process)
against /healthz and against GET /v1/users/{id}/recommendations?n=10 for 10,000 different users,
with 1 and with 16 connections: 3 measured runs of each after a warm-up, median (min-max).
Not covered: a client on another machine, explain=true, queries, SQLite.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from common import (  # noqa: E402
    BENCH_KEY,
    DEFAULT_PG,
    recsvc_server,
    summary,
    throwaway_database,
    write_readme_section,
)
from recsvc import artifact, db, ingest, registry  # noqa: E402
from recsvc.features import Confidence, Vocabulary  # noqa: E402
from recsvc.schemas import EventIn  # noqa: E402
from recsvc.segments import Segments  # noqa: E402
from recsvc.training import ALSParams  # noqa: E402

POOL = 10_000  # distinct users requested
FRESH = POOL // 5  # default: of which these have events newer than the model
WRK_SCRIPT = """
local path = "{path}"
local pool = {pool}
request = function()
  local target = path
  if string.find(path, "%%s") then
    target = string.format(path, string.format("u%07d", math.random(0, pool - 1)))
  end
  return wrk.format("GET", target, {{["X-API-Key"] = "{key}"}})
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def generated_model(
    users: int,
    items: int,
    factors: int,
    models_dir: Path,
    cutoff: dict[str, Any],
    segments: Segments | None = None,
    topics: int = 0,
) -> Path:
    """Random factors, five interactions per user (popularity: a power law), registered
    nowhere yet; `segments` (bench/portrait.py) go into the artifact as they are. With
    `topics`, users and items are drawn around that many random topic centres (the structure
    trained factors have, which the item index of large catalogs relies on, see ann.py)."""
    rng = np.random.default_rng(0)

    def factors_of(n: int) -> np.ndarray:
        if not topics:
            return rng.normal(0, 0.1, (n, factors)).astype(np.float32)
        centres = np.random.default_rng(1).normal(0, 0.1, (topics, factors)).astype(np.float32)
        drawn = centres[rng.integers(0, topics, n)]
        drawn += rng.normal(0, 0.04, (n, factors)).astype(np.float32)
        return drawn

    popularity = 1.0 / np.arange(1, items + 1) ** 0.9
    per_user = 5
    rows = np.repeat(np.arange(users), per_user)
    cols = rng.choice(items, size=users * per_user, p=popularity / popularity.sum())
    weights = sp.csr_matrix(
        (np.full(len(rows), 3.0, dtype=np.float32), (rows, cols)), shape=(users, items)
    )
    weights.sum_duplicates()
    confidence = Confidence("log1p", ALSParams().alpha)
    user_items = confidence.transform(weights)
    consumed = user_items.copy().astype(bool)
    counts = np.bincount(user_items.indices, minlength=items).astype(np.int64)
    model = artifact.ModelArtifact(
        version=artifact.new_version(),
        params=ALSParams(factors=factors),
        users=Vocabulary([f"u{u:07d}" for u in range(users)]),
        items=Vocabulary([f"c{i:06d}" for i in range(items)]),
        user_factors=factors_of(users),
        item_factors=factors_of(items),
        user_items=user_items,
        negatives=sp.csr_matrix((users, items), dtype=bool),
        consumed=consumed,
        popularity=counts,
        recent_popularity=counts,
        metrics={},
        baseline_metrics={},
        n_events=int(user_items.nnz),
        created_at=datetime.now(UTC).isoformat(),
        extra={"events_cutoff": cutoff},
        segments=segments,
        user_weights=weights,
        confidence=confidence,
    )
    return artifact.save(model, models_dir)


async def snapshot_cutoff(url: str) -> dict[str, Any]:
    """The cutoff of a model trained on the database as it is now (the events stored later,
    `--fresh`, are folded in)."""
    engine = db.make_engine(url)
    try:
        async with db.make_sessionmaker(engine)() as session:
            await ingest.begin_snapshot(session)
            return (await ingest.read_events(session)).cutoff.to_dict()
    finally:
        await engine.dispose()


async def register(url: str, path: Path, users: int, items: int, fresh: int) -> None:
    engine = db.make_engine(url)
    try:
        sessionmaker = db.make_sessionmaker(engine)
        async with sessionmaker() as session, session.begin():
            await registry.record_version(
                session,
                version=path.name,
                status="inactive",
                params={},
                metrics={},
                baseline_metrics={},
                n_users=users,
                n_items=items,
                n_events=users * 5,
                artifact_path=str(path),
            )
            await registry.activate(session, path.name)
        fresh = [
            EventIn(user_id=f"u{u:07d}", item_id=f"c{(u * 7 + k) % 1000:06d}", type="enroll")
            for u in range(fresh)
            for k in range(3)
        ]
        for start in range(0, len(fresh), 1000):
            async with sessionmaker() as session, session.begin():
                await ingest.insert_events(session, fresh[start : start + 1000])
    finally:
        await engine.dispose()


def wrk(base: str, path: str, connections: int, seconds: int, script_dir: Path) -> dict:
    script = script_dir / f"wrk-{connections}.lua"
    script.write_text(WRK_SCRIPT.format(path=path, pool=POOL, key=BENCH_KEY))
    threads = 1 if connections == 1 else 2
    out = subprocess.run(  # noqa: S603
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", str(script), base],  # noqa: S607
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT"))
    requests, duration_us, p50_us, p99_us, errors = (int(x) for x in line.split()[1:])
    return {
        "rps": requests / (duration_us / 1e6),
        "p50": p50_us / 1000,
        "p99": p99_us / 1000,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-url", default=DEFAULT_PG, help="PostgreSQL server to use")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument(
        "--fresh", type=int, default=FRESH, help="requested users with events newer than the model"
    )
    parser.add_argument("--seconds", type=int, default=10, help="length of one wrk run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write-readme", action="store_true", help="put the figures in README")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install -y wrk")

    recs_path = "/v1/users/%s/recommendations?n=10"
    with (
        throwaway_database(args.server_url) as url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        print("generating the model ...", flush=True)
        cutoff = asyncio.run(snapshot_cutoff(url))
        path = generated_model(args.users, args.items, args.factors, Path(tmp) / "models", cutoff)
        asyncio.run(register(url, path, args.users, args.items, args.fresh))
        with recsvc_server(url, RECSVC_MODELS_DIR=str(Path(tmp) / "models")) as base:
            results: dict[tuple[str, int], list[dict]] = {}
            for connections in (1, 16):
                for name, target in (("healthz", "/healthz"), ("recommendations", recs_path)):
                    wrk(base, target, connections, 3, Path(tmp))  # warm-up
                    runs = [
                        wrk(base, target, connections, args.seconds, Path(tmp))
                        for _ in range(args.repeats)
                    ]
                    results[(name, connections)] = runs
                    print(name, connections, runs, flush=True)

    def cell(name: str, connections: int) -> str:
        runs = results[(name, connections)]
        return (
            f"| {name} | {connections} | {summary([r['rps'] for r in runs])} | "
            f"{summary([r['p50'] for r in runs], '{:.2f}')} | "
            f"{summary([r['p99'] for r in runs], '{:.2f}')} | {sum(r['errors'] for r in runs)} |"
        )

    ratio = [
        r["rps"] / h["rps"]
        for r, h in zip(results[("recommendations", 16)], results[("healthz", 16)], strict=True)
    ]
    table = "\n".join(
        [
            "| endpoint | connections | requests/s | p50 ms | p99 ms | errors |",
            "| --- | --- | --- | --- | --- | --- |",
            *(cell(n, c) for c in (1, 16) for n in ("healthz", "recommendations")),
        ]
    )
    note = (
        f"Recommendations/healthz throughput with 16 connections: "
        f"{statistics.median(ratio):.3f} ({min(ratio):.3f}–{max(ratio):.3f}). "
        f"Model: {args.users:,} users × {args.items:,} items × {args.factors} factors; "
        f"{args.fresh:,} of the {POOL:,} requested users have 3 events newer than the model "
        f"(read with one query and folded in per request; the others need no query); "
        f"one uvicorn worker; wrk on the same 2-core machine."
    )
    print(table)
    print(note)
    if args.write_readme:
        machine = f"{platform.machine()}, {os.cpu_count()} cores"
        write_readme_section(
            "serve",
            f"`python bench/serve.py --write-readme` ({machine}, {datetime.now(UTC):%Y-%m-%d}; "
            f"median (min–max) of {args.repeats} runs of {args.seconds} s after a warm-up):\n\n"
            f"{table}\n\n{note}\n",
        )


if __name__ == "__main__":
    main()

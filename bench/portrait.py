"""Learner portraits and audiences (issue 11): serving latency, and audiences on held-out pairs.

    python bench/portrait.py [--users 1000000 --items 100000 --factors 64 --seconds 10
                              --repeats 3 --demo-users 20000 --held-out 1000]
                             [--skip-speed] [--skip-holdout] [--write-readme]

Speed: a throw-away PostgreSQL database gets a catalog of `--items` courses (20 categories,
50 tags, a price each; ingest.put_items) and one heavy learner, u0000000, with 1,000 events on
300 courses over the last 180 days (view, click, favorite, add_to_cart, enroll, purchase,
complete, rate with a value, dislike), stored BEFORE the model's cutoff (so the profile reads
them from the database as always, and no audience request finds fresh consumers). Then a
generated model (random factors, `--users` x `--items` x `--factors`, five interactions per
user, 8 random segments) is registered and activated and `recsvc serve` starts with one uvicorn
worker. wrk (1 thread, 1 connection, a Lua script per request kind) measures
GET /v1/users/u0000000/profile, GET /v1/items/{random course}/audience?n=100 and
POST /v1/audiences {"categories": [a random category]} (n=100 by default): a 3 s warm-up,
then `--repeats` runs of `--seconds` s each, median (min-max) of p50, p99, requests/s and the
server's CPU time per request (its /proc user + system time over the run / requests: less
sensitive than latency to other processes on a shared machine; the load average is recorded).

Held-out audiences (acceptance 3): the bundled demo data (`--demo-users` learners x 2,000
courses); `--held-out` learners with at least two consumed courses lose every event of their
last consumed course; the rest is imported into another throw-away PostgreSQL database and a
model is trained in-process (pipeline.run_training, default settings). Through the API
in-process (httpx ASGITransport), each hidden course's GET /v1/items/{id}/audience?n=100 is
checked for the hidden learner, against the 100 learners with the most events. Also printed:
the share of 300 sampled learners (>= 10 events) whose profile's top category is one of their
true subjects, and the number of segments.

Not covered: concurrency (more connections or workers), a client on another machine, a learner
whose events are newer than the model (fold-in does not apply to profiles: they read all events
anyway), GET /v1/segments and segment pages, SQLite.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from common import (  # noqa: E402
    BENCH_KEY,
    DEFAULT_PG,
    free_port,
    summary,
    throwaway_database,
    write_readme_section,
)
from recsvc import db, ingest, pipeline, registry  # noqa: E402
from recsvc.app import create_app  # noqa: E402
from recsvc.bulk import run_import  # noqa: E402
from recsvc.config import DEFAULT_CONSUMED_TYPES, Settings  # noqa: E402
from recsvc.demo_data import DemoData, generate, write_jsonl  # noqa: E402
from recsvc.schemas import EventIn, ItemWithId, ValidationRules  # noqa: E402
from recsvc.segments import Lift, SegmentInfo, Segments  # noqa: E402
from serve import generated_model  # noqa: E402

HEAVY = "u0000000"
HEAVY_EVENTS = 1_000
HEAVY_COURSES = 300
HEAVY_DAYS = 180
CATEGORIES = [f"category-{c:02d}" for c in range(20)]
TAGS = [f"tag-{t:02d}" for t in range(50)]
SEGMENTS = 8
# (type, share) of the heavy learner's events; `rate` carries a value 1..5.
HEAVY_TYPES = (
    ("view", 0.40),
    ("click", 0.20),
    ("favorite", 0.08),
    ("add_to_cart", 0.06),
    ("enroll", 0.08),
    ("purchase", 0.06),
    ("complete", 0.05),
    ("rate", 0.05),
    ("dislike", 0.02),
)
PROFILE_SAMPLE = 300
HEADERS = {"X-API-Key": BENCH_KEY}

WRK_SCRIPT = """
local method = "{method}"
local path = "{path}"
local body = '{body}'
local pool = {pool}
local names = {{{names}}}
request = function()
  local target = path
  if string.find(path, "%%s") then
    target = string.format(path, string.format("c%06d", math.random(0, pool - 1)))
  end
  local payload = nil
  if method == "POST" then
    payload = string.format(body, names[math.random(1, #names)])
  end
  return wrk.format(method, target,
    {{["X-API-Key"] = "{key}", ["Content-Type"] = "application/json"}}, payload)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""

# (name, method, path, body): the requests measured; %s in a path is a random course id, %s in
# a body a random category.
CASES = (
    ("profile (1,000 events)", "GET", f"/v1/users/{HEAVY}/profile", ""),
    ("item audience (n=100)", "GET", "/v1/items/%s/audience?n=100", ""),
    ("topic audience (1 category, n=100)", "POST", "/v1/audiences", '{"categories": ["%s"]}'),
)


# --- speed: catalog, heavy learner, generated model -----------------------------------------------


def catalog_batches(items: int, batch: int = 1000) -> list[list[ItemWithId]]:
    rng = np.random.default_rng(1)
    category = rng.integers(0, len(CATEGORIES), items)
    second = rng.integers(0, len(CATEGORIES), items)
    tags = rng.integers(0, len(TAGS), (items, 3))
    prices = rng.choice([0, 49, 99, 199, 299, 499, 999], items)
    batches = []
    for start in range(0, items, batch):
        batches.append(
            [
                ItemWithId(
                    item_id=f"c{i:06d}",
                    title=f"Course {i} of {CATEGORIES[category[i]]}",
                    categories=sorted({CATEGORIES[category[i]], CATEGORIES[second[i]]}),
                    tags=sorted({TAGS[t] for t in tags[i]}),
                    attributes={"price": int(prices[i])},
                )
                for i in range(start, min(start + batch, items))
            ]
        )
    return batches


def heavy_events(items: int) -> list[EventIn]:
    """u0000000's 1,000 events on 300 courses over the last 180 days, oldest first."""
    rng = np.random.default_rng(2)
    courses = rng.choice(items, HEAVY_COURSES, replace=False)
    names, shares = zip(*HEAVY_TYPES, strict=True)
    share = np.array(shares) / sum(shares)
    now = datetime.now(UTC) - timedelta(minutes=5)
    ages = np.sort(rng.uniform(0, HEAVY_DAYS * 86_400, HEAVY_EVENTS))[::-1]
    events = []
    for k, age in enumerate(ages.tolist()):
        kind = str(rng.choice(names, p=share))
        events.append(
            EventIn(
                event_id=f"heavy-{k:04d}",
                user_id=HEAVY,
                item_id=f"c{int(rng.choice(courses)):06d}",
                type=kind,
                value=float(rng.integers(1, 6)) if kind == "rate" else None,
                timestamp=now - timedelta(seconds=age),
            )
        )
    return events


async def seed(url: str, items: int) -> dict[str, Any]:
    """Catalog and heavy learner; returns the cutoff of a model trained now (holding them)."""
    engine = db.make_engine(url)
    try:
        sessionmaker = db.make_sessionmaker(engine)
        for batch in catalog_batches(items):
            async with sessionmaker() as session, session.begin():
                await ingest.put_items(session, batch)
        events = heavy_events(items)
        for start in range(0, len(events), 1000):
            async with sessionmaker() as session, session.begin():
                await ingest.insert_events(session, events[start : start + 1000])
        async with sessionmaker() as session:
            await ingest.begin_snapshot(session)
            return (await ingest.read_events(session)).cutoff.to_dict()
    finally:
        await engine.dispose()


def random_segments(users: int, factors: int, rng: np.random.Generator) -> Segments:
    of_user = rng.integers(0, SEGMENTS, users).astype(np.int32)
    centroids = rng.normal(0, 1, (SEGMENTS, factors)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    sizes = np.bincount(of_user, minlength=SEGMENTS)
    info = tuple(
        SegmentInfo(
            segment_id=s,
            label=f"{CATEGORIES[s]} · {CATEGORIES[s + SEGMENTS]}",
            size=int(sizes[s]),
            categories=(Lift(CATEGORIES[s], 0.2, 4.0), Lift(CATEGORIES[s + SEGMENTS], 0.1, 2.0)),
            tags=(Lift(TAGS[s], 0.05, 2.5),),
            top_items=tuple((f"c{s * 10 + j:06d}", 100 - j) for j in range(5)),
        )
        for s in range(SEGMENTS)
    )
    return Segments(of_user, centroids, info)


async def register(url: str, path: Path, users: int, items: int) -> None:
    engine = db.make_engine(url)
    try:
        async with db.make_sessionmaker(engine)() as session, session.begin():
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
    finally:
        await engine.dispose()


@contextmanager
def recsvc_server(
    database_url: str, models_dir: Path, ready_seconds: float
) -> Iterator[tuple[str, int]]:
    """common.recsvc_server with a longer wait for /readyz (the first catalog view of 100k
    courses, i.e. family detection, and the 1M-user model take more than its 60 s here);
    yields the base URL and the server's process id."""
    port = free_port()
    environment = {
        **os.environ,
        "RECSVC_DATABASE_URL": database_url,
        "RECSVC_MODELS_DIR": str(models_dir),
        "RECSVC_API_KEYS": json.dumps({BENCH_KEY: ["admin", "read", "ingest"]}),
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "recsvc", "serve", "--port", str(port)]
    command += ["--workers", "1", "--log-level", "warning"]
    began = time.monotonic()
    proc = subprocess.Popen(command, env=environment)  # noqa: S603
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > began + ready_seconds:
                raise RuntimeError("recsvc did not become ready")
            time.sleep(0.2)
        print(f"recsvc ready after {time.monotonic() - began:.1f} s", flush=True)
        yield base, proc.pid
    finally:
        proc.terminate()
        proc.wait(20)


def check_answers(base: str, items: int) -> None:
    """One answer of each kind, checked before wrk runs (wrk only counts non-2xx codes)."""
    with httpx.Client(base_url=base, headers=HEADERS, timeout=60) as client:
        profile = client.get(f"/v1/users/{HEAVY}/profile")
        profile.raise_for_status()
        body = profile.json()
        assert body["n_events"] == HEAVY_EVENTS, body["n_events"]
        assert body["segment"] is not None, "the profile has no segment"
        print(
            f"profile: {body['n_events']} events, segment {body['segment']}, "
            f"top categories {[c['name'] for c in body['interests']['categories'][:3]]}, "
            f"{body['journey']['n_consumed']} consumed, labels "
            f"{[label['label'] for label in body['labels']]}",
            flush=True,
        )
        audience = client.get(f"/v1/items/c{items // 2:06d}/audience", params={"n": 100})
        audience.raise_for_status()
        assert len(audience.json()["users"]) == 100, audience.json()
        topic = client.post("/v1/audiences", json={"categories": [CATEGORIES[0]]})
        topic.raise_for_status()
        assert len(topic.json()["users"]) == 100, topic.json()
        print(
            f"audience: {audience.json()['strategy']}, topic audience basis "
            f"{topic.json()['basis']} courses",
            flush=True,
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(
    base: str, pid: int, case: tuple[str, str, str, str], items: int, seconds: int, folder: Path
) -> dict[str, float]:
    """One wrk run; also the server's CPU time per request (less sensitive than latency to
    other processes on the machine) and the load average when it ended."""
    name, method, path, body = case
    script = folder / "wrk-portrait.lua"
    names = ", ".join(f'"{c}"' for c in CATEGORIES)
    script.write_text(
        WRK_SCRIPT.format(
            method=method, path=path, body=body, pool=items, names=names, key=BENCH_KEY
        )
    )
    cpu_before = cpu_seconds(pid)
    out = subprocess.run(  # noqa: S603
        ["wrk", "-t1", "-c1", f"-d{seconds}s", "-s", str(script), base],  # noqa: S607
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
        "cpu": (cpu_seconds(pid) - cpu_before) * 1000 / max(requests, 1),
        "load": os.getloadavg()[0],
        "errors": errors,
    }


def speed(args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {}
    with throwaway_database(args.server_url) as url, tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        cutoff = asyncio.run(seed(url, args.items))
        print(f"catalog and heavy learner stored in {time.perf_counter() - began:.1f} s")
        print("generating the model ...", flush=True)
        models = Path(tmp) / "models"
        segments = random_segments(args.users, args.factors, np.random.default_rng(1))
        path = generated_model(args.users, args.items, args.factors, models, cutoff, segments)
        asyncio.run(register(url, path, args.users, args.items))
        with recsvc_server(url, models, ready_seconds=600) as (base, pid):
            check_answers(base, args.items)
            for case in CASES:
                wrk(base, pid, case, args.items, 3, Path(tmp))  # warm-up
                runs = [
                    wrk(base, pid, case, args.items, args.seconds, Path(tmp))
                    for _ in range(args.repeats)
                ]
                results[case[0]] = runs
                print(case[0], runs, flush=True)
    return results


# --- held-out audiences on the demo data ----------------------------------------------------------


def hide_last_consumed(data: DemoData, learners: int, seed: int) -> list[tuple[str, str]]:
    """Remove every event of `learners` learners' last consumed course (learners with at least
    two consumed courses); return the hidden (learner, course) pairs (as
    tests/test_learners_demo.py does)."""
    first_consumed: dict[str, dict[str, str]] = {}
    for event in data.events:
        if event["type"] in DEFAULT_CONSUMED_TYPES:
            first_consumed.setdefault(event["user_id"], {}).setdefault(
                event["item_id"], event["timestamp"]
            )
    eligible = sorted(u for u, courses in first_consumed.items() if len(courses) >= 2)
    chosen = random.Random(seed).sample(eligible, min(learners, len(eligible)))
    hidden = [(u, max(first_consumed[u], key=lambda i: first_consumed[u][i])) for u in chosen]
    pairs = set(hidden)
    data.events = [e for e in data.events if (e["user_id"], e["item_id"]) not in pairs]
    return hidden


async def get_json(client: httpx.AsyncClient, path: str, **params: Any) -> dict[str, Any]:
    response = await client.get(path, params=params, headers=HEADERS)
    if response.status_code != 200:
        raise RuntimeError(f"GET {path}: {response.status_code} {response.text}")
    body: dict[str, Any] = response.json()
    return body


async def holdout_run(url: str, folder: Path, demo_users: int, held_out: int) -> dict[str, Any]:
    data = generate(n_users=demo_users)
    hidden = hide_last_consumed(data, held_out, seed=11)
    settings = Settings(
        database_url=url, models_dir=folder / "models", api_keys={BENCH_KEY: ["read", "admin"]}
    )
    files = write_jsonl(data, folder / "data")
    engine = db.make_engine(url)
    try:
        sessionmaker = db.make_sessionmaker(engine)
        rules = ValidationRules.from_settings(settings)
        began = time.perf_counter()
        for kind in ("items", "users", "events"):
            report = await run_import(kind, str(files[kind]), sessionmaker, rules, progress=False)
            if report.rejected:
                raise RuntimeError(f"{kind}: {report.rejected} rejected")
        print(
            f"demo data ({len(data.events):,} events) imported in "
            f"{time.perf_counter() - began:.1f} s",
            flush=True,
        )
        began = time.perf_counter()
        outcome = await pipeline.run_training(settings, sessionmaker, force=True)
        print(f"trained {outcome.version} in {time.perf_counter() - began:.1f} s", flush=True)
    finally:
        await engine.dispose()

    n_events = Counter(e["user_id"] for e in data.events)
    most_active = {u for u, _ in n_events.most_common(100)}
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            in_audience = in_active = 0
            for user, item in hidden:
                audience = await get_json(client, f"/v1/items/{item}/audience", n=100)
                in_audience += user in {m["user_id"] for m in audience["users"]}
                in_active += user in most_active
            active = sorted(u for u, n in n_events.items() if n >= 10)
            sample = random.Random(3).sample(active, min(PROFILE_SAMPLE, len(active)))
            top_hits = 0
            for user in sample:
                profile = await get_json(client, f"/v1/users/{user}/profile")
                categories = profile["interests"]["categories"]
                top_hits += bool(categories) and categories[0]["name"] in data.interests[user]
            segments = (await get_json(client, "/v1/segments"))["segments"]
    return {
        "pairs": len(hidden),
        "in_audience": in_audience,
        "in_active": in_active,
        "profile_sample": len(sample),
        "profile_hits": top_hits,
        "segments": len(segments),
        "events": len(data.events),
        "items": len(data.items),
    }


def holdout(args: argparse.Namespace) -> dict[str, Any]:
    with throwaway_database(args.server_url) as url, tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(holdout_run(url, Path(tmp), args.demo_users, args.held_out))


# --- report ---------------------------------------------------------------------------------------


def holdout_line(found: dict[str, Any], demo_users: int) -> str:
    pairs, hits, base = found["pairs"], found["in_audience"], found["in_active"]
    ratio = f"{hits / base:.1f}× as often" if base else "the most active list never has them"
    return (
        f"Held-out demo pairs (each learner's last consumed course hidden at training; "
        f"{demo_users:,} learners × {found['items']:,} courses, {pairs:,} pairs): the learner "
        f"is in the course's audience top-100 in {hits:,} of {pairs:,} ({hits / pairs:.1%}), "
        f"in the 100 most active learners in {base:,} ({base / pairs:.1%}): {ratio}. "
        f"Profiles whose top category is one of the learner's true subjects: "
        f"{found['profile_hits']} of {found['profile_sample']} "
        f"({found['profile_hits'] / max(found['profile_sample'], 1):.0%}); "
        f"{found['segments']} segments."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-url", default=DEFAULT_PG, help="PostgreSQL server to use")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=10, help="length of one wrk run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--demo-users", type=int, default=20_000)
    parser.add_argument("--held-out", type=int, default=1_000, help="hidden (learner, course)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-holdout", action="store_true")
    parser.add_argument("--write-readme", action="store_true", help="put the figures in README")
    args = parser.parse_args()
    if not args.skip_speed and shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install -y wrk")
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    ran = f"({machine}, {datetime.now(UTC):%Y-%m-%d})"
    if not args.skip_speed:
        results = speed(args)
        rows = [
            "| request | p50 ms | p99 ms | requests/s | server CPU ms/request | errors |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        loads = [r["load"] for runs in results.values() for r in runs]
        for name, runs in results.items():
            rows.append(
                f"| {name} | {summary([r['p50'] for r in runs], '{:.2f}')} | "
                f"{summary([r['p99'] for r in runs], '{:.2f}')} | "
                f"{summary([r['rps'] for r in runs])} | "
                f"{summary([r['cpu'] for r in runs], '{:.1f}')} | "
                f"{sum(r['errors'] for r in runs)} |"
            )
        note = (
            f"One connection (wrk, 1 thread) against one uvicorn worker, median (min–max) of "
            f"{args.repeats} runs of {args.seconds} s after a warm-up. Model: {args.users:,} "
            f"users × {args.items:,} items × {args.factors} factors, {SEGMENTS} segments; "
            f"catalog of {args.items:,} courses; the profile is u0000000's, "
            f"{HEAVY_EVENTS:,} events on {HEAVY_COURSES} courses over {HEAVY_DAYS} days; "
            f"audiences of random courses, and of one random category of {len(CATEGORIES)}. "
            f"Server CPU: the worker's user + system time over a run / its requests. 1-minute "
            f"load average at the end of the runs: {summary(loads, '{:.1f}')} (above the number "
            f"of cores, latencies include waiting for one)."
        )
        print("\n".join(rows))
        print(note)
        if args.write_readme:
            command = "`python bench/portrait.py --skip-holdout --write-readme`"
            write_readme_section(
                "portrait", f"{command} {ran}:\n\n" + "\n".join(rows) + "\n\n" + note + "\n"
            )
        p99 = {name: statistics.median(r["p99"] for r in runs) for name, runs in results.items()}
        print(f"median p99 ms: {p99}")
    if not args.skip_holdout:
        found = holdout(args)
        print(found)
        line = holdout_line(found, args.demo_users)
        print(line)
        if args.write_readme:
            command = "`python bench/portrait.py --skip-speed --write-readme`"
            write_readme_section("portrait-holdout", f"{command} {ran}: {line}\n")


if __name__ == "__main__":
    main()

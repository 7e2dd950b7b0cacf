"""Explanations for a learner with a long history: GET recommendations?explain=true over HTTP.

    python bench/explain.py [--items 50000 --history 5000 --users 20000 --requests 200]
                            [--sqlite] [--write-readme]

Sets up a throw-away PostgreSQL database (or, with --sqlite, a temporary SQLite file), starts
`recsvc serve` with one uvicorn worker, stores a generated catalog (`--items` courses with
titles) and seeded events over HTTP: `--users` background learners with `--per-user` events
each on power-law popular courses, plus one learner ("u-long") with `--history` events on as
many distinct courses. Then trains a model through POST /v1/models/train (64 factors by
default), so every event of u-long is older than the model and the explain path works on the
long stored history (strategy "als", no fold-in), and measures sequential requests (one
connection, keep-alive, `--requests` each after a warm-up) of
GET /v1/users/u-long/recommendations with explain=true and n=100, explain=true and n=10, and
without explain (n=100, n=10) for comparison: median, p99 and max milliseconds, client side.
Not covered: concurrent requests, a client on another machine.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from contextlib import ExitStack  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402

from common import (  # noqa: E402
    BENCH_KEY,
    DEFAULT_PG,
    recsvc_server,
    throwaway_database,
    write_readme_section,
)

LEARNER = "u-long"
TYPES = np.array(["view", "click", "search_click", "favorite", "enroll", "purchase", "complete"])
TYPE_SHARE = np.array([0.5, 0.15, 0.08, 0.07, 0.1, 0.05, 0.05])
CASES = (  # (label, explain, n)
    ("explain=true, n=100", True, 100),
    ("explain=true, n=10", True, 10),
    ("no explain, n=100", False, 100),
    ("no explain, n=10", False, 10),
)


def item_id(i: int) -> str:
    return f"c{i:06d}"


def event_batches(
    users: int, per_user: int, items: int, history: int, batch: int = 1000
) -> list[bytes]:
    """Seeded events: LEARNER's long history, then background learners on power-law items."""
    rng = np.random.default_rng(0)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    user_col = np.repeat([f"u{u:06d}" for u in range(users)], per_user)
    item_col = rng.choice(items, size=users * per_user, p=popularity / popularity.sum())
    long_items = rng.choice(items, size=history, replace=False)  # distinct courses
    user_col = np.concatenate([np.full(history, LEARNER), user_col])
    item_col = np.concatenate([long_items, item_col])
    types = rng.choice(TYPES, size=len(user_col), p=TYPE_SHARE)
    start = datetime.now(UTC) - timedelta(days=20)
    bodies = []
    for first in range(0, len(user_col), batch):
        events = [
            {
                "event_id": f"e{k}",
                "user_id": str(user_col[k]),
                "item_id": item_id(int(item_col[k])),
                "type": str(types[k]),
                "timestamp": (start + timedelta(seconds=k)).isoformat(),
            }
            for k in range(first, min(first + batch, len(user_col)))
        ]
        bodies.append(orjson.dumps({"events": events}))
    return bodies


def load_and_train(client: httpx.Client, args: argparse.Namespace) -> str:
    for first in range(0, args.items, 1000):
        body = {
            "items": [
                {"item_id": item_id(i), "title": f"Course {i}", "categories": [f"cat{i % 20}"]}
                for i in range(first, min(first + 1000, args.items))
            ]
        }
        client.post("/v1/items/batch", json=body).raise_for_status()
    bodies = event_batches(args.users, args.per_user, args.items, args.history)
    began = time.perf_counter()
    for body in bodies:
        response = client.post(
            "/v1/events", content=body, headers={"content-type": "application/json"}
        )
        response.raise_for_status()
    seconds = time.perf_counter() - began
    print(f"stored {len(bodies)} batches of events in {seconds:.1f} s", flush=True)
    began = time.perf_counter()
    job = client.post("/v1/models/train", json={"force": True}).json()
    while job["state"] in ("queued", "running"):
        time.sleep(1)
        job = client.get(f"/v1/models/jobs/{job['job_id']}").json()
    if job["state"] != "succeeded":
        raise SystemExit(f"training failed: {job}")
    print(f"trained {job['version']} in {time.perf_counter() - began:.1f} s", flush=True)
    deadline = time.monotonic() + 30
    while True:  # the worker swaps to the new model within RECSVC_MODEL_POLL_SECONDS
        answer = client.get(f"/v1/users/{LEARNER}/recommendations", params={"n": 1}).json()
        if answer.get("model_version") == job["version"]:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"the server did not serve the new model: {answer}")
        time.sleep(0.5)
    return str(job["version"])


def measure(client: httpx.Client, explain: bool, n: int, requests: int) -> tuple[list[float], str]:
    """Milliseconds of `requests` sequential requests, and the strategy that answered."""
    path = f"/v1/users/{LEARNER}/recommendations"
    params = {"n": n, "explain": "true" if explain else "false"}
    for _ in range(3):  # warm-up
        client.get(path, params=params).raise_for_status()
    timings = []
    for _ in range(requests):
        began = time.perf_counter()
        response = client.get(path, params=params)
        timings.append((time.perf_counter() - began) * 1000)
        response.raise_for_status()
    answer = response.json()
    assert len(answer["items"]) == n
    if explain:
        assert all(item["reasons"] for item in answer["items"]), "an item without reasons"
    return timings, answer["strategy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-url", default=DEFAULT_PG, help="PostgreSQL server to use")
    parser.add_argument("--sqlite", action="store_true", help="a temporary SQLite file instead")
    parser.add_argument("--items", type=int, default=50_000, help="catalog size")
    parser.add_argument("--history", type=int, default=5_000, help="u-long's events")
    parser.add_argument("--users", type=int, default=20_000, help="background learners")
    parser.add_argument("--per-user", type=int, default=15, help="events per background learner")
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--requests", type=int, default=200, help="measured requests per case")
    parser.add_argument("--write-readme", action="store_true", help="put the figures in README")
    args = parser.parse_args()

    results: dict[str, tuple[list[float], str]] = {}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if args.sqlite:
            url = f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
        else:
            url = stack.enter_context(throwaway_database(args.server_url))
        base = stack.enter_context(
            recsvc_server(
                url,
                RECSVC_MODELS_DIR=str(tmp / "models"),
                RECSVC_ALS_FACTORS=str(args.factors),
            )
        )
        client = stack.enter_context(
            httpx.Client(base_url=base, headers={"X-API-Key": BENCH_KEY}, timeout=600)
        )
        version = load_and_train(client, args)
        for label, explain, n in CASES:
            results[label] = measure(client, explain, n, args.requests)
            values, strategy = np.asarray(results[label][0]), results[label][1]
            print(
                f"{label} ({strategy}): median {np.median(values):.1f} ms, p99 "
                f"{np.percentile(values, 99):.1f} ms, max {values.max():.1f} ms",
                flush=True,
            )

    table = "\n".join(
        [
            "| request | strategy | median ms | p99 ms | max ms |",
            "| --- | --- | --- | --- | --- |",
            *(
                f"| {label} | {strategy} | {np.median(v):.1f} | {np.percentile(v, 99):.1f} | "
                f"{max(v):.1f} |"
                for label, (v, strategy) in results.items()
            ),
        ]
    )
    database = "SQLite" if args.sqlite else "PostgreSQL on the same machine"
    note = (
        f"GET /v1/users/{{id}}/recommendations for a learner with {args.history:,} events on as "
        f"many distinct courses, all stored before the model was trained; {args.requests} "
        f"sequential requests per row after a warm-up, one connection, measured by the client "
        f"(p99: linear interpolation). Model trained by POST /v1/models/train ({version}): "
        f"{args.users:,} other learners with {args.per_user} events each, {args.items:,} "
        f"courses, {args.factors} factors; one uvicorn worker, {database}."
    )
    print(table)
    print(note)
    if args.write_readme:
        machine = f"{platform.machine()}, {os.cpu_count()} cores"
        command = "python bench/explain.py" + (" --sqlite" if args.sqlite else "")
        write_readme_section(
            "explain",
            f"`{command} --write-readme` ({machine}, {datetime.now(UTC):%Y-%m-%d}):\n\n"
            f"{table}\n\n{note}\n",
        )


if __name__ == "__main__":
    main()

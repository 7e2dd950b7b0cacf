"""The dashboard's overview at 10M events: how fast its data call answers, and how soon the page
has its data drawn in a real browser.

    python bench/dashboard.py [--events 10000000 --users 1000000 --items 100000] [--write-readme]

Loads bench/train.py's deterministic power-law data set (shifted so that its newest events are
from now, so the 24-hour and 7-day charts have data) into a throw-away PostgreSQL database with
COPY, a catalog of the first `--catalog` (10,000) of its courses with titles, and recomputes
the hourly rollup (stats.rebuild_rollup, as migration 0005 does); none of that is measured.
Then, against a real `recsvc serve` (one worker):

* GET /v1/stats/overview, the one data call the overview page makes (every 5 s): `--calls`
  sequential calls after one warm-up, p50 and p99.
* The learners count the overview shows: the rows of event_learners, counted in the background
  at most every 10 s per worker while the dashboard asks (never in a request's time); timed
  alone.
* The page in Debian's Chromium (Playwright, /usr/bin/chromium): signed in, the overview loaded
  `--loads` times, each in a new tab (after one uncounted load that warms the browser up);
  time from navigation start to both charts drawn with data (performance.now() when the first
  answer is drawn).
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from common import (  # noqa: E402
    BENCH_KEY,
    DEFAULT_PG,
    recsvc_server,
    throwaway_database,
    write_readme_section,
)
from recsvc import db, stats  # noqa: E402
from train import generate  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


async def load(url: str, n_events: int, n_users: int, n_items: int, n_courses: int) -> None:
    """bench/train.py's events, moved forward so the newest is now, and the catalog."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        shift = None
        loaded = 0
        for rows in generate(n_events, n_users, n_items):
            if shift is None:
                shift = datetime.now(UTC) - rows[0][5]  # the generator's end
            await conn.copy_records_to_table(
                "events",
                records=[(u, i, t, v, o + shift, r + shift) for u, i, t, v, o, r in rows],
                columns=["user_id", "item_id", "type", "value", "occurred_at", "received_at"],
            )
            loaded += len(rows)
            print(f"  loaded {loaded:,} events", flush=True)
        now = datetime.now(UTC)
        await conn.copy_records_to_table(
            "items",
            records=[
                (f"c{i:06d}", f"课程 {i}", "", "[]", "[]", "{}", True, now, now)
                for i in range(n_courses)
            ],
            columns=[
                "id",
                "title",
                "description",
                "categories",
                "tags",
                "attributes",
                "available",
                "created_at",
                "updated_at",
            ],
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    engine = db.make_engine(url)
    try:
        async with db.make_sessionmaker(engine)() as session, session.begin():
            await stats.rebuild_rollup(session)
    finally:
        await engine.dispose()


async def count_learners(url: str) -> float:
    engine = db.make_engine(url)
    try:
        counter = stats.LearnerCount(db.make_sessionmaker(engine), set())
        started = time.perf_counter()
        await counter._count()
        return time.perf_counter() - started
    finally:
        await engine.dispose()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def time_calls(base: str, calls: int) -> tuple[list[float], dict]:
    headers = {"X-API-Key": BENCH_KEY}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        body = client.get("/v1/stats/overview").json()  # warm-up (starts the learner count)
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            response = client.get("/v1/stats/overview")
            times.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
            body = response.json()
    return times, body


def time_page(base: str, loads: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    drawn = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            # The bench's key, put where the sign-in form puts it (never in a URL).
            context.add_init_script(f"sessionStorage.setItem('recsvc.apiKey', '{BENCH_KEY}')")
            for _ in range(loads + 1):  # the first (cold browser) is not counted
                page = context.new_page()
                page.goto(f"{base}/dashboard/#overview")
                page.wait_for_selector("body[data-overview=drawn]", timeout=30_000)
                assert page.locator("#chart-7d[data-drawn] canvas").count() == 1
                drawn.append(page.evaluate("window.recsvcOverviewDrawnAt"))
                page.close()
            drawn = drawn[1:]
        finally:
            browser.close()
    return drawn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-url", default=DEFAULT_PG, help="PostgreSQL server to use")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--catalog", type=int, default=10_000, help="courses in the catalog")
    parser.add_argument("--calls", type=int, default=50, help="overview calls to time")
    parser.add_argument("--loads", type=int, default=10, help="page loads to time")
    parser.add_argument("--write-readme", action="store_true", help="put the figures in README")
    args = parser.parse_args()

    with throwaway_database(args.server_url) as url:
        started = time.perf_counter()
        asyncio.run(load(url, args.events, args.users, args.items, args.catalog))
        print(f"data loaded in {time.perf_counter() - started:.0f} s (not part of the figures)")
        learners_seconds = asyncio.run(count_learners(url))
        with recsvc_server(url) as base:
            calls, body = time_calls(base, args.calls)
            pages = time_page(base, args.loads)

    types = len(body["events_per_hour"]["counts"])
    lines = [
        "| measure | p50 | p99 | max |",
        "| --- | --- | --- | --- |",
        f"| GET /v1/stats/overview ({args.calls} calls), ms | {percentile(calls, 50):.1f} | "
        f"{percentile(calls, 99):.1f} | {max(calls):.1f} |",
        f"| overview page: navigation to charts drawn ({args.loads} loads), ms | "
        f"{percentile(pages, 50):.0f} | {percentile(pages, 99):.0f} | {max(pages):.0f} |",
    ]
    summary = (
        f"{body['events_total']:,} events, {body['courses_total']:,} courses; the 7-day chart "
        f"reads at most {types} × 168 rollup rows. The learners count "
        f"({body['learners_total'] or 0:,} learners: the rows of event_learners, counted in the "
        f"background at most every 10 s, never in a request) takes {learners_seconds * 1000:.0f} "
        f"ms alone. Page loads: median {statistics.median(pages):.0f} ms."
    )
    print("\n".join(lines))
    print(summary)
    if args.write_readme:
        machine = f"{platform.machine()}, {os.cpu_count()} cores"
        command = "python bench/dashboard.py --write-readme"
        if args.events != 10_000_000:
            command = f"python bench/dashboard.py --events {args.events:,} --write-readme".replace(
                ",", "_"
            )
        write_readme_section(
            "dashboard",
            f"`{command}` ({machine}, {datetime.now(UTC):%Y-%m-%d}, PostgreSQL and Chromium on "
            f"the same machine, one `recsvc serve` worker):\n\n"
            + "\n".join(lines)
            + f"\n\n{summary}\n",
        )


if __name__ == "__main__":
    main()

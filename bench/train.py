"""The whole training pipeline on generated data: 10M events, 1M users, 100k items, PostgreSQL.

    python bench/train.py [--events 10000000 --users 1000000 --items 100000] [--write-readme]
    python bench/train.py --engine spark [--spark-master local[2]] [--write-readme]

Loads a deterministic power-law data set (seed 0: item popularity and user activity follow
Zipf-like laws, eight event types, 180 days of timestamps) into a throw-away PostgreSQL database
with COPY (not measured), then runs `recsvc train`'s pipeline once and prints every stage: the
events query, features, holdout split, the two ALS fits (on the holdout's training part, then
on all data), evaluation (candidate and popularity on up to RECSVC_EVAL_MAX_USERS sampled test
users), text index, save. Peak memory is the process's maximum resident set size. One run: the
fit dominates and takes minutes; the point is the ratio of the other stages to it.

`--engine spark`: the same data, exported with `recsvc export events` (measured: stage
`export`), then `recsvc train --engine spark`'s pipeline in Spark local mode (features =
reading the Parquet export and computing the pair weights, vocabularies and holdout in Spark,
then collecting the pairs; split = the driver's matrices; the two MLlib ALS fits). Peak memory
is then the Python driver's only (the JVM's is bounded by spark.driver.memory, --driver-memory).
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402

import asyncpg  # noqa: E402
import numpy as np  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from common import DEFAULT_PG, throwaway_database, write_readme_section  # noqa: E402
from recsvc import db, pipeline  # noqa: E402
from recsvc.config import Settings  # noqa: E402

TYPES = np.array(
    ["view", "click", "search_click", "favorite", "enroll", "purchase", "complete", "rate"]
)
TYPE_SHARE = np.array([0.45, 0.15, 0.08, 0.06, 0.12, 0.06, 0.05, 0.03])


def power_law(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


def generate(n_events: int, n_users: int, n_items: int, chunk: int = 1_000_000):
    """Yields chunks of rows (user, item, type, value, occurred_at, received_at)."""
    rng = np.random.default_rng(0)
    item_p, user_p = power_law(n_items, 0.9), power_law(n_users, 0.6)
    end = datetime(2026, 11, 1, tzinfo=UTC)
    for start in range(0, n_events, chunk):
        size = min(chunk, n_events - start)
        users = rng.choice(n_users, size=size, p=user_p)
        items = rng.choice(n_items, size=size, p=item_p)
        types = rng.choice(len(TYPES), size=size, p=TYPE_SHARE)
        values = rng.integers(1, 6, size=size).astype(float)
        ages = rng.uniform(0, 180 * 86400, size=size)
        rows = []
        for u, i, t, v, age in zip(users, items, types, values, ages, strict=True):
            kind = TYPES[t]
            when = end - timedelta(seconds=float(age))
            rows.append((f"u{u:07d}", f"c{i:06d}", kind, v if kind == "rate" else None, when, end))
        yield rows


async def load(url: str, n_events: int, n_users: int, n_items: int) -> None:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        loaded = 0
        for rows in generate(n_events, n_users, n_items):
            await conn.copy_records_to_table(
                "events",
                records=rows,
                columns=["user_id", "item_id", "type", "value", "occurred_at", "received_at"],
            )
            loaded += len(rows)
            print(f"  loaded {loaded:,} events", flush=True)
        await conn.execute("ANALYZE events")
    finally:
        await conn.close()


async def train(
    settings: Settings, spark: pipeline.SparkTraining | None = None
) -> pipeline.TrainingOutcome:
    engine = db.make_engine(settings.database_url)
    try:
        return await pipeline.run_training(
            settings, db.make_sessionmaker(engine), force=True, spark=spark
        )
    finally:
        await engine.dispose()


async def export_events(settings: Settings, directory: Path) -> float:
    from recsvc import export

    engine = db.make_engine(settings.database_url)
    try:
        started = time.perf_counter()
        await export.export_events(db.make_sessionmaker(engine), directory)
        return time.perf_counter() - started
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-url", default=DEFAULT_PG, help="PostgreSQL server to use")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--write-readme", action="store_true", help="put the figures in README")
    parser.add_argument("--engine", choices=["implicit", "spark"], default="implicit")
    parser.add_argument("--spark-master", default="local[2]")
    parser.add_argument("--driver-memory", default="8g", help="spark.driver.memory (local mode)")
    args = parser.parse_args()

    with throwaway_database(args.server_url) as url, tempfile.TemporaryDirectory() as models:
        started = time.perf_counter()
        asyncio.run(load(url, args.events, args.users, args.items))
        print(f"data loaded in {time.perf_counter() - started:.0f} s (not part of the figures)")
        settings = Settings(database_url=url, models_dir=Path(models), auth_disabled=True)
        if args.engine == "spark":
            directory = Path(models) / "export"
            export_seconds = asyncio.run(export_events(settings, directory))
            print(f"exported in {export_seconds:.0f} s", flush=True)
            job = pipeline.SparkTraining(
                directory,
                master=args.spark_master,
                shuffle_partitions=16,
                config={"spark.driver.memory": args.driver_memory, "spark.ui.enabled": "false"},
            )
            outcome = asyncio.run(train(settings, job))
            outcome.seconds = {"export": export_seconds, **outcome.seconds}
        else:
            outcome = asyncio.run(train(settings))

    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    fit = outcome.seconds["fit_holdout"] + outcome.seconds["fit_final"]
    other = sum(outcome.seconds.values()) - fit
    lines = [f"| {stage} | {sec:.1f} |" for stage, sec in outcome.seconds.items()]
    threads = f"MLlib, {args.spark_master}" if args.engine == "spark" else "1 thread"
    summary = (
        f"{outcome.n_events:,} events → {outcome.n_users:,} users × {outcome.n_items:,} items; "
        f"ALS fits (holdout + final, {settings.als_factors} factors, {settings.als_iterations} "
        f"iterations, {threads}) {fit:.0f} s; every other stage together {other:.0f} s "
        f"({other / fit:.2f}× the fits, {other / outcome.seconds['fit_final']:.2f}× the final "
        f"fit alone); peak memory {peak_gib:.1f} GiB. (Random data has no taste to learn: "
        f"its quality metrics mean nothing; bench/quality.py measures quality.)"
    )
    print("\n".join(["| stage | seconds |", "| --- | --- |", *lines]))
    print(summary)
    if args.write_readme:
        machine = f"{platform.machine()}, {os.cpu_count()} cores"
        spark = args.engine == "spark"
        command = (
            f"python bench/train.py --engine spark --spark-master {args.spark_master} "
            "--write-readme"
            if spark
            else "python bench/train.py --write-readme"
        )
        write_readme_section(
            "train-spark" if spark else "train",
            f"`{command}` ({machine}, {datetime.now(UTC):%Y-%m-%d}, "
            f"PostgreSQL on the same machine, one run):\n\n"
            + "\n".join(["| stage | seconds |", "| --- | --- |", *lines])
            + f"\n\n{summary}\n",
        )


if __name__ == "__main__":
    main()

"""The `recsvc` command (also `python -m recsvc`): serve, migrate, import, export, train,
openapi, ..."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from recsvc import db, logs
from recsvc.config import Settings, get_settings

log = logging.getLogger("recsvc")


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"RECSVC_{'_'.join(str(p) for p in e['loc']).upper() or '*'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise CommandError(f"invalid setting: {problems}") from None


class CommandError(Exception):
    """An expected failure of a command: printed as one line, exit code 1."""


@asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """The configured database, migrated if needed, for the length of one command."""
    await db.upgrade(settings.database_url)
    # Capped at what `recsvc serve` leaves free on the server for one CLI process.
    engine = db.make_engine(settings.database_url, pool_size=db.CLI_CONNECTIONS, max_overflow=0)
    try:
        yield db.make_sessionmaker(engine)
    finally:
        await engine.dispose()


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings()
    asyncio.run(db.upgrade(settings.database_url))
    print(f"database at revision {db.head_revision()}: {_redacted(settings.database_url)}")
    return 0


async def connection_limit_problem(settings: Settings, workers: int) -> str | None:
    """Why `workers` serving processes would not fit in the PostgreSQL server's connection
    limit (one line), or None when they fit or the database is SQLite.

    Counted: each worker's whole budget (RECSVC_DB_CONNECTIONS_PER_WORKER, db.ConnectionBudget)
    and one CLI process (db.CLI_CONNECTIONS, e.g. `recsvc train` from cron), against
    max_connections minus the reserved slots. Not counted, and the operator's to leave room for:
    other replicas on other machines, and other clients of the same server.
    """
    limit = await db.server_connection_limit(settings.database_url)
    if limit is None:
        return None
    per_worker = db.connection_budget(settings).total
    needed = workers * per_worker + db.CLI_CONNECTIONS
    if needed <= limit:
        return None
    return (
        f"{workers} workers x {per_worker} connections (RECSVC_DB_CONNECTIONS_PER_WORKER) + "
        f"{db.CLI_CONNECTIONS} for `recsvc train` = {needed}, more than the {limit} the "
        "PostgreSQL server accepts (max_connections minus reserved connections); use fewer "
        "--workers, a smaller RECSVC_DB_CONNECTIONS_PER_WORKER or a larger max_connections, "
        "or start anyway with --ignore-connection-limit"
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings()
    try:
        settings.require_auth_configured()
    except ValueError as exc:
        raise SystemExit(f"recsvc: {exc}") from None
    asyncio.run(db.upgrade(settings.database_url))
    problem = asyncio.run(connection_limit_problem(settings, args.workers))
    if problem is not None:
        if not getattr(args, "ignore_connection_limit", False):
            raise SystemExit(f"recsvc serve: {problem}")
        log.warning("starting anyway (--ignore-connection-limit): %s", problem)
    metrics_dir = fresh_metrics_directory()
    previous = os.environ.get(MULTIPROC_ENV)
    if metrics_dir is not None:
        os.environ[MULTIPROC_ENV] = str(metrics_dir)
    try:
        uvicorn.run(
            "recsvc.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_config=logs.config(settings.log_format or "json", args.log_level, args.verbose),
            log_level=args.log_level,
            access_log=False,
            timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            if previous is None:
                os.environ.pop(MULTIPROC_ENV, None)
            else:
                os.environ[MULTIPROC_ENV] = previous
    return 0


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def fresh_metrics_directory() -> Path | None:
    """Each start of `recsvc serve` gets its own empty PROMETHEUS_MULTIPROC_DIR (set in the
    environment its workers inherit), so that any worker answers a scrape with the sum over all
    of them (metrics.py). prometheus-client chooses its value store when it is imported, so in
    a process that imported it already (recsvc used as a library, tests) there is none: the
    values stay that process's own."""
    if "prometheus_client" in sys.modules:
        log.warning("prometheus_client is already imported: metrics count this process only")
        return None
    return Path(tempfile.mkdtemp(prefix="recsvc-metrics-"))


def cmd_import(args: argparse.Namespace) -> int:
    from recsvc.bulk import run_import
    from recsvc.schemas import ValidationRules

    settings = _settings()

    async def go() -> int:
        async with _database(settings) as sessionmaker:
            report = await run_import(
                args.kind,
                args.file,
                sessionmaker,
                ValidationRules.from_settings(settings),
                batch_size=args.batch_size,
                progress=not args.quiet,
            )
        extra = f", {report.duplicates} duplicates skipped" if args.kind == "events" else ""
        print(
            f"{args.kind}: {report.read} rows read, {report.stored} stored{extra}, "
            f"{len(report.rejected)} rejected"
        )
        for line, reason in report.rejected[: args.show_rejected]:
            print(f"  line {line}: {reason}", file=sys.stderr)
        if len(report.rejected) > args.show_rejected:
            print(f"  ... and {len(report.rejected) - args.show_rejected} more", file=sys.stderr)
        return 1 if report.rejected else 0

    return asyncio.run(go())


METRIC_ORDER = ("ndcg@10", "precision@10", "recall@10", "map@10", "coverage")
# Recorded when training knows the course families (training.evaluate with family_of): the
# metrics above are then on the lists as served, one edition per family.
FAMILY_METRIC_ORDER = ("family_ndcg@10", "item_ndcg@10", "distinct_families@10", "ild@10")


def metrics_table(
    rows: dict[str, dict[str, float] | None], columns: tuple[str, ...] = METRIC_ORDER
) -> str:
    """Model rows x metric columns, as plain text (nan: not recorded for that model)."""
    widths = [max(14, len(name) + 2) for name in columns]
    header = f"{'model':<22}" + "".join(f"{n:>{w}}" for n, w in zip(columns, widths, strict=True))
    lines = [header, "-" * len(header)]
    for label, values in rows.items():
        if values is not None:
            cells = (
                f"{values.get(m, math.nan):>{w}.4f}" for m, w in zip(columns, widths, strict=True)
            )
            lines.append(f"{label:<22}" + "".join(cells))
    return "\n".join(lines)


async def _train(settings: Settings, force: bool, spark: Any = None) -> int:
    """Run one training job to its end and print what happened; the exit code. `spark`: a
    pipeline.SparkTraining for `--engine spark`."""
    from recsvc import export_files, pipeline, registry
    from recsvc.errors import Conflict

    async with _database(settings) as sessionmaker:
        async with sessionmaker() as session:
            try:
                job = await registry.create_job(session, force, settings.job_stale_after)
            except Conflict as exc:
                print(f"recsvc train: {exc.detail}", file=sys.stderr)
                return 2
        try:
            outcome = await pipeline.run_job(settings, sessionmaker, job.job_id, force, spark)
        except (
            pipeline.NoData,
            pipeline.EngineUnavailable,
            export_files.ExportError,
        ) as exc:
            raise CommandError(str(exc)) from None
    print(
        f"version {outcome.version} (job {job.job_id}): {outcome.n_users:,} users, "
        f"{outcome.n_items:,} items, {outcome.n_events:,} events"
    )
    holdout = {"als (candidate)": outcome.metrics, "popularity": outcome.baseline_metrics}
    if "family_ndcg@10" in outcome.metrics:
        limit = settings.max_per_family
        print(f"holdout lists as served, at most {limit} edition(s) per course family:")
    print(metrics_table(holdout))
    if "family_ndcg@10" in outcome.metrics:
        # item_ndcg@10: the plain top-10 before family dedup, comparable with older versions.
        print(metrics_table(holdout, FAMILY_METRIC_ORDER))
    comparison = outcome.comparison
    if comparison is not None:
        basis = (
            f"on the holdout pairs of {comparison.n_users:,} users it never trained on"
            if comparison.basis == "unseen_pairs"
            else "each on its own holdout (no new data since the active model)"
        )
        print(f"\ncandidate vs active {outcome.active_version}, {basis}:")
        compared = {"candidate": comparison.candidate, "active": comparison.active}
        print(metrics_table(compared))
        if "family_ndcg@10" in comparison.candidate:
            print(metrics_table(compared, FAMILY_METRIC_ORDER))
    stages = ", ".join(f"{name} {sec:.2f}s" for name, sec in outcome.seconds.items())
    print(f"stages: {stages}")
    if outcome.activated:
        print(f"activated {outcome.version}" + (" (forced)" if force else ""))
    else:
        print(
            f"not activated: worse than {outcome.active_version} on ndcg@10 (activate it anyway "
            f"with --force or POST /v1/models/{outcome.version}/activate)"
        )
    return 0


def _spark_training(args: argparse.Namespace, settings: Settings) -> Any:
    """The Spark engine's options from `recsvc train`'s arguments (None: the implicit engine)."""
    from recsvc.pipeline import SparkTraining

    if args.engine != "spark":
        if args.events is not None or args.spark_master is not None or args.spark_conf:
            raise CommandError("--events, --spark-master and --spark-conf go with --engine spark")
        return None
    events = args.events or settings.export_dir
    if events is None:
        raise CommandError(
            "--engine spark needs --events DIR (a `recsvc export events DIR` folder) or "
            "RECSVC_EXPORT_DIR"
        )
    config: dict[str, str] = {}
    for setting in args.spark_conf or []:
        key, equals, value = setting.partition("=")
        if not equals or not key.strip():
            raise CommandError(f"--spark-conf takes KEY=VALUE, got {setting!r}")
        config[key.strip()] = value
    return SparkTraining(Path(events), master=args.spark_master, config=config)


def cmd_train(args: argparse.Namespace) -> int:
    settings = _settings()
    spark = _spark_training(args, settings)
    if spark is not None:
        from recsvc.pipeline import EngineUnavailable, spark_engine_module

        try:
            spark_engine_module()
        except EngineUnavailable as exc:
            raise CommandError(str(exc)) from None
    if args.every is None:
        return asyncio.run(_train(settings, args.force, spark))
    # A scheduled trainer (e.g. compose's `trainer` service): train now and then every
    # DURATION, whatever one run's outcome; SIGTERM ends it with exit code 0.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        started = time.monotonic()
        try:
            asyncio.run(_train(settings, args.force, spark))
        except Exception as exc:
            if args.verbose:
                log.exception("training failed")
            else:
                print(f"recsvc train: {describe(exc, settings)}", file=sys.stderr)
        pause = max(0.0, args.every - (time.monotonic() - started))
        print(f"next training in {pause:,.0f} s", file=sys.stderr, flush=True)
        time.sleep(pause)


def cmd_export(args: argparse.Namespace) -> int:
    from recsvc import export, export_files

    settings = _settings()
    directory = args.dir or settings.export_dir
    if directory is None:
        raise CommandError("give the folder: recsvc export events DIR (or set RECSVC_EXPORT_DIR)")
    directory = Path(directory)

    async def go() -> export.ExportReport:
        async with _database(settings) as sessionmaker:
            return await export.export_events(sessionmaker, directory)

    try:
        report = asyncio.run(go())
        print(
            f"export run {report.run} into {directory}: {report.n_events:,} new events in "
            f"{report.files} file(s), up to {report.cutoff}; "
            f"{report.erased_logged} erased learner(s) newly logged"
        )
        if args.rewrite:
            files, removed = export.rewrite(directory)
            print(f"rewrote {files} file(s) without {removed:,} events of erased learners")
    except export_files.ExportError as exc:
        raise CommandError(str(exc)) from None
    return 0


def duration(text: str) -> float:
    """'90' or '90s', '30m', '6h', '1d' -> seconds (at least 60)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30m, 6h, 1d)") from None
    if seconds < 60:
        raise argparse.ArgumentTypeError("at least 60 seconds")
    return seconds


def cmd_evaluate(args: argparse.Namespace) -> int:
    from recsvc import pipeline

    settings = _settings()

    async def go() -> int:
        async with _database(settings) as sessionmaker:
            try:
                _, rows = await pipeline.run_evaluation(settings, sessionmaker)
            except ValueError as exc:
                print(f"recsvc evaluate: {exc}", file=sys.stderr)
                return 1
        print(metrics_table(rows))
        return 0

    return asyncio.run(go())


def cmd_tune(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from recsvc import pipeline

    settings = _settings()

    async def go() -> int:
        async with _database(settings) as sessionmaker:
            with tqdm(desc="tune", unit=" trials", file=sys.stderr, disable=None) as bar:
                try:
                    trials = await pipeline.run_tuning(
                        settings, sessionmaker, args.budget, on_trial=lambda _: bar.update(1)
                    )
                except ValueError as exc:
                    print(f"recsvc tune: {exc}", file=sys.stderr)
                    return 1
        header = f"{'confidence':<11}{'factors':>8}{'reg':>8}{'alpha':>7}"
        print(header + "".join(f"{m:>14}" for m in METRIC_ORDER) + f"{'seconds':>9}")
        for trial in trials:
            p = trial.params
            print(
                f"{p.confidence:<11}{p.factors:>8}{p.regularization:>8g}{p.alpha:>7g}"
                + "".join(f"{trial.metrics[m]:>14.4f}" for m in METRIC_ORDER)
                + f"{trial.seconds:>9.1f}"
            )
        print(
            f"best of {len(trials)} trials saved to "
            f"{settings.models_dir / pipeline.TUNED_FILE}; `recsvc train` uses it from now on"
        )
        return 0

    return asyncio.run(go())


def cmd_demo(args: argparse.Namespace) -> int:
    import json
    import os
    import secrets
    import tempfile

    from recsvc import ingest
    from recsvc.bulk import run_import
    from recsvc.demo_data import generate, write_jsonl
    from recsvc.schemas import ValidationRules

    if not os.environ.get("RECSVC_API_KEYS"):
        key = f"demo-{secrets.token_urlsafe(12)}"
        os.environ["RECSVC_API_KEYS"] = json.dumps({key: ["admin", "read", "ingest"]})
        get_settings.cache_clear()
    else:
        key = next(iter(_settings().api_keys))
    settings = _settings()

    async def load() -> None:
        async with _database(settings) as sessionmaker:
            async with sessionmaker() as session:
                if (await ingest.count_events(session)) > 0:
                    print("the database already holds events; not loading the demo set again")
                    return
            print("generating the demo data set (courses, learners, behaviour) ...")
            with tempfile.TemporaryDirectory() as tmp:
                files = write_jsonl(generate(), tmp)
                rules = ValidationRules.from_settings(settings)
                for kind in ("items", "users", "events"):
                    report = await run_import(kind, str(files[kind]), sessionmaker, rules)
                    print(f"loaded {report.stored:,} {kind}")

    asyncio.run(load())
    if asyncio.run(_train(settings, force=False)) != 0:
        return 1
    base = f"http://{args.host}:{args.port}"
    print(
        f"""
recsvc demo is starting on {base} (docs: {base}/docs)
API key (admin, read, ingest): {key}

  curl -s '{base}/v1/users/u00042/recommendations?n=5&explain=true' -H 'X-API-Key: {key}'
  curl -s '{base}/v1/users/u00042/profile?tz=Asia/Shanghai' -H 'X-API-Key: {key}'
  curl -s {base}/v1/segments -H 'X-API-Key: {key}'
  curl -s '{base}/v1/items/c0001/audience?n=20' -H 'X-API-Key: {key}'
  curl -s {base}/v1/models/active -H 'X-API-Key: {key}'
  curl -s -X POST {base}/v1/events -H 'X-API-Key: {key}' -H 'content-type: application/json' \\
       -d '{{"events": [{{"user_id": "u00042", "item_id": "c0001", "type": "enroll"}}]}}'
"""
    )
    args.workers = 1
    args.log_level = "warning"
    return cmd_serve(args)


def cmd_openapi(args: argparse.Namespace) -> int:
    from recsvc.app import create_app
    from recsvc.openapi import render_yaml

    app = create_app(Settings(auth_disabled=True))
    text = render_yaml(app)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    return 0


def _redacted(url: str) -> str:
    scheme, _, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    return f"{scheme}://{creds.split(':')[0]}:***@{host}" if at and ":" in creds else url


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsvc",
        description="Recommendation service for customer-service chatbots. Settings come from "
        "RECSVC_* environment variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also print Alembic's migration lines and tracebacks of failures",
    )

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    serve = command("serve", help="migrate the database if needed, then serve the API")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument("--workers", type=int, default=1, help="worker processes")
    serve.add_argument(
        "--ignore-connection-limit",
        action="store_true",
        help="start even when workers x RECSVC_DB_CONNECTIONS_PER_WORKER (+3 for `recsvc train`) "
        "exceed the PostgreSQL server's max_connections (only logs a warning)",
    )
    serve.add_argument("--log-level", default="info", help="uvicorn log level")
    serve.set_defaults(func=cmd_serve)

    migrate = command("migrate", help="upgrade the database schema to the latest version")
    migrate.set_defaults(func=cmd_migrate)

    imp = command(
        "import",
        help="bulk load events, items or users from CSV or JSON lines",
        description="Rows go through the same validation as the API; rejected rows are listed "
        "with line numbers and the exit code is 1 when any row was rejected.",
    )
    imp.add_argument("kind", choices=["events", "items", "users"], help="what the file holds")
    imp.add_argument("file", help="a .csv or .jsonl file, or - for standard input")
    imp.add_argument("--batch-size", type=int, default=1000, help="rows per transaction")
    imp.add_argument("--show-rejected", type=int, default=20, help="rejected rows to print")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.set_defaults(func=cmd_import)

    train = command(
        "train",
        help="train a model from the stored events, evaluate it, activate it if not worse",
        description="Builds features from all events, evaluates ALS against the popularity "
        "baseline and the active model on a holdout of each user's newest interactions, refits "
        "on all data, saves models/<version>/ and activates it unless it is worse than the "
        "active model on ndcg@10. Exit code 1 when training fails, 2 when a job is running.",
    )
    train.add_argument("--force", action="store_true", help="activate even if worse")
    train.add_argument(
        "--engine",
        choices=["implicit", "spark"],
        default="implicit",
        help="implicit: all events in this process (default); spark: Apache Spark MLlib on an "
        "events export (needs --events, the extra recsvc[spark] and Java 17)",
    )
    train.add_argument(
        "--events",
        metavar="DIR",
        help="--engine spark: the `recsvc export events` folder (default RECSVC_EXPORT_DIR)",
    )
    train.add_argument(
        "--spark-master",
        metavar="MASTER",
        help="--engine spark: local[2], spark://host:7077, yarn, ... (default: spark-submit's, "
        "else local[*])",
    )
    train.add_argument(
        "--spark-conf",
        action="append",
        metavar="KEY=VALUE",
        help="--engine spark: a Spark setting, e.g. spark.driver.memory=8g (repeatable)",
    )
    train.add_argument(
        "--every",
        type=duration,
        metavar="DURATION",
        help="keep running: train now and then every DURATION (e.g. 30m, 6h, 1d), also after "
        "a failed run; SIGTERM stops it",
    )
    train.set_defaults(func=cmd_train)

    exp = command(
        "export",
        help="write the events as Parquet, partitioned by day; incremental (for --engine spark)",
        description="Each run writes only the events stored since the previous run into "
        "DIR/events/day=YYYY-MM-DD/, records the database cutoff it reached in "
        "DIR/manifest.json and appends newly erased learners to DIR/erased.jsonl (training "
        "with --engine spark leaves their older events out).",
    )
    exp.add_argument("kind", choices=["events"], help="what to export")
    exp.add_argument("dir", nargs="?", metavar="DIR", help="folder (default RECSVC_EXPORT_DIR)")
    exp.add_argument(
        "--rewrite",
        action="store_true",
        help="also rewrite older files without the events of erased learners",
    )
    exp.set_defaults(func=cmd_export)

    evaluate = command(
        "evaluate",
        help="offline metrics of the active model and the popularity baseline, fresh holdout",
    )
    evaluate.set_defaults(func=cmd_evaluate)

    tune = command(
        "tune",
        help="search ALS hyperparameters within a time budget and keep the best for training",
        description="Tries factors, regularization, alpha and the confidence weighting on a "
        "random per-user holdout, in a seeded random order, until the budget is spent; prints "
        "every trial and saves the best to MODELS_DIR/tuned_params.json, which later trainings "
        "use (RECSVC_ALS_* variables still win).",
    )
    tune.add_argument("--budget", type=float, default=300, help="seconds to spend (default 300)")
    tune.set_defaults(func=cmd_tune)

    demo = command(
        "demo",
        help="load the bundled online-education data set, train, and serve, in one command",
        description="Uses RECSVC_DATABASE_URL (default ./recsvc.db). Prints an API key (or uses "
        "the first of RECSVC_API_KEYS) and example curl calls.",
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on")
    demo.add_argument("--port", type=int, default=8000, help="port to listen on")
    demo.set_defaults(func=cmd_demo)

    spec = command("openapi", help="write the OpenAPI document the service serves")
    spec.add_argument("-o", "--output", default="openapi.yaml", help="file, or - for stdout")
    spec.set_defaults(func=cmd_openapi)
    return parser


def describe(exc: BaseException, settings: Settings | None = None) -> str:
    """One line about why a command failed."""
    from recsvc.errors import is_database_unavailable

    if isinstance(exc, CommandError):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return f"no such file: {exc.filename}"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"cannot read {exc.filename}: {exc.strerror}"
    if is_database_unavailable(exc):
        where = _redacted(settings.database_url) if settings is not None else "the database"
        return f"cannot reach the database at {where} ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc} (run with --verbose for the traceback)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        log_format = get_settings().log_format or "text"
    except ValidationError:
        log_format = "text"  # the command reports the bad setting itself
    logs.configure(log_format, verbose=args.verbose)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.verbose:
            raise
        try:
            settings = get_settings()
        except ValidationError:
            settings = None
        print(f"recsvc {args.command}: {describe(exc, settings)}", file=sys.stderr)
        return 1

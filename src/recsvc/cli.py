"""The `recsvc` command (also `python -m recsvc`): serve, migrate, import, openapi."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from recsvc import db
from recsvc.config import Settings, get_settings

log = logging.getLogger("recsvc")


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        raise SystemExit(f"recsvc: invalid RECSVC_* setting:\n{exc}") from None


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings()
    asyncio.run(db.upgrade(settings.database_url))
    print(f"database at revision {db.head_revision()}: {_redacted(settings.database_url)}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings()
    try:
        settings.require_auth_configured()
    except ValueError as exc:
        raise SystemExit(f"recsvc: {exc}") from None
    asyncio.run(db.upgrade(settings.database_url))
    uvicorn.run(
        "recsvc.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=False,
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from recsvc.bulk import run_import
    from recsvc.schemas import ValidationRules

    settings = _settings()

    async def go() -> int:
        await db.upgrade(settings.database_url)
        engine = db.make_engine(settings.database_url)
        try:
            report = await run_import(
                args.kind,
                args.file,
                db.make_sessionmaker(engine),
                ValidationRules.from_settings(settings),
                batch_size=args.batch_size,
                progress=not args.quiet,
            )
        finally:
            await engine.dispose()
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

    serve = sub.add_parser("serve", help="migrate the database if needed, then serve the API")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument("--workers", type=int, default=1, help="worker processes")
    serve.add_argument("--log-level", default="info", help="uvicorn log level")
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="upgrade the database schema to the latest version")
    migrate.set_defaults(func=cmd_migrate)

    imp = sub.add_parser(
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

    spec = sub.add_parser("openapi", help="write the OpenAPI document the service serves")
    spec.add_argument("-o", "--output", default="openapi.yaml", help="file, or - for stdout")
    spec.set_defaults(func=cmd_openapi)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args))

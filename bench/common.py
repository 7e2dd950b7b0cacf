"""Shared pieces of the benchmark harness: a throw-away database, a recsvc server process,
median/min-max summaries and writing a figure into README between markers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from recsvc import db

ROOT = Path(__file__).resolve().parents[1]
BENCH_KEY = "k-bench-secret-key"
DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


async def _admin(server_url: str, sql: str) -> None:
    engine = db.make_engine(server_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@contextmanager
def throwaway_database(server_url: str, migrate: bool = True) -> Iterator[str]:
    """A new PostgreSQL database on `server_url`'s server, migrated (unless `migrate` is
    False), dropped afterwards."""
    name = f"recsvc_bench_{uuid.uuid4().hex[:8]}"
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    try:
        if migrate:
            asyncio.run(db.upgrade(url))
        yield url
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def recsvc_server(database_url: str, workers: int = 1, **env: str) -> Iterator[str]:
    """`recsvc serve` in its own process; yields its base URL once /readyz answers 200."""
    port = free_port()
    environment = {
        **os.environ,
        "RECSVC_DATABASE_URL": database_url,
        "RECSVC_API_KEYS": json.dumps({BENCH_KEY: ["admin", "read", "ingest"]}),
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        **env,
    }
    command = [sys.executable, "-m", "recsvc", "serve", "--port", str(port)]
    command += ["--workers", str(workers), "--log-level", "warning"]
    proc = subprocess.Popen(command, env=environment)  # noqa: S603
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("recsvc did not become ready")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(20)


def summary(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    """median (min–max)"""
    median, low, high = (fmt.format(v) for v in (statistics.median(values), *minmax(values)))
    return f"{median} ({low}–{high})"


def write_readme_section(name: str, body: str) -> None:
    """Replace the text between <!-- bench:NAME --> and <!-- /bench:NAME --> in README.md."""
    readme = ROOT / "README.md"
    text_ = readme.read_text(encoding="utf-8")
    pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
    if not pattern.search(text_):
        raise SystemExit(f"README.md has no <!-- bench:{name} --> markers")
    readme.write_text(pattern.sub(lambda m: m.group(1) + body + m.group(2), text_), "utf-8")
    print(f"README.md updated ({name})")


def minmax(values: Sequence[float]) -> tuple[float, float]:
    return min(values), max(values)

"""Shared fixtures: a real, migrated database (PostgreSQL or SQLite) and the app over HTTP.

The backend is chosen by RECSVC_TEST_DATABASE_URL (default: a fresh SQLite file). A PostgreSQL
URL that cannot be reached fails the run; it never silently skips.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from recsvc import db, registry
from recsvc.app import create_app
from recsvc.config import Settings

KEYS = {
    "k-ops-secret": ["admin", "read", "ingest"],
    "k-chatbot-secret": ["read"],
    "k-producer-secret": ["ingest"],
}
OPS = {"X-API-Key": "k-ops-secret"}
READ = {"X-API-Key": "k-chatbot-secret"}
INGEST = {"X-API-Key": "k-producer-secret"}
TABLES = [
    "events",
    "items",
    "users",
    "model_versions",
    "training_jobs",
    "erased_users",
    "revisions",
    "event_counts_hourly",
    "event_learners",
]


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, migrated database for this run. For PostgreSQL, a throw-away database is
    created on the server RECSVC_TEST_DATABASE_URL names and dropped afterwards."""
    given = os.environ.get("RECSVC_TEST_DATABASE_URL")
    if not given:
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
        _run(db.upgrade(url))
        yield url
        return
    server = make_url(given)
    name = f"recsvc_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    url = server.set(database=name).render_as_string(hide_password=False)

    async def admin(sql: str) -> None:
        engine = db.make_engine(
            server.render_as_string(hide_password=False),
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
        )
        try:
            async with engine.connect() as conn:
                await conn.execute(text(sql))
        finally:
            await engine.dispose()

    try:
        _run(admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.exit(f"cannot reach the test database server {given}: {exc}", returncode=3)
    try:
        _run(db.upgrade(url))
        yield url
    finally:
        _run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def is_postgres(database_url: str) -> bool:
    return not db.is_sqlite(database_url)


@pytest.fixture(autouse=True)
def clean_tables(database_url: str) -> None:
    async def clean() -> None:
        engine = db.make_engine(database_url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                if db.is_sqlite(database_url):
                    for table in TABLES:
                        await conn.execute(text(f"DELETE FROM {table}"))  # noqa: S608 (constants)
                else:
                    await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY"))
        finally:
            await engine.dispose()

    _run(clean())


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url, api_keys=KEYS, models_dir=tmp_path / "models")


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app with its lifespan running."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """HTTP to the app in-process (ASGITransport)."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://recsvc") as c:
        yield c


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerThread:
    """uvicorn serving the app on a real port, in a thread with its own event loop."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture
def server(settings: Settings) -> Iterator[ServerThread]:
    with ServerThread(settings) as running:
        yield running


async def scalar(database_url: str, sql: str, **params: Any) -> Any:
    """Read the database directly, bypassing the service under test."""
    engine = db.make_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text(sql), params)).scalar()
    finally:
        await engine.dispose()


async def rows(database_url: str, sql: str, **params: Any) -> list[Any]:
    """The first column of every row of a query, read directly from the database."""
    engine = db.make_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(text(sql), params)).scalars())
    finally:
        await engine.dispose()


async def activate_behind_the_api(database_url: str, version: str) -> None:
    """Activate a version in model_versions directly, as another replica or an operator with SQL
    could (no artifact check)."""
    engine = db.make_engine(database_url, poolclass=NullPool)
    try:
        async with db.make_sessionmaker(engine)() as session, session.begin():
            await registry.activate(session, version)
    finally:
        await engine.dispose()


def events(
    n: int, *, prefix: str = "e", user: str = "u1", **overrides: Any
) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"{prefix}{i}",
            "user_id": user,
            "item_id": f"c{i % 50}",
            "type": "view",
            **overrides,
        }
        for i in range(n)
    ]

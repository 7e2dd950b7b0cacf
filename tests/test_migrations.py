"""The migrations produce exactly the schema tables.py declares, on either database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.pool import NullPool

from recsvc import db, tables


def _diff(conn: Connection) -> list[object]:
    return compare_metadata(MigrationContext.configure(conn), tables.Base.metadata)


async def test_migrated_schema_matches_the_tables(database_url: str) -> None:
    engine = db.make_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
            assert await db.current_revision(engine) == db.head_revision()
    finally:
        await engine.dispose()


def test_replicas_migrating_together_do_not_race(database_url: str, is_postgres: bool) -> None:
    """Three `recsvc migrate` processes at once on a new database (replicas starting
    together): one migrates, the others wait for it and find the schema current."""
    if not is_postgres:
        pytest.skip("SQLite is one file on one machine: no replicas")
    server = make_url(database_url)
    name = f"recsvc_race_{uuid.uuid4().hex[:8]}"
    admin = server.set(database="postgres").render_as_string(hide_password=False)

    async def run(sql: str) -> None:
        engine = db.make_engine(admin, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(sql))
        finally:
            await engine.dispose()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        env = {
            **os.environ,
            "RECSVC_DATABASE_URL": server.set(database=name).render_as_string(hide_password=False),
        }
        procs = [
            subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "recsvc", "migrate"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        results = [proc.communicate(timeout=120) for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0, 0], results
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

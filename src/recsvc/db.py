"""Database plumbing: the declarative base, engine and session factories, migrations.

Engines are made by the app's lifespan or the CLI, never at import. The same schema runs on
PostgreSQL (asyncpg, production) and SQLite (aiosqlite, the embedded default).

How many PostgreSQL connections a process may open is decided here (`ConnectionBudget`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Column, MetaData, String, Table, event, inspect, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import NullPool

if TYPE_CHECKING:
    from recsvc.config import Settings

# Stable constraint names, so Alembic autogenerate and hand-written migrations agree.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# Alembic's bookkeeping table, read by readiness checks (not part of Base.metadata).
ALEMBIC_VERSION = Table("alembic_version", MetaData(), Column("version_num", String(32)))


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


# --- connections ------------------------------------------------------------------------------

DEFAULT_CONNECTIONS_PER_WORKER = 20
MIN_CONNECTIONS_PER_WORKER = 3
# At most what one `recsvc train` (import, evaluate, tune, migrate) process holds at once: a
# job's session and its heartbeat, and one spare. The CLI's engine is capped at it, and
# `recsvc serve` keeps it free on the server besides the workers' budgets.
CLI_CONNECTIONS = 3


@dataclass(frozen=True)
class ConnectionBudget:
    """One serving worker's PostgreSQL connections (RECSVC_DB_CONNECTIONS_PER_WORKER), shared
    between the three places that open them. The parts add up to `total`, the most the worker
    ever holds at once:

    * `listener`: 1, the LISTEN connection of freshness.FreshUsers;
    * `read_pool`: about 2/5 of the rest, the asyncpg pool of ingest.RecentEventsReader (the one
      query of the recommendation hot path);
    * `pool_size` + `max_overflow`: the remainder, SQLAlchemy's pool for everything else
      (ingest, catalog and model polls, admin calls, an in-process training job); a quarter of
      it is overflow, closed again after use.

    Requests beyond a pool's size wait for a connection (up to 5 s) instead of opening more.
    """

    total: int
    listener: int
    read_pool: int
    pool_size: int
    max_overflow: int

    @classmethod
    def split(cls, total: int) -> ConnectionBudget:
        if total < MIN_CONNECTIONS_PER_WORKER:
            raise ValueError(f"a worker needs at least {MIN_CONNECTIONS_PER_WORKER} connections")
        listener = 1
        rest = total - listener
        read_pool = max(1, rest * 2 // 5)
        sqlalchemy = rest - read_pool
        max_overflow = sqlalchemy // 4
        return cls(total, listener, read_pool, sqlalchemy - max_overflow, max_overflow)


def connection_budget(settings: Settings) -> ConnectionBudget:
    """The split of RECSVC_DB_CONNECTIONS_PER_WORKER."""
    return ConnectionBudget.split(settings.db_connections_per_worker)


async def server_connection_limit(url: str) -> int | None:
    """How many connections PostgreSQL at `url` accepts from ordinary roles: max_connections
    minus the slots it reserves (superuser_reserved_connections, and reserved_connections from
    PostgreSQL 16). None on SQLite, which has no such limit."""
    if is_sqlite(url):
        return None
    engine = make_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT current_setting('max_connections')::int, "
                        "current_setting('superuser_reserved_connections')::int, "
                        "coalesce(current_setting('reserved_connections', true), '0')::int"
                    )
                )
            ).one()
    finally:
        await engine.dispose()
    return int(row[0]) - int(row[1]) - int(row[2])


def make_engine(url: str, *, budget: ConnectionBudget | None = None, **kwargs: Any) -> AsyncEngine:
    """An engine for `url`. On PostgreSQL its pool holds `budget`'s SQLAlchemy share (default:
    that of DEFAULT_CONNECTIONS_PER_WORKER) unless `kwargs` choose the pool."""
    if is_sqlite(url):
        # One writer at a time in SQLite: wait for the lock instead of failing at once.
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is synced at every commit, so a 202 survives a power loss too.
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    if "poolclass" not in kwargs:
        # Enough pooled connections for a worker's concurrent requests: connections beyond
        # pool_size are closed after use, and reconnecting on every request is expensive.
        budget = budget or ConnectionBudget.split(DEFAULT_CONNECTIONS_PER_WORKER)
        kwargs = {
            "pool_size": budget.pool_size,
            "max_overflow": budget.max_overflow,
            "pool_timeout": 5,
            **kwargs,
        }
    return create_async_engine(
        url,
        pool_pre_ping=True,  # a connection that died with the server is replaced, not used
        connect_args={"timeout": 5, "command_timeout": 60},
        **kwargs,
    )


def asyncpg_dsn(engine: AsyncEngine) -> str:
    """The engine's PostgreSQL URL for a plain asyncpg connection or pool."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


# --- migrations -------------------------------------------------------------------------------


def migrations_dir() -> Path:
    """`migrations/` in a source checkout, or the copy packaged inside the wheel."""
    packaged = Path(__file__).parent / "migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def upgrade(url: str) -> None:
    """`alembic upgrade head` on `url`; migrations/env.py runs them through an async engine."""
    cfg = alembic_config(url)
    await asyncio.to_thread(command.upgrade, cfg, "head")


def _current_revision(conn: Connection) -> str | None:
    # Not MigrationContext.configure: it logs at INFO on every call, and readiness probes poll.
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(select(ALEMBIC_VERSION.c.version_num)).scalar()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The schema revision the database is at (None before the first migration)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current_revision)

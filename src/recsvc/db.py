"""Database plumbing: the declarative base, engine and session factories, migrations.

Engines are made by the app's lifespan or the CLI, never at import. The same schema runs on
PostgreSQL (asyncpg, production) and SQLite (aiosqlite, the embedded default).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Column, MetaData, String, Table, event, inspect, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

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


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    if is_sqlite(url):
        # One writer at a time in SQLite: wait for the lock instead of failing at once.
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    if "poolclass" not in kwargs:
        # Enough pooled connections for a worker's concurrent requests: connections beyond
        # pool_size are closed after use, and reconnecting on every request is expensive.
        kwargs.update(pool_size=20, max_overflow=10, pool_timeout=5)
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

"""The migrations produce exactly the schema tables.py declares, on either database."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection
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

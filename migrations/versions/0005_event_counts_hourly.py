"""hourly event counts and the learners with events, for the dashboard

* event_counts_hourly: stored events per UTC hour of occurrence and type, kept up to date in the
  transactions that store or erase events, so the dashboard's overview never scans `events`.
* event_learners: every learner with stored events, once (the overview counts them here).
Both are backfilled here from the events already stored.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The hour an event occurred in, in UTC, in each database's storage format (SQLAlchemy keeps
# SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' text in UTC).
HOUR = {
    "postgresql": "date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
    "sqlite": "substr(occurred_at, 1, 13) || ':00:00.000000'",
}
# The backfill reads the events by ranges of their primary key, so that no single statement
# runs long on a large table (the driver's command timeout is 60 s).
CHUNK = 500_000
ROLLUP = (
    "INSERT INTO event_counts_hourly (hour, type, count) "
    "SELECT {hour}, type, count(*) FROM events WHERE id > :low AND id <= :high GROUP BY 1, 2 "
    "ON CONFLICT (hour, type) DO UPDATE SET count = event_counts_hourly.count + excluded.count"
)
LEARNERS = (
    "INSERT INTO event_learners (user_id) "
    "SELECT DISTINCT user_id FROM events WHERE id > :low AND id <= :high "
    "ON CONFLICT (user_id) DO NOTHING"
)


def upgrade() -> None:
    op.create_table(
        "event_counts_hourly",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("hour", "type", name=op.f("pk_event_counts_hourly")),
    )
    op.create_table(
        "event_learners",
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_event_learners")),
    )
    bind = op.get_bind()
    rollup = sa.text(ROLLUP.format(hour=HOUR[bind.dialect.name]))
    highest = bind.execute(sa.text("SELECT max(id) FROM events")).scalar() or 0
    for low in range(0, highest, CHUNK):
        bounds = {"low": low, "high": low + CHUNK}
        bind.execute(rollup, bounds)
        bind.execute(sa.text(LEARNERS), bounds)


def downgrade() -> None:
    op.drop_table("event_learners")
    op.drop_table("event_counts_hourly")

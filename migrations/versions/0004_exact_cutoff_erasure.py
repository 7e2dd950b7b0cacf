"""exact fold-in cutoff, erasure list, clock-free change counters

* events.txid (PostgreSQL): the id of the transaction that stored the event, so a model can
  record the snapshot it was trained on and serving folds in exactly the events outside it.
  Rows stored before this revision keep NULL: their transactions finished long ago, so every
  later snapshot sees them. On SQLite the events id becomes AUTOINCREMENT (never reused), and
  the highest id a model read is its cutoff.
* erased_users: learners erased since the artifacts on disk were last rewritten.
* revisions: counters bumped in the transaction of every catalog write and erasure, so workers
  notice changes without comparing clocks.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.add_column("events", sa.Column("txid", sa.BigInteger(), nullable=True))
        op.execute(
            "ALTER TABLE events ALTER COLUMN txid SET DEFAULT pg_current_xact_id()::text::bigint"
        )
        op.drop_index("ix_events_user_id_received_at", table_name="events")
        op.create_index("ix_events_user_id_txid", "events", ["user_id", "txid"])
        op.create_index("ix_events_txid", "events", ["txid"])
    else:
        # Recreated with AUTOINCREMENT: a deleted highest id is never handed out again.
        with op.batch_alter_table(
            "events", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ) as batch:
            batch.add_column(sa.Column("txid", sa.BigInteger(), nullable=True))
            batch.drop_index("ix_events_user_id_received_at")
            batch.create_index("ix_events_user_id_txid", ["user_id", "txid"])
            batch.create_index("ix_events_txid", ["txid"])

    op.create_table(
        "erased_users",
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("erased_at", TS, nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_erased_users")),
    )
    revisions = op.create_table(
        "revisions",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_revisions")),
    )
    op.bulk_insert(revisions, [{"name": "catalog", "value": 0}, {"name": "erasure", "value": 0}])


def downgrade() -> None:
    op.drop_table("revisions")
    op.drop_table("erased_users")
    with op.batch_alter_table("events") as batch:
        batch.drop_index("ix_events_txid")
        batch.drop_index("ix_events_user_id_txid")
        batch.create_index("ix_events_user_id_received_at", ["user_id", "received_at"])
        batch.drop_column("txid")

"""training jobs: a unique slot (one job at a time) and a heartbeat (to notice dead jobs)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("training_jobs") as batch:
        batch.add_column(sa.Column("slot", sa.String(8), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_unique_constraint(op.f("uq_training_jobs_slot"), ["slot"])


def downgrade() -> None:
    with op.batch_alter_table("training_jobs") as batch:
        batch.drop_constraint(op.f("uq_training_jobs_slot"), type_="unique")
        batch.drop_column("heartbeat_at")
        batch.drop_column("slot")

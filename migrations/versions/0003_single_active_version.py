"""model versions: at most one active, enforced by a unique partial index

Before this revision `registry.activate` alone kept a single version active; two concurrent
activations could deadlock on PostgreSQL. A database that somehow holds several active rows is
repaired first: the most recently activated one stays active, the others become inactive.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "uq_model_versions_one_active"
ACTIVE = sa.text("status = 'active'")


def upgrade() -> None:
    # Keep one active row (newest activation, then highest version) so the index can be built.
    op.execute(
        "UPDATE model_versions SET status = 'inactive' WHERE status = 'active' AND version <> ("
        "SELECT version FROM model_versions WHERE status = 'active' "
        "ORDER BY activated_at IS NULL, activated_at DESC, version DESC LIMIT 1)"
    )
    op.create_index(
        INDEX,
        "model_versions",
        ["status"],
        unique=True,
        postgresql_where=ACTIVE,
        sqlite_where=ACTIVE,
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="model_versions")

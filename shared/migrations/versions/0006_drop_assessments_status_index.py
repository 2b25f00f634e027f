"""drop the assessments (status, created_at) index: every report paid for it, nothing needs it

Every accepted report wrote an entry, and every scored one moved it; the only query by status
is the admin re-score of all scored assessments, which reads nearly the whole table anyway.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_assessments_status_created", table_name="assessments")


def downgrade() -> None:
    op.create_index(
        "ix_assessments_status_created", "assessments", ["status", "created_at"], unique=False
    )

"""one current result per assessment: a partial unique index that also serves the lookup

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "uq_triage_results_one_current",
        "triage_results",
        ["assessment_id"],
        unique=True,
        sqlite_where=sa.text("current IS 1"),
        postgresql_where=sa.text("current IS true"),
    )


def downgrade() -> None:
    op.drop_index("uq_triage_results_one_current", table_name="triage_results")

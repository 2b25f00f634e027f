"""tenants: every key, integration, subscription, assessment, CDS feedback and audit event
belongs to one organisation; existing data moves into the default tenant

A patient is (tenant, identifier system, identifier): `assessments.patient_system` is new ("" when
the caller gave no system) and the patient index leads with the tenant. Integration names are
unique per tenant, not globally.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# shared/models/tenants.py: DEFAULT_TENANT_ID, DEFAULT_TENANT_NAME (copied: a migration must not
# change when the code does).
DEFAULT_TENANT_ID = "00000000-0000-7000-8000-000000000001"
DEFAULT_TENANT_NAME = "default"

# Tables whose every row belongs to a tenant (NOT NULL), and the one where it may be absent.
OWNED = ("api_keys", "integrations", "callback_subscriptions", "assessments", "cds_feedback")
OPTIONAL = ("audit_events",)


def upgrade() -> None:
    tenants = op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
    )
    op.bulk_insert(
        tenants,
        [{"id": DEFAULT_TENANT_ID, "name": DEFAULT_TENANT_NAME, "created_at": datetime.now(UTC)}],
    )
    for table in (*OWNED, *OPTIONAL):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("tenant_id", sa.String(length=36), nullable=True))
        op.execute(
            sa.text(f"UPDATE {table} SET tenant_id = :tenant").bindparams(tenant=DEFAULT_TENANT_ID)
        )
        with op.batch_alter_table(table) as batch_op:
            if table in OWNED:
                batch_op.alter_column(
                    "tenant_id", existing_type=sa.String(length=36), nullable=False
                )
            batch_op.create_foreign_key(
                batch_op.f(f"fk_{table}_tenant_id_tenants"), "tenants", ["tenant_id"], ["id"]
            )
            batch_op.create_index(batch_op.f(f"ix_{table}_tenant_id"), ["tenant_id"])

    with op.batch_alter_table("assessments") as batch_op:
        batch_op.add_column(
            sa.Column("patient_system", sa.String(length=255), nullable=False, server_default="")
        )
    with op.batch_alter_table("assessments") as batch_op:
        # The server default only filled existing rows; the models give every new row its value.
        batch_op.alter_column("patient_system", existing_type=sa.String(255), server_default=None)
        batch_op.drop_index("ix_assessments_patient_ref")
        batch_op.create_index(
            "ix_assessments_tenant_patient", ["tenant_id", "patient_ref", "created_at"]
        )
    with op.batch_alter_table("integrations") as batch_op:
        batch_op.drop_constraint("uq_integrations_name", type_="unique")
        batch_op.create_unique_constraint("uq_integrations_tenant_name", ["tenant_id", "name"])


def downgrade() -> None:
    # Going back to one tenant: names must be unique again. Refuse rather than lose data.
    bind = op.get_bind()
    clash = bind.execute(
        sa.text("SELECT name FROM integrations GROUP BY name HAVING COUNT(*) > 1")
    ).first()
    if clash is not None:
        raise RuntimeError(
            "cannot downgrade: integration names are shared between tenants (rename them first)"
        )
    with op.batch_alter_table("integrations") as batch_op:
        batch_op.drop_constraint("uq_integrations_tenant_name", type_="unique")
        batch_op.create_unique_constraint("uq_integrations_name", ["name"])
    with op.batch_alter_table("assessments") as batch_op:
        batch_op.drop_index("ix_assessments_tenant_patient")
        batch_op.create_index("ix_assessments_patient_ref", ["patient_ref"])
        batch_op.drop_column("patient_system")
    for table in (*OWNED, *OPTIONAL):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_tenant_id"))
            batch_op.drop_constraint(
                batch_op.f(f"fk_{table}_tenant_id_tenants"), type_="foreignkey"
            )
            batch_op.drop_column("tenant_id")
    op.drop_table("tenants")

"""secrets at rest: unique API key prefixes, encrypted webhook and callback signing secrets

- `api_keys.key_prefix` becomes unique, so revoking by prefix names one key. Keys that already
  share a prefix (possible, if unlikely, with 2**32 of them) keep it on the oldest; the others
  are renamed `<prefix>-2`, `-3`… (the prefix only names a key: the key and its hash do not
  change) and a warning lists them. Downgrade restores their prefixes.
- `integration_secrets.secret` and `callback_subscriptions.secret` become TEXT (the Fernet token
  of a 94-character secret is 204 characters), and, when MYOTRIAGE_SECRET_KEYS is set, every
  secret stored in clear is encrypted under its first key. Without a key they stay in clear and
  readable, with a warning, until `myotriage secrets rotate` runs with one. Downgrade decrypts
  them (it needs the key) and narrows the columns back.

The keys are the process's (shared/secrets_at_rest.py: MYOTRIAGE_SECRET_KEYS, or those the
caller installed).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.secrets_at_rest import SecretKeysMissing, current_keyring, is_encrypted

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

SECRET_TABLES = ("integration_secrets", "callback_subscriptions")
PREFIX_LENGTH = 8  # mt_<8 hex>_…: every prefix create_api_key ever drew

api_keys = sa.table(
    "api_keys",
    sa.column("id", sa.String),
    sa.column("key_prefix", sa.String),
    sa.column("created_at", sa.DateTime),
)


def _secrets(table_name: str) -> sa.TableClause:
    # Plain text columns: the stored values as they are.
    return sa.table(table_name, sa.column("id", sa.String), sa.column("secret", sa.Text))


def upgrade() -> None:
    _unique_prefixes()
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.create_unique_constraint(batch_op.f("uq_api_keys_key_prefix"), ["key_prefix"])
    for table_name in SECRET_TABLES:
        with op.batch_alter_table(table_name) as batch_op:
            batch_op.alter_column(
                "secret",
                existing_type=sa.String(length=200),
                type_=sa.Text(),
                existing_nullable=False,
            )
    _encrypt_secrets()


def downgrade() -> None:
    _decrypt_secrets()
    for table_name in SECRET_TABLES:
        with op.batch_alter_table(table_name) as batch_op:
            batch_op.alter_column(
                "secret",
                existing_type=sa.Text(),
                type_=sa.String(length=200),
                existing_nullable=False,
            )
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_api_keys_key_prefix"), type_="unique")
    _restore_prefixes()


def _unique_prefixes() -> None:
    connection = op.get_bind()
    shared = connection.execute(
        sa.select(api_keys.c.key_prefix).group_by(api_keys.c.key_prefix).having(sa.func.count() > 1)
    ).scalars()
    for prefix in list(shared):
        ids = connection.execute(
            sa.select(api_keys.c.id)
            .where(api_keys.c.key_prefix == prefix)
            .order_by(api_keys.c.created_at, api_keys.c.id)
        ).scalars()
        for number, key_id in enumerate(list(ids)[1:], start=2):
            renamed = f"{prefix}-{number}"
            connection.execute(
                sa.update(api_keys).where(api_keys.c.id == key_id).values(key_prefix=renamed)
            )
            log.warning(
                "API key %s shared its prefix %s with an older key: its prefix is now %s",
                key_id,
                prefix,
                renamed,
            )


def _restore_prefixes() -> None:
    connection = op.get_bind()
    renamed = connection.execute(
        sa.select(api_keys.c.id, api_keys.c.key_prefix).where(
            sa.func.length(api_keys.c.key_prefix) > PREFIX_LENGTH
        )
    ).all()
    for key_id, prefix in renamed:
        connection.execute(
            sa.update(api_keys)
            .where(api_keys.c.id == key_id)
            .values(key_prefix=prefix[:PREFIX_LENGTH])
        )


def _encrypt_secrets() -> None:
    connection = op.get_bind()
    keyring = current_keyring()
    in_clear = 0
    for table_name in SECRET_TABLES:
        rows = _secrets(table_name)
        for row_id, stored in connection.execute(sa.select(rows.c.id, rows.c.secret)).all():
            if is_encrypted(stored):
                continue
            if keyring is None:
                in_clear += 1
                continue
            connection.execute(
                sa.update(rows).where(rows.c.id == row_id).values(secret=keyring.encrypt(stored))
            )
    if in_clear:
        log.warning(
            "%d signing secret(s) stay in clear: MYOTRIAGE_SECRET_KEYS is not set. Set it in "
            "every service and run `myotriage secrets rotate` (docs/SECURITY.md).",
            in_clear,
        )


def _decrypt_secrets() -> None:
    connection = op.get_bind()
    keyring = current_keyring()
    for table_name in SECRET_TABLES:
        rows = _secrets(table_name)
        for row_id, stored in connection.execute(sa.select(rows.c.id, rows.c.secret)).all():
            if not is_encrypted(stored):
                continue
            if keyring is None:
                raise SecretKeysMissing()
            connection.execute(
                sa.update(rows).where(rows.c.id == row_id).values(secret=keyring.decrypt(stored))
            )

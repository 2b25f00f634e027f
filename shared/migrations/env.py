"""Alembic environment: the URL comes from the caller's config or from Settings."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import Connection, event

from shared.config import Settings
from shared.db import make_engine
from shared.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    # render_as_batch lets ALTERs work on SQLite, which cannot alter most constraints in place.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
        if connection.dialect.name == "sqlite":
            # Foreign keys were off (see _sqlite_foreign_keys_off): check them before committing.
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
            if broken:
                raise RuntimeError(f"migrations left rows with broken foreign keys: {broken[:5]}")


def _sqlite_foreign_keys_off(dbapi_connection: Any, _record: Any) -> None:
    # Batch mode rebuilds a SQLite table: copy, DROP the old one, rename the copy. With foreign
    # keys on, that DROP first deletes the table's rows, and ON DELETE CASCADE deletes their
    # children's (rebuilding callback_subscriptions would empty callback_deliveries). SQLite's
    # own procedure for such changes turns them off; this must happen outside a transaction,
    # hence on connect, after make_engine's pragmas.
    dbapi_connection.execute("PRAGMA foreign_keys=OFF")


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_foreign_keys_off)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

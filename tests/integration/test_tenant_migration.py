"""Migration 0008 (tenants) on data from before tenancy, up and down, on the test's database
(SQLite, or PostgreSQL when DATABASE_URL points at one)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text

from shared.migrate import downgrade_database, upgrade_database
from shared.models import DEFAULT_TENANT_ID
from tests.support import private_database

BEFORE = "0007"
AFTER = "0008"


@pytest.fixture
def url(database_url: str, tmp_path: Path) -> Iterator[str]:
    databases = private_database(database_url, tmp_path, "tenancy")
    yield next(databases)
    next(databases, None)


def _insert_pre_tenancy_rows(url: str) -> None:
    engine = create_engine(url)
    now = "2026-11-30 10:00:00+00:00"
    report = json.dumps({"patient": {"id": "MRN-1", "age": 40}})
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO api_keys (id, name, key_prefix, key_hash, scopes, created_at) "
                "VALUES ('k1', 'ehr', 'abcd1234', :hash, '[\"admin\"]', :now)"
            ),
            {"hash": "0" * 64, "now": now},
        )
        conn.execute(
            text(
                "INSERT INTO integrations (id, name, scopes, created_at) "
                "VALUES ('i1', 'the-ehr', '[\"assessments:write\"]', :now)"
            ),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO assessments (id, status, source, patient_ref, report, created_at, "
                "updated_at) VALUES ('a1', 'queued', 'api', 'MRN-1', :report, :now, :now)"
            ),
            {"report": report, "now": now},
        )
        conn.execute(
            text(
                "INSERT INTO audit_events (id, at, actor, action, assessment_id) "
                "VALUES ('e1', :now, 'api_key:k1', 'report.read', 'a1')"
            ),
            {"now": now},
        )
    engine.dispose()


def _rows(url: str, sql: str) -> list[Any]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = list(conn.execute(text(sql)))
    engine.dispose()
    return rows


def test_existing_data_moves_into_the_default_tenant_and_back(url: str) -> None:
    upgrade_database(url, BEFORE)
    _insert_pre_tenancy_rows(url)
    upgrade_database(url, AFTER)
    assert _rows(url, "SELECT id, name FROM tenants") == [(DEFAULT_TENANT_ID, "default")]
    for table in ("api_keys", "integrations", "assessments", "audit_events"):
        assert {row[0] for row in _rows(url, f"SELECT tenant_id FROM {table}")} == {
            DEFAULT_TENANT_ID
        }, table
    assert _rows(url, "SELECT patient_system, patient_ref FROM assessments") == [("", "MRN-1")]
    engine = create_engine(url)
    indexes = {ix["name"] for ix in inspect(engine).get_indexes("assessments")}
    engine.dispose()
    assert "ix_assessments_tenant_patient" in indexes
    assert "ix_assessments_patient_ref" not in indexes

    downgrade_database(url, BEFORE)
    engine = create_engine(url)
    inspector = inspect(engine)
    assert "tenants" not in inspector.get_table_names()
    for table in ("api_keys", "integrations", "assessments", "audit_events"):
        assert "tenant_id" not in {c["name"] for c in inspector.get_columns(table)}, table
    engine.dispose()
    assert _rows(url, "SELECT id FROM assessments") == [("a1",)]
    assert _rows(url, "SELECT name FROM integrations") == [("the-ehr",)]
    upgrade_database(url, AFTER)  # and up again
    assert _rows(url, "SELECT tenant_id FROM assessments") == [(DEFAULT_TENANT_ID,)]


def test_going_down_refuses_when_two_tenants_share_an_integration_name(url: str) -> None:
    upgrade_database(url, AFTER)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO tenants (id, name, created_at) VALUES ('t2', 'other', :now)"),
            {"now": "2026-12-01 10:00:00+00:00"},
        )
        for ident, tenant in (("i1", DEFAULT_TENANT_ID), ("i2", "t2")):
            conn.execute(
                text(
                    "INSERT INTO integrations (id, tenant_id, name, scopes, created_at) "
                    "VALUES (:id, :tenant, 'the-ehr', '[]', :now)"
                ),
                {"id": ident, "tenant": tenant, "now": "2026-12-01 10:00:00+00:00"},
            )
    engine.dispose()
    with pytest.raises(RuntimeError, match="integration names are shared between tenants"):
        downgrade_database(url, BEFORE)

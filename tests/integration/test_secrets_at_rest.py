"""Signing secrets are ciphertext in the tables and clear in the code; `myotriage secrets
rotate` moves them to a new key; with no key nothing is stored and the answer says why (503)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from services.cli import main as cli
from services.intake import ehr_integrations
from services.reporting.api.subscriptions import new_secret
from shared.config import Settings
from shared.db import make_engine, make_session_factory, transaction
from shared.migrate import upgrade_database
from shared.models import DEFAULT_TENANT_ID, CallbackSubscription, IntegrationSecret
from shared.secrets_at_rest import (
    SecretKeyring,
    generate_secret_key,
    install_secret_keys,
    is_encrypted,
)
from tests.integration.test_webhooks import send, v1_body
from tests.support import TEST_SECRET_KEYS, private_database


@pytest.fixture
def keys() -> Iterator[None]:
    """Whatever a test installs, the process's keys are the tests' again afterwards."""
    yield
    install_secret_keys(TEST_SECRET_KEYS)


def raw(sessions: Any, table: str, row_id: str) -> str:
    """The stored text, read with plain SQL (not through the column type)."""
    with sessions() as session:
        query = text(f"SELECT secret FROM {table} WHERE id = :id")  # our table names only
        return str(session.execute(query, {"id": row_id}).scalar_one())


def test_a_webhook_secret_is_ciphertext_in_the_table_and_verifies_in_clear(
    intake: Any, auth: dict[str, str], sessions: Any
) -> None:
    created = intake.post(
        "/v1/admin/integrations", json={"name": f"ehr-{uuid.uuid4().hex[:8]}"}, headers=auth
    )
    assert created.status_code == 201
    integration = created.get_json()
    secret_id = integration["secrets"][0]["id"]
    stored = raw(sessions, "integration_secrets", secret_id)
    assert is_encrypted(stored)
    assert integration["secret"] not in stored and "whsec_" not in stored
    with sessions() as session:
        assert session.get(IntegrationSecret, secret_id).secret == integration["secret"]  # type: ignore[union-attr]
    assert integration["secrets"][0]["hint"] == integration["secret"][:10] + "…"
    assert send(intake, integration, v1_body()).status_code == 202


def test_a_callback_secret_is_ciphertext_in_the_table_and_read_back_in_clear(
    reporting: Any, make_key: Any, sessions: Any
) -> None:
    headers = {"Authorization": f"Bearer {make_key('callbacks:manage')}"}
    own = new_secret()
    created = reporting.post(
        "/v1/subscriptions",
        json={"callback_url": "http://127.0.0.1:9/hook", "secret": own},
        headers=headers,
    )
    assert created.status_code == 201, created.get_json()
    subscription_id = created.get_json()["id"]
    stored = raw(sessions, "callback_subscriptions", subscription_id)
    assert is_encrypted(stored) and own not in stored
    with sessions() as session:
        assert session.get(CallbackSubscription, subscription_id).secret == own  # type: ignore[union-attr]
    reporting.post(f"/v1/subscriptions/{subscription_id}/disable", headers=headers)


@pytest.fixture
def own_database(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """A migrated database of the test's own: rotation rewrites every secret in it."""
    places = private_database(settings.database_url, tmp_path, "rotation")
    url = next(places)
    upgrade_database(url)
    yield url
    next(places, None)


def test_rotation_moves_every_secret_to_the_first_key(
    own_database: str,
    keys: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old, new = TEST_SECRET_KEYS, generate_secret_key()
    engine = make_engine(own_database)
    sessions = make_session_factory(engine)
    install_secret_keys(old)
    with transaction(sessions) as session:
        integration, secret_row, webhook_secret = ehr_integrations.create_integration(
            session, "rotated ehr"
        )
        callback_secret = new_secret()
        subscription = CallbackSubscription(
            tenant_id=DEFAULT_TENANT_ID,
            owner_key_id="k",
            callback_url="https://ehr.example/hook",
            secret=callback_secret,
            event_types=["assessment.scored"],
        )
        session.add(subscription)
        # A secret from before migration 0007 on a database migrated without a key: in clear.
        legacy = IntegrationSecret(integration_id=integration.id, secret="placeholder")
        session.add(legacy)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE integration_secrets SET secret = :s WHERE id = :id"),
            {"s": "whsec_kept_in_clear", "id": legacy.id},
        )
    monkeypatch.setenv("DATABASE_URL", own_database)

    # The new key first, the old one after it: rotate.
    install_secret_keys(f"{new},{old}")
    assert cli(["secrets", "rotate"]) == 0
    out = capsys.readouterr().out
    assert "integration_secrets: 1 re-encrypted, 1 encrypted (were in clear), 0 already" in out
    assert "callback_subscriptions: 1 re-encrypted, 0 encrypted (were in clear), 0 already" in out
    only_new = SecretKeyring([new])
    assert only_new.decrypt(raw(sessions, "integration_secrets", secret_row.id)) == webhook_secret
    assert only_new.decrypt(raw(sessions, "integration_secrets", legacy.id)) == (
        "whsec_kept_in_clear"
    )
    assert only_new.decrypt(raw(sessions, "callback_subscriptions", subscription.id)) == (
        callback_secret
    )
    # Again: nothing left to do.
    assert cli(["secrets", "rotate"]) == 0
    assert "integration_secrets: 0 re-encrypted, 0 encrypted (were in clear), 2 already" in (
        capsys.readouterr().out
    )
    # The old key can go: the new one alone reads everything, through the models too.
    install_secret_keys(new)
    with sessions() as session:
        assert session.get(IntegrationSecret, secret_row.id).secret == webhook_secret  # type: ignore[union-attr]
        assert session.get(CallbackSubscription, subscription.id).secret == callback_secret  # type: ignore[union-attr]

    # Keys that cannot read what is stored: refused, nothing changed.
    before = raw(sessions, "integration_secrets", secret_row.id)
    install_secret_keys(generate_secret_key())
    assert cli(["secrets", "rotate"]) == 1
    assert "nothing was changed" in capsys.readouterr().err
    assert raw(sessions, "integration_secrets", secret_row.id) == before
    engine.dispose()


def test_without_a_key_no_secret_is_stored_and_the_answer_says_so(
    intake: Any,
    auth: dict[str, str],
    sessions: Any,
    keys: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
) -> None:
    name = f"ehr-{uuid.uuid4().hex[:8]}"
    install_secret_keys("")
    refused = intake.post("/v1/admin/integrations", json={"name": name}, headers=auth)
    assert refused.status_code == 503
    assert refused.mimetype == "application/problem+json"
    assert refused.get_json()["type"].endswith("/secrets-unavailable")
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    assert cli(["integration", "create", name]) == 2
    assert "MYOTRIAGE_SECRET_KEYS is not set" in capsys.readouterr().err
    assert cli(["secrets", "rotate"]) == 2
    with sessions() as session:
        count = session.execute(
            text("SELECT count(*) FROM integrations WHERE name = :name"), {"name": name}
        ).scalar_one()
    assert count == 0

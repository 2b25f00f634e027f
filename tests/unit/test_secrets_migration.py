"""Migration 0007 on existing data, on SQLite and (when DATABASE_URL names one) PostgreSQL:
secrets encrypted going up and decrypted going down, shared key prefixes made unique and
restored, and nothing else lost (rebuilding a SQLite table must not cascade to its children)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from shared.db import make_engine
from shared.migrate import downgrade_database, upgrade_database
from shared.secrets_at_rest import SecretKeyring, install_secret_keys, is_encrypted
from tests.support import TEST_SECRET_KEYS, private_database

WEBHOOK_SECRET = "whsec_" + "A" * 88  # the longest allowed: 64 bytes
CALLBACK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_at_0006(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A private database migrated to 0006 and holding secrets in clear, as 0006 stored them."""
    if request.param == "sqlite":
        places: Iterator[str] = iter([f"sqlite:///{tmp_path / 'at_0006.db'}"])
    else:
        server = os.environ.get("DATABASE_URL", "")
        if not server or make_url(server).get_backend_name() != "postgresql":
            pytest.skip("DATABASE_URL does not name a PostgreSQL server")
        places = private_database(server, tmp_path, "secrets_migration")
    url = next(places)
    upgrade_database(url, "0006")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO api_keys (id, name, key_prefix, key_hash, scopes, created_at) VALUES "
                "('k1', 'old', 'abcd1234', 'h1', '[]', '2026-01-01'), "
                "('k2', 'newer', 'abcd1234', 'h2', '[]', '2026-02-01'), "
                "('k3', 'other', 'ffff0000', 'h3', '[]', '2026-03-01')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO integrations (id, name, scopes, created_at) "
                "VALUES ('i1', 'ehr', '[]', '2026-01-01')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO integration_secrets (id, integration_id, secret, created_at) "
                "VALUES ('s1', 'i1', :secret, '2026-01-01')"
            ),
            {"secret": WEBHOOK_SECRET},
        )
        conn.execute(
            text(
                "INSERT INTO callback_subscriptions (id, owner_key_id, callback_url, secret, "
                "event_types, include_fhir, created_at) "
                "VALUES ('c1', 'k1', 'https://ehr.example/cb', :secret, '[]', false, "
                "'2026-01-01')"
            ),
            {"secret": CALLBACK_SECRET},
        )
        conn.execute(
            text(
                "INSERT INTO assessments (id, patient_ref, report, source, status, created_at, "
                "updated_at) VALUES ('a1', 'p', '{}', 'api', 'scored', '2026-01-01', "
                "'2026-01-01')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO callback_deliveries (id, subscription_id, assessment_id, result_id, "
                "event_type, payload, status, attempts, created_at, updated_at) VALUES "
                "('d1', 'c1', 'a1', 'r1', 'assessment.scored', '{}', 'pending', 0, "
                "'2026-01-01', '2026-01-01')"
            )
        )
    engine.dispose()
    yield url
    next(places, None)  # PostgreSQL: drop the database


def _stored(url: str) -> dict[str, object]:
    engine = make_engine(url)
    with engine.connect() as conn:
        found = {
            "webhook": conn.execute(text("SELECT secret FROM integration_secrets")).scalar_one(),
            "callback": conn.execute(
                text("SELECT secret FROM callback_subscriptions")
            ).scalar_one(),
            "prefixes": dict(conn.execute(text("SELECT id, key_prefix FROM api_keys")).all()),
            "deliveries": conn.execute(text("SELECT count(*) FROM callback_deliveries")).scalar(),
        }
    engine.dispose()
    return found


@pytest.fixture
def keys() -> Iterator[None]:
    install_secret_keys(TEST_SECRET_KEYS)
    yield
    install_secret_keys(TEST_SECRET_KEYS)


def test_upgrade_encrypts_secrets_and_downgrade_decrypts_them(
    database_at_0006: str, keys: None
) -> None:
    url = database_at_0006
    upgrade_database(url, "0007")
    after = _stored(url)
    keyring = SecretKeyring.parse(TEST_SECRET_KEYS)
    assert keyring is not None
    for name, plain in (("webhook", WEBHOOK_SECRET), ("callback", CALLBACK_SECRET)):
        stored = after[name]
        assert isinstance(stored, str) and is_encrypted(stored) and plain not in stored
        assert keyring.decrypt(stored) == plain
    assert after["prefixes"] == {"k1": "abcd1234", "k2": "abcd1234-2", "k3": "ffff0000"}
    assert after["deliveries"] == 1  # rebuilding the subscriptions table kept its children

    engine = make_engine(url)
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO api_keys (id, name, key_prefix, key_hash, scopes, created_at) "
                "VALUES ('k4', 'dup', 'ffff0000', 'h4', '[]', '2026-04-01')"
            )
        )
    engine.dispose()

    downgrade_database(url, "0006")
    assert _stored(url) == {
        "webhook": WEBHOOK_SECRET,
        "callback": CALLBACK_SECRET,
        "prefixes": {"k1": "abcd1234", "k2": "abcd1234", "k3": "ffff0000"},
        "deliveries": 1,
    }
    upgrade_database(url, "0007")  # and up again
    assert is_encrypted(str(_stored(url)["webhook"]))


def test_without_a_key_secrets_stay_readable_in_clear_and_downgrade_needs_the_key(
    database_at_0006: str, keys: None
) -> None:
    url = database_at_0006
    install_secret_keys("")
    upgrade_database(url, "0007")
    assert _stored(url)["webhook"] == WEBHOOK_SECRET  # left in clear (with a warning)
    downgrade_database(url, "0006")
    install_secret_keys(TEST_SECRET_KEYS)
    upgrade_database(url, "0007")
    install_secret_keys("")
    with pytest.raises(RuntimeError, match="MYOTRIAGE_SECRET_KEYS"):
        downgrade_database(url, "0006")
    assert is_encrypted(str(_stored(url)["webhook"]))  # the failed downgrade changed nothing

"""Signing secrets at rest: Fernet under MYOTRIAGE_SECRET_KEYS, rotation, and no key at all."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Column, MetaData, String, Table, insert, select, text
from sqlalchemy.exc import StatementError

from services.local_stack import local_secret_key
from shared.config import Settings
from shared.db import make_engine
from shared.secrets_at_rest import (
    DEVELOPMENT_KEY,
    EncryptedText,
    SecretKeyring,
    SecretKeysMissing,
    SecretUndecryptable,
    current_keyring,
    generate_secret_key,
    install_secret_keys,
    is_encrypted,
    secret_keys_problem,
    use_secret_keys,
)
from tests.support import TEST_SECRET_KEYS

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def keys() -> Iterator[None]:
    """Whatever a test installs, the process's keys are the tests' again afterwards."""
    yield
    install_secret_keys(TEST_SECRET_KEYS)


def test_a_secret_is_stored_as_a_fernet_token_and_read_back() -> None:
    keyring = SecretKeyring.parse(TEST_SECRET_KEYS)
    assert keyring is not None
    token = keyring.encrypt(SECRET)
    assert is_encrypted(token) and not is_encrypted(SECRET)
    assert SECRET not in token and "whsec" not in token
    assert keyring.encrypt(SECRET) != token  # randomised: equal secrets do not look equal
    assert keyring.decrypt(token) == SECRET
    # The longest secret allowed (64 bytes) would not fit the old VARCHAR(200) encrypted.
    longest = "whsec_" + base64.b64encode(bytes(range(64))).decode()
    assert len(keyring.encrypt(longest)) > 200


def test_the_first_key_encrypts_and_every_key_decrypts() -> None:
    old, new = generate_secret_key(), generate_secret_key()
    under_old = SecretKeyring([old]).encrypt(SECRET)
    both = SecretKeyring([new, old])
    assert both.decrypt(under_old) == SECRET
    assert not both.is_current(under_old)
    rotated = both.reencrypt(under_old)
    assert both.is_current(rotated)
    # After rotation the old key can go: the new one alone reads it, the old one alone cannot.
    assert SecretKeyring([new]).decrypt(rotated) == SECRET
    with pytest.raises(SecretUndecryptable):
        SecretKeyring([old]).decrypt(rotated)
    # A secret kept in clear (from before migration 0007) is encrypted by the same step.
    assert both.decrypt(both.reencrypt(SECRET)) == SECRET


def test_a_malformed_key_is_refused_without_quoting_it() -> None:
    good = generate_secret_key()
    with pytest.raises(ValueError) as refused:
        SecretKeyring.parse(f"{good}, not-a-key-but-maybe-a-real-one-with-a-typo")
    assert "key 2 of 2" in str(refused.value)
    assert "typo" not in str(refused.value)
    assert SecretKeyring.parse(" , ") is None


def test_settings_never_show_the_keys() -> None:
    settings = Settings(secret_keys=TEST_SECRET_KEYS)
    assert TEST_SECRET_KEYS not in repr(settings)


def test_the_development_key_is_recognised(keys: None) -> None:
    keyring = use_secret_keys(Settings(secret_keys=f"{DEVELOPMENT_KEY},{TEST_SECRET_KEYS}"))
    assert keyring is not None and keyring.uses_development_key
    assert Fernet(DEVELOPMENT_KEY)  # a valid key, for docker-compose.yml


def test_the_column_type_encrypts_and_without_a_key_stores_nothing(
    tmp_path: Path, keys: None
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    table = Table(
        "t", MetaData(), Column("id", String, primary_key=True), Column("secret", EncryptedText())
    )
    table.metadata.create_all(engine)
    install_secret_keys(TEST_SECRET_KEYS)
    with engine.begin() as conn:
        conn.execute(insert(table).values(id="1", secret=SECRET))
        conn.execute(text("INSERT INTO t (id, secret) VALUES ('legacy', 'whsec_in_clear')"))
    with engine.connect() as conn:
        raw = conn.execute(text("SELECT secret FROM t WHERE id = '1'")).scalar_one()
        assert is_encrypted(raw) and SECRET not in raw
        read = dict(conn.execute(select(table.c.id, table.c.secret)).all())
    assert read == {"1": SECRET, "legacy": "whsec_in_clear"}

    install_secret_keys("")
    assert current_keyring() is None
    with pytest.raises(StatementError) as refused, engine.begin() as conn:
        conn.execute(insert(table).values(id="2", secret=SECRET))
    missing = secret_keys_problem(refused.value)
    assert isinstance(missing, SecretKeysMissing) and "MYOTRIAGE_SECRET_KEYS" in str(missing)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 2
        with pytest.raises(SecretKeysMissing):
            conn.execute(select(table.c.secret).where(table.c.id == "1")).all()
        # Legacy secrets kept in clear stay readable (until `myotriage secrets rotate`).
        legacy = select(table.c.secret).where(table.c.id == "legacy")
        assert conn.execute(legacy).scalar_one() == "whsec_in_clear"

    install_secret_keys(generate_secret_key())  # the wrong key
    with engine.connect() as conn, pytest.raises(SecretUndecryptable):
        conn.execute(select(table.c.secret).where(table.c.id == "1")).all()
    engine.dispose()


def test_the_local_run_makes_its_key_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    key_file = tmp_path / "run" / "secret-key"
    key = local_secret_key(key_file)
    assert SecretKeyring.parse(key) is not None
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert local_secret_key(key_file) == key

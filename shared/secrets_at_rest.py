"""Signing secrets encrypted at rest, under keys from the environment.

The webhook secrets of EHR integrations and the signing secrets of callback subscriptions are HMAC
keys: verifying or signing needs them in clear, so they cannot be hashed as API keys are. They
are stored as Fernet tokens (AES-128-CBC with HMAC-SHA256, from `cryptography`) under the keys in
`MYOTRIAGE_SECRET_KEYS`: comma-separated Fernet keys, the first encrypts, every one decrypts
(MultiFernet). So a copy of the database alone is not enough to forge a webhook or a callback.

Rotation: put a new key first (keep the old one after it), restart, run `myotriage secrets
rotate` (re-encrypts every stored secret under the first key), then remove the old key.

`EncryptedText` is the column type: it encrypts on write and decrypts on read, so the rest of the
code sees plain secrets. Encryption is randomised: never compare or filter on such a column.

With no key configured nothing is ever written in clear: storing a secret raises
`SecretKeysMissing` (the APIs answer 503, the CLI says what to set), and so does reading an
encrypted one. A stored value that is not a Fernet token is a secret written before migration
0007 ran on a database without a key: it is read as it is, and `myotriage secrets rotate`
encrypts it once a key is set.

The process's keys come from the environment on first use; `install_secret_keys` sets them from
a `Settings` (the web apps do) or for a test.
"""

from __future__ import annotations

import binascii
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Connection, Text, column, select, table, update
from sqlalchemy.types import TypeDecorator

from shared.config import Settings

log = structlog.get_logger("myotriage.secrets")

SECRET_KEYS_ENV = "MYOTRIAGE_SECRET_KEYS"
# Every Fernet token starts so: base64url of the version byte 0x80 and the high bytes of a
# timestamp (zero until 2106). No signing secret does: they all start with `whsec_`.
TOKEN_MARK = "gAAAAA"
# docker-compose.yml's default, for trying the stack out: public, so it protects nothing. Its
# text is "myotriage-DEVELOPMENT-KEY-public"; the services warn when it is the encrypting key.
DEVELOPMENT_KEY = "bXlvdHJpYWdlLURFVkVMT1BNRU5ULUtFWS1wdWJsaWM="
# (table, primary key column, secret column) of every secret stored encrypted.
STORED_SECRETS = (
    ("integration_secrets", "id", "secret"),
    ("callback_subscriptions", "id", "secret"),
)
# Rows read and rewritten per query by `rotate_stored_secrets`.
ROTATION_BATCH = 500


class SecretKeysMissing(RuntimeError):
    """A signing secret must be encrypted or decrypted and MYOTRIAGE_SECRET_KEYS is not set."""

    def __init__(self) -> None:
        super().__init__(
            f"{SECRET_KEYS_ENV} is not set, so signing secrets can be neither stored nor read. "
            "Set it to a Fernet key (make one with `myotriage secrets generate-key`) in every "
            "service's environment; see docs/SECURITY.md."
        )


class SecretUndecryptable(RuntimeError):
    """A stored secret was encrypted under a key that is not in MYOTRIAGE_SECRET_KEYS."""

    def __init__(self) -> None:
        super().__init__(
            f"a stored signing secret was encrypted under a key that is not in "
            f"{SECRET_KEYS_ENV}: put the old key back (after the new one) and run "
            "`myotriage secrets rotate` before removing it (docs/SECURITY.md)"
        )


def secret_keys_problem(exc: BaseException) -> SecretKeysMissing | SecretUndecryptable | None:
    """The key problem behind `exc`, if that is what it is (SQLAlchemy wraps an error raised
    while encrypting a parameter in a StatementError)."""
    for candidate in (exc, getattr(exc, "orig", None), exc.__cause__):
        if isinstance(candidate, SecretKeysMissing | SecretUndecryptable):
            return candidate
    return None


def generate_secret_key() -> str:
    """A new random Fernet key, for MYOTRIAGE_SECRET_KEYS."""
    return Fernet.generate_key().decode("ascii")


def is_encrypted(stored: str) -> bool:
    """Whether a stored value is a Fernet token (rather than a secret kept in clear)."""
    return stored.startswith(TOKEN_MARK)


class SecretKeyring:
    """The Fernet keys of MYOTRIAGE_SECRET_KEYS: the first encrypts, every one decrypts."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError(f"{SECRET_KEYS_ENV} holds no key")
        fernets = []
        for position, key in enumerate(keys, start=1):
            try:
                fernets.append(Fernet(key))
            except (ValueError, binascii.Error):
                # Never quote the value: it may be a real key with a typo.
                raise ValueError(
                    f"{SECRET_KEYS_ENV}: key {position} of {len(keys)} is not a Fernet key "
                    "(32 url-safe base64-encoded bytes; `myotriage secrets generate-key` "
                    "makes one)"
                ) from None
        self._primary = fernets[0]
        self._all = MultiFernet(fernets)
        self.key_count = len(fernets)
        self.uses_development_key = keys[0] == DEVELOPMENT_KEY

    @classmethod
    def parse(cls, setting: str) -> SecretKeyring | None:
        """The keyring of a comma-separated setting; None when it names no key."""
        keys = [key.strip() for key in setting.split(",") if key.strip()]
        return cls(keys) if keys else None

    def encrypt(self, plain: str) -> str:
        return self._primary.encrypt(plain.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._all.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeEncodeError):
            raise SecretUndecryptable() from None

    def is_current(self, stored: str) -> bool:
        """Whether `stored` is encrypted under the first key (rotation has nothing to do)."""
        if not is_encrypted(stored):
            return False
        try:
            self._primary.decrypt(stored.encode("ascii"))
        except (InvalidToken, UnicodeEncodeError):
            return False
        return True

    def reencrypt(self, stored: str) -> str:
        """`stored` (a token under any of the keys, or a secret in clear) under the first key."""
        return self.encrypt(self.decrypt(stored) if is_encrypted(stored) else stored)


# The process's keyring: empty until first use, then [keyring or None].
_keyring: list[SecretKeyring | None] = []
_keyring_lock = threading.Lock()


def install_secret_keys(setting: str) -> SecretKeyring | None:
    """Use the keys of `setting` (comma-separated Fernet keys) in this process from now on.

    Raises ValueError, naming the bad key's position, if one is not a Fernet key."""
    keyring = SecretKeyring.parse(setting)
    with _keyring_lock:
        _keyring[:] = [keyring]
    return keyring


def current_keyring() -> SecretKeyring | None:
    """This process's keyring: installed, or read from MYOTRIAGE_SECRET_KEYS on first use."""
    if not _keyring:
        with _keyring_lock:
            if not _keyring:
                _keyring.append(SecretKeyring.parse(os.environ.get(SECRET_KEYS_ENV, "")))
    return _keyring[0]


def use_secret_keys(settings: Settings) -> SecretKeyring | None:
    """At a service's start: use the keys of `settings` (when they name any), and warn in the
    log when there is none, or when the encrypting key is the public development one."""
    keyring = (
        install_secret_keys(settings.secret_keys) if settings.secret_keys else current_keyring()
    )
    if keyring is None:
        log.warning(
            "secrets.no_keys",
            detail=f"{SECRET_KEYS_ENV} is not set: signing secrets can be neither stored nor read",
        )
    elif keyring.uses_development_key:
        log.warning(
            "secrets.development_key",
            detail=f"{SECRET_KEYS_ENV} starts with the public development key: set a key of "
            "your own (docs/SECURITY.md)",
        )
    return keyring


def required_keyring() -> SecretKeyring:
    keyring = current_keyring()
    if keyring is None:
        raise SecretKeysMissing()
    return keyring


class EncryptedText(TypeDecorator[str]):
    """A secret stored as a Fernet token under the process's keys, read back in clear."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        if value is None:
            return None
        return required_keyring().encrypt(value)

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        if value is None or not is_encrypted(value):
            return value  # None, or a secret from before migration 0007 (see the module doc)
        return required_keyring().decrypt(value)


@dataclass
class RotationCount:
    """What `rotate_stored_secrets` did to one table's secrets."""

    table: str
    reencrypted: int = 0  # were under another key
    encrypted: int = 0  # were in clear
    current: int = 0  # already under the first key: left alone


def rotate_stored_secrets(connection: Connection, keyring: SecretKeyring) -> list[RotationCount]:
    """Rewrite every stored secret not yet under the keyring's first key, in the connection's
    transaction. Raises SecretUndecryptable (and the caller rolls back) if one was encrypted
    under a key the keyring lacks."""
    counts = []
    for table_name, id_name, secret_name in STORED_SECRETS:
        # Plain columns: the stored text as it is, not through EncryptedText.
        rows = table(table_name, column(id_name, Text), column(secret_name, Text))
        key, secret = rows.c[id_name], rows.c[secret_name]
        count = RotationCount(table_name)
        after: str | None = None
        while True:
            query = select(key, secret).order_by(key).limit(ROTATION_BATCH)
            if after is not None:
                query = query.where(key > after)
            batch = connection.execute(query).all()
            if not batch:
                break
            for row_id, stored in batch:
                if stored is None or keyring.is_current(stored):
                    count.current += 1
                    continue
                if is_encrypted(stored):
                    count.reencrypted += 1
                else:
                    count.encrypted += 1
                connection.execute(
                    update(rows)
                    .where(key == row_id)
                    .values({secret_name: keyring.reencrypt(stored)})
                )
            after = batch[-1][0]
        counts.append(count)
    return counts

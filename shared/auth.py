"""API keys with scopes for system callers.

A key looks like `mt_<8 hex>_<43 chars>`; only its SHA-256 is stored (keys are random and long,
so a fast hash is right, unlike passwords). Callers send `Authorization: Bearer <key>` or
`X-API-Key: <key>`. Endpoints declare the scope they need with `@require_scope(...)`.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from copy import deepcopy
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar, cast

import redis
from flask import current_app, g, request
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.cache_invalidation import API_KEYS, ListeningCache, publisher
from shared.expiring_cache import ExpiringLru
from shared.models import DEFAULT_TENANT_ID, ApiKey, utcnow
from shared.problems import Problem

SCOPES = (
    "assessments:write",  # submit symptom reports
    "assessments:read",  # read an assessment's status and result
    "reports:read",  # clinician summaries and the triage queue
    "callbacks:manage",  # subscribe to result callbacks, read their delivery log, replay
    "admin",  # manage keys, re-score under a new rule set
)

F = TypeVar("F", bound=Callable[..., Any])
# Our keys are 55 characters; anything much longer is not one, and is not hashed or cached.
MAX_PRESENTED_KEY_LENGTH = 256
# Prefixes drawn for a new key before giving up: of 2**32, a second draw is already rare.
PREFIX_DRAWS = 5
# The per-process cache: known keys, and (apart, so that a flood of made-up keys only ever
# evicts other made-up keys) unknown or revoked ones, remembered briefly: that only spares the
# database a caller who retries a bad key.
KNOWN_KEYS_CACHED = 10_000
UNKNOWN_KEYS_CACHED = 2_000
UNKNOWN_KEY_CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's id and name (never the key itself), its scopes, and the tenant
    whose data it may reach (every query for this caller filters by `tenant_id`)."""

    key_id: str
    name: str
    scopes: frozenset[str]
    tenant_id: str

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        return f"api_key:{self.key_id}"


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode("utf-8")).hexdigest()


def create_api_key(
    session: Session,
    name: str,
    scopes: list[str] | tuple[str, ...],
    tenant_id: str = DEFAULT_TENANT_ID,
) -> tuple[ApiKey, str]:
    """Store a new key of `tenant_id` and return (row, the raw key). The raw key cannot be
    recovered later."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; valid: {', '.join(SCOPES)}")
    prefix, raw = _new_raw_key(session)
    row = ApiKey(
        name=name,
        key_prefix=prefix,
        key_hash=hash_key(raw),
        scopes=sorted(set(scopes)),
        tenant_id=tenant_id,
    )
    session.add(row)
    session.flush()
    return row, raw


def _new_raw_key(session: Session) -> tuple[str, str]:
    """A fresh key and its prefix, which no stored key has: the prefix names a key in listings
    and for revocation, so it is unique (a unique constraint, and a fresh draw on a collision)."""
    for _ in range(PREFIX_DRAWS):
        prefix = secrets.token_hex(4)
        if session.scalar(select(ApiKey.id).where(ApiKey.key_prefix == prefix)) is None:
            return prefix, f"mt_{prefix}_{secrets.token_urlsafe(32)}"
    raise RuntimeError(f"no unused API key prefix in {PREFIX_DRAWS} draws")


def revoke_api_key(session: Session, key_id_or_prefix: str) -> ApiKey | None:
    """Revoke the key with this id or prefix; the row, or None if no active key has either.

    Every process's cache still holds it: once committed, call `announce_revocation`."""
    row = session.scalar(
        select(ApiKey).where(
            (ApiKey.id == key_id_or_prefix) | (ApiKey.key_prefix == key_id_or_prefix)
        )
    )
    if row is None or row.revoked_at is not None:
        return None
    row.revoked_at = utcnow()
    return row


def announce_revocation(redis_target: redis.Redis | str, key_hashes: Sequence[str]) -> bool:
    """Tell every process to forget these keys (by hash) now: call it once the revocation has
    committed, with the service's Redis client or (command line) the Redis URL. False when
    Redis is unreachable (logged): the keys then work until their cache entries expire."""
    return publisher(redis_target)(API_KEYS, key_hashes)


class ApiKeyVerifier:
    """Looks keys up by hash, with a per-process cache so a request costs no query.

    With `redis_url`, the first lookup in a process subscribes it to revocations
    (shared/cache_invalidation.py): a revoked key is dropped from every process's cache at
    once. While Redis is away, an entry lives at most `cache_seconds`, the fallback bound.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        cache_seconds: float,
        redis_url: str | None = None,
    ) -> None:
        self._session_factory = session_factory
        self._cache_seconds = cache_seconds
        self._known: ExpiringLru[str, Caller] = ExpiringLru(KNOWN_KEYS_CACHED)
        self._unknown: ExpiringLru[str, bool] = ExpiringLru(UNKNOWN_KEYS_CACHED)
        # Bumped by every invalidation: a lookup that overlapped one does not cache its answer
        # (it may have read the row before the revocation committed).
        self._generation = 0
        self._lock = threading.Lock()
        self._revocations = ListeningCache(redis_url, API_KEYS) if redis_url else None

    @property
    def revocations(self) -> ListeningCache | None:
        """How revocations reach this process (None: only through expiry)."""
        return self._revocations

    def invalidate(self, keys: Sequence[str]) -> None:
        """Forget these keys (SHA-256 digests), as a revocation announced on Redis asks."""
        with self._lock:
            self._known.discard(keys)
            self._unknown.discard(keys)
            self._generation += 1

    def invalidate_all(self) -> None:
        with self._lock:
            self._known.clear()
            self._unknown.clear()
            self._generation += 1

    def verify(self, raw_key: str) -> Caller | None:
        if self._revocations is not None:
            self._revocations.ensure(self)
        digest = hash_key(raw_key)
        now = time.monotonic()
        with self._lock:
            known = self._known.get(digest, now)
            if known is not None:
                return known
            if self._unknown.get(digest, now):
                return None
            generation = self._generation
        with self._session_factory() as session:
            row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
            caller = (
                Caller(row.id, row.name, frozenset(row.scopes), row.tenant_id)
                if row is not None and row.revoked_at is None
                else None
            )
        if self._cache_seconds > 0:
            with self._lock:
                if generation == self._generation:
                    if caller is not None:
                        self._known.put(digest, caller, now + self._cache_seconds)
                    else:
                        seconds = min(self._cache_seconds, UNKNOWN_KEY_CACHE_SECONDS)
                        self._unknown.put(digest, True, now + seconds)
        return caller


def _presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.headers.get("X-API-Key") or None


def require_scope(scope: str) -> Callable[[F], F]:
    """Let the view run only for a caller whose key carries `scope` (or `admin`)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope}")

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            raw = _presented_key()
            if raw is None:
                raise Problem(
                    401,
                    "Unauthorized",
                    "Send an API key as 'Authorization: Bearer <key>'.",
                    headers={"WWW-Authenticate": 'Bearer realm="myotriage"'},
                )
            verifier: ApiKeyVerifier = current_app.extensions["myotriage.api_keys"]
            caller = None if len(raw) > MAX_PRESENTED_KEY_LENGTH else verifier.verify(raw)
            if caller is None:
                raise Problem(
                    401,
                    "Unauthorized",
                    "The API key is not valid or has been revoked.",
                    headers={"WWW-Authenticate": 'Bearer realm="myotriage", error="invalid_token"'},
                )
            if scope not in caller.scopes and "admin" not in caller.scopes:
                raise Problem(403, "Forbidden", f"This key lacks the '{scope}' scope.")
            g.caller = caller
            return view(*args, **kwargs)

        # flask-smorest reads `_apidoc` to document the security requirement in OpenAPI.
        apidoc = deepcopy(getattr(view, "_apidoc", {}))
        apidoc.setdefault("manual_doc", {})["security"] = [{"ApiKeyAuth": []}]
        wrapper._apidoc = apidoc  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorate

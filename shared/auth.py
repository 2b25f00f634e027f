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
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar, cast

from flask import current_app, g, request
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.models import ApiKey, utcnow
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


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's id and name (never the key itself) and its scopes."""

    key_id: str
    name: str
    scopes: frozenset[str]


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode("utf-8")).hexdigest()


def create_api_key(
    session: Session, name: str, scopes: list[str] | tuple[str, ...]
) -> tuple[ApiKey, str]:
    """Store a new key and return (row, the raw key). The raw key cannot be recovered later."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; valid: {', '.join(SCOPES)}")
    prefix = secrets.token_hex(4)
    raw = f"mt_{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(name=name, key_prefix=prefix, key_hash=hash_key(raw), scopes=sorted(set(scopes)))
    session.add(row)
    session.flush()
    return row, raw


def revoke_api_key(session: Session, key_id_or_prefix: str) -> bool:
    row = session.scalar(
        select(ApiKey).where(
            (ApiKey.id == key_id_or_prefix) | (ApiKey.key_prefix == key_id_or_prefix)
        )
    )
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    return True


class ApiKeyVerifier:
    """Looks keys up by hash, with a short per-process cache so a request costs no query."""

    def __init__(self, session_factory: sessionmaker[Session], cache_seconds: float) -> None:
        self._session_factory = session_factory
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Caller | None]] = {}
        self._lock = threading.Lock()

    def verify(self, raw_key: str) -> Caller | None:
        digest = hash_key(raw_key)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        with self._session_factory() as session:
            row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
            caller = (
                Caller(row.id, row.name, frozenset(row.scopes))
                if row is not None and row.revoked_at is None
                else None
            )
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now + self._cache_seconds, caller)
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

"""Authenticating the EHR that calls our CDS Hooks service (CDS Hooks 2.0 "Trusting CDS Clients").

Every call carries `Authorization: Bearer <JWT>` signed with the EHR's private key. We accept
only asymmetric ES384 / RS384 (never `none`, never HMAC), only from an allowlisted `iss` whose
keys we know (a JWKS URL fetched and cached, or an inline JWKS), with `kid` naming the key,
`aud` equal to the exact URL being called, `exp` at most five minutes ahead, `iat` not in the
future, and a `jti` never seen before (kept in Redis until the token expires). Any failure is a
`CdsAuthError` with a short reason code for the log; the token itself is never logged.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
import redis
import requests
import structlog
from jwt import PyJWK

from shared.models.tenants import DEFAULT_TENANT_NAME

log = structlog.get_logger("myotriage.cds_auth")

ALLOWED_ALGORITHMS = frozenset({"ES384", "RS384"})
# CDS Hooks: "exp ... SHALL be no more than 5 minutes in the future".
MAX_TOKEN_LIFETIME_SECONDS = 300
CLOCK_LEEWAY_SECONDS = 30
# An unknown `kid` may mean the EHR rotated keys; re-fetch, but not more often than this, so
# tokens with made-up kids cannot make us hammer the EHR's JWKS endpoint.
MIN_REFETCH_SECONDS = 30.0
MAX_TOKEN_BYTES = 16 * 1024


class CdsAuthError(Exception):
    """The call is not authenticated. `reason` is a short code for logs, never sent back."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CdsClient:
    """The authenticated EHR: its issuer, `sub`/`tenant` when it sends them, and `tenant_ref`:
    the name or id of our tenant whose patients it may see (from the issuer's configuration)."""

    issuer: str
    subject: str | None
    tenant: str | None
    tenant_ref: str


def _key_algorithm(jwk: Mapping[str, Any]) -> str | None:
    """The one algorithm a JWK may verify, from its key type (configured data, not the token)."""
    if jwk.get("kty") == "EC" and jwk.get("crv") == "P-384":
        algorithm = "ES384"
    elif jwk.get("kty") == "RSA":
        algorithm = "RS384"
    else:
        return None
    declared = jwk.get("alg")
    return algorithm if declared in (None, algorithm) else None


def parse_jwks(document: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
    """kid → (public key, algorithm) for the usable signing keys of a JWKS document."""
    keys: dict[str, tuple[Any, str]] = {}
    for jwk in document.get("keys", []):
        kid = jwk.get("kid")
        algorithm = _key_algorithm(jwk)
        if not isinstance(kid, str) or algorithm is None or jwk.get("use", "sig") != "sig":
            continue
        if "d" in jwk:  # a private key in a published JWKS is a configuration mistake
            continue
        try:
            keys[kid] = (PyJWK(dict(jwk), algorithm=algorithm).key, algorithm)
        except jwt.PyJWTError:
            continue
    return keys


@dataclass
class IssuerKeys:
    """The public keys of one trusted issuer, from an inline JWKS or a cached JWKS URL."""

    issuer: str
    jwks_url: str | None = None
    jwks: Mapping[str, Any] | None = None
    cache_seconds: float = 300.0
    # Our tenant (name or id) whose patients this issuer's EHR sees ...
    tenant: str = DEFAULT_TENANT_NAME
    # ... or, for an EHR serving several organisations, its JWT `tenant` claim -> our tenant.
    # When given, a token must carry one of these claims.
    tenants: Mapping[str, str] | None = None
    fetch: Callable[[str], Mapping[str, Any]] | None = None
    _keys: dict[str, tuple[Any, str]] = field(default_factory=dict)
    _fetched_at: float = float("-inf")
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if (self.jwks_url is None) == (self.jwks is None):
            raise ValueError(f"CDS issuer {self.issuer}: give exactly one of jwks_url, jwks")
        if not isinstance(self.tenant, str) or not self.tenant:
            raise ValueError(f"CDS issuer {self.issuer}: 'tenant' must be a tenant's name or id")
        mapping = self.tenants
        if mapping is not None and not (
            isinstance(mapping, Mapping)
            and mapping
            and all(isinstance(k, str) and isinstance(v, str) and v for k, v in mapping.items())
        ):
            raise ValueError(
                f"CDS issuer {self.issuer}: 'tenants' maps JWT tenant claims to tenant names"
            )
        if self.jwks is not None:
            self._keys = parse_jwks(self.jwks)

    def tenant_for(self, claim: Any) -> str | None:
        """Our tenant for a token's `tenant` claim; None when the issuer maps claims and this
        one is not mapped (the token is refused)."""
        if self.tenants is None:
            return self.tenant
        return self.tenants.get(claim) if isinstance(claim, str) else None

    def key_for(self, kid: str) -> tuple[Any, str] | None:
        """(key, algorithm) for `kid`, fetching the JWKS when it is stale or lacks the kid."""
        if self.jwks_url is None:
            return self._keys.get(kid)
        now = time.monotonic()
        stale = now - self._fetched_at > self.cache_seconds
        missing = kid not in self._keys and now - self._fetched_at > MIN_REFETCH_SECONDS
        if stale or missing:
            self._refresh(since=self._fetched_at)
        return self._keys.get(kid)

    def _refresh(self, since: float) -> None:
        with self._lock:
            if self._fetched_at != since:
                return  # another thread fetched while we waited for the lock
            try:
                self._keys = parse_jwks((self.fetch or _fetch_jwks)(self.jwks_url or ""))
            except Exception as exc:
                # Keep the keys we had: a JWKS blip must not lock every EHR out.
                log.warning(
                    "cds.jwks_fetch_failed", issuer=self.issuer, error_class=type(exc).__name__
                )
            self._fetched_at = time.monotonic()


def _fetch_jwks(url: str) -> Mapping[str, Any]:
    response = requests.get(url, timeout=(2, 3), allow_redirects=False)
    response.raise_for_status()
    document = response.json()
    if not isinstance(document, dict):
        raise ValueError("JWKS is not a JSON object")
    return document


def load_issuers(config_json: str, cache_seconds: float) -> dict[str, IssuerKeys]:
    """Parse `MYOTRIAGE_CDS_ISSUERS`: a JSON list of {"iss", "jwks_url" | "jwks", "tenant"?,
    "tenants"?}: `tenant` is our tenant (name or id, default "default") whose patients the
    issuer's EHR sees; `tenants` instead maps the JWT `tenant` claim to our tenants."""
    try:
        entries = json.loads(config_json or "[]")
    except json.JSONDecodeError as exc:
        raise ValueError(f"MYOTRIAGE_CDS_ISSUERS is not JSON: {exc.msg}") from exc
    if not isinstance(entries, list):
        raise ValueError("MYOTRIAGE_CDS_ISSUERS must be a JSON list")
    issuers: dict[str, IssuerKeys] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("iss"), str):
            raise ValueError("each MYOTRIAGE_CDS_ISSUERS entry needs an 'iss' string")
        issuers[entry["iss"]] = IssuerKeys(
            issuer=entry["iss"],
            jwks_url=entry.get("jwks_url"),
            jwks=entry.get("jwks"),
            cache_seconds=cache_seconds,
            tenant=entry.get("tenant", DEFAULT_TENANT_NAME),
            tenants=entry.get("tenants"),
        )
    return issuers


class JtiReplayGuard:
    """Remembers each (issuer, jti) in Redis until its token expires; a second use is refused."""

    PREFIX = "myotriage:cds:jti:"

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def first_use(self, issuer: str, jti: str, ttl_seconds: int) -> bool:
        # Hash: jti is caller-chosen text; the key stays short and printable.
        digest = hashlib.sha256(f"{issuer}\x00{jti}".encode()).hexdigest()
        return bool(self._redis.set(self.PREFIX + digest, b"1", nx=True, ex=max(1, ttl_seconds)))


class CdsJwtVerifier:
    """Checks the bearer JWT of a CDS Hooks call; see the module docstring for the rules."""

    def __init__(
        self,
        issuers: Mapping[str, IssuerKeys],
        replay_guard: JtiReplayGuard,
        leeway_seconds: int = CLOCK_LEEWAY_SECONDS,
    ) -> None:
        self._issuers = dict(issuers)
        self._replay_guard = replay_guard
        self._leeway = leeway_seconds

    def verify(self, authorization: str | None, audience: str) -> CdsClient:
        """The caller, if `authorization` holds a valid JWT for `audience`; else CdsAuthError."""
        token = _bearer_token(authorization)
        try:
            # Read header and claims unverified first, only to pick the issuer's key.
            unverified_token = jwt.decode_complete(token, options={"verify_signature": False})
            header, unverified = unverified_token["header"], unverified_token["payload"]
        except jwt.PyJWTError as exc:
            raise CdsAuthError("malformed") from exc
        algorithm = header.get("alg")
        if algorithm not in ALLOWED_ALGORITHMS:
            raise CdsAuthError("algorithm_not_allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise CdsAuthError("missing_kid")
        issuer = unverified.get("iss")
        keys = self._issuers.get(issuer) if isinstance(issuer, str) else None
        if keys is None:
            raise CdsAuthError("issuer_not_allowed")
        found = keys.key_for(kid)
        if found is None:
            raise CdsAuthError("unknown_kid")
        key, key_algorithm = found
        if key_algorithm != algorithm:
            raise CdsAuthError("algorithm_key_mismatch")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[key_algorithm],
                audience=audience,
                issuer=issuer,
                leeway=self._leeway,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.PyJWTError as exc:
            raise CdsAuthError(_reason(exc)) from exc
        now = time.time()
        exp, iat, jti = claims["exp"], claims["iat"], claims["jti"]
        if not isinstance(exp, int | float) or not isinstance(iat, int | float):
            raise CdsAuthError("bad_time_claims")
        if exp - now > MAX_TOKEN_LIFETIME_SECONDS + self._leeway:
            raise CdsAuthError("exp_too_far")
        if iat - now > self._leeway:
            raise CdsAuthError("iat_in_future")
        if not isinstance(jti, str) or not 0 < len(jti) <= 255:
            raise CdsAuthError("bad_jti")
        try:
            fresh = self._replay_guard.first_use(issuer, jti, int(exp - now) + self._leeway)
        except redis.RedisError as exc:
            # Fail closed: without the replay check a captured token could be replayed.
            log.error("cds.jti_store_unavailable", error_class=type(exc).__name__)
            raise CdsAuthError("replay_check_unavailable") from exc
        if not fresh:
            raise CdsAuthError("replayed_jti")
        tenant_ref = keys.tenant_for(claims.get("tenant"))
        if tenant_ref is None:
            raise CdsAuthError("tenant_not_mapped")
        return CdsClient(
            issuer=issuer,
            subject=claims.get("sub"),
            tenant=claims.get("tenant"),
            tenant_ref=tenant_ref,
        )


def _bearer_token(authorization: str | None) -> str:
    if not authorization or authorization[:7].lower() != "bearer ":
        raise CdsAuthError("missing_bearer")
    token = authorization[7:].strip()
    if not token or len(token) > MAX_TOKEN_BYTES:
        raise CdsAuthError("missing_bearer")
    return token


def _reason(exc: jwt.PyJWTError) -> str:
    names = {
        jwt.ExpiredSignatureError: "expired",
        jwt.InvalidAudienceError: "wrong_audience",
        jwt.InvalidIssuerError: "wrong_issuer",
        jwt.MissingRequiredClaimError: "missing_claim",
        jwt.ImmatureSignatureError: "not_yet_valid",
        jwt.InvalidSignatureError: "bad_signature",
    }
    for kind, reason in names.items():
        if isinstance(exc, kind):
            return reason
    return "invalid_token"

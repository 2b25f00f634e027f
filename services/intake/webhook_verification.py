"""Standard Webhooks verification for inbound EHR webhooks.

Headers `webhook-id`, `webhook-timestamp` (unix seconds) and `webhook-signature` (space-separated
`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`). The HMAC is checked by the `standardwebhooks`
package (constant-time compare, ±5 minutes), once per active secret of the integration, over
the raw body bytes exactly as received. No Flask here: the view passes headers and bytes in.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.intake import ehr_integrations
from shared.cache_invalidation import INTEGRATIONS, ListeningCache, publisher
from shared.expiring_cache import ExpiringLru
from shared.models import utcnow

# The Standard Webhooks tolerance; the standardwebhooks package enforces the same window.
TOLERANCE = timedelta(minutes=5)
MAX_WEBHOOK_ID_LENGTH = 255  # the idempotency key column
# Unix seconds have 10 digits until the year 2286. The bound keeps int() and the float
# arithmetic of the tolerance check away from the 400-digit numbers a caller may send.
MAX_TIMESTAMP_DIGITS = 12
# A v1 signature is 47 characters; this leaves room for dozens listed during a key rotation.
MAX_SIGNATURE_HEADER_LENGTH = 2048
MAX_INTEGRATION_REF_LENGTH = 100
# The per-process cache of senders (as shared.auth bounds the API key cache).
KNOWN_SENDERS_CACHED = 10_000
UNKNOWN_SENDERS_CACHED = 2_000
UNKNOWN_SENDER_CACHE_SECONDS = 5.0


class WebhookRejected(Exception):
    """A webhook refused before its body is looked at. `reason` is a short code for logs."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class WebhookHeaders:
    """The three Standard Webhooks headers, checked for form (not yet for authenticity)."""

    webhook_id: str
    timestamp: int
    signatures: tuple[str, ...]

    @classmethod
    def read(cls, headers: Mapping[str, str]) -> WebhookHeaders:
        """Parse the headers; a missing or malformed one is a 400."""
        webhook_id = headers.get("webhook-id") or ""
        raw_timestamp = headers.get("webhook-timestamp") or ""
        raw_signature = headers.get("webhook-signature") or ""
        missing = [
            name
            for name, value in (
                ("webhook-id", webhook_id),
                ("webhook-timestamp", raw_timestamp),
                ("webhook-signature", raw_signature),
            )
            if not value
        ]
        if missing:
            raise WebhookRejected(
                400,
                "missing_headers",
                f"Missing Standard Webhooks header(s): {', '.join(missing)}.",
            )
        if len(webhook_id) > MAX_WEBHOOK_ID_LENGTH or not _printable_ascii(webhook_id):
            raise WebhookRejected(
                400,
                "bad_webhook_id",
                f"webhook-id is 1 to {MAX_WEBHOOK_ID_LENGTH} printable ASCII characters.",
            )
        # isdigit() alone admits '²' and other digits int() refuses; the length bounds the rest.
        if (
            len(raw_timestamp) > MAX_TIMESTAMP_DIGITS
            or not raw_timestamp.isascii()
            or not raw_timestamp.isdigit()
        ):
            raise WebhookRejected(
                400, "bad_timestamp", "webhook-timestamp is the send time in unix seconds."
            )
        if len(raw_signature) > MAX_SIGNATURE_HEADER_LENGTH:
            raise WebhookRejected(
                400,
                "bad_signature_header",
                f"webhook-signature is at most {MAX_SIGNATURE_HEADER_LENGTH} characters.",
            )
        # Keep only well-formed v1 entries: the package gives up at the first malformed one,
        # which would hide a valid signature listed after it.
        signatures = tuple(
            entry for entry in raw_signature.split() if _well_formed_v1_signature(entry)
        )
        return cls(webhook_id, int(raw_timestamp), signatures)

    def as_headers(self) -> dict[str, str]:
        return {
            "webhook-id": self.webhook_id,
            "webhook-timestamp": str(self.timestamp),
            "webhook-signature": " ".join(self.signatures),
        }


def _printable_ascii(text: str) -> bool:
    return text.isascii() and text.isprintable()


def _well_formed_v1_signature(entry: str) -> bool:
    version, _, signature = entry.partition(",")
    if version != "v1" or not signature:
        return False
    try:
        base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def check_timestamp(headers: WebhookHeaders, now: datetime | None = None) -> None:
    """401 when the send time is more than five minutes from now, either way (replays of old
    captures, or a sender whose clock is wrong)."""
    now = now or utcnow()
    skew = headers.timestamp - now.timestamp()
    if abs(skew) > TOLERANCE.total_seconds():
        direction = "old" if skew < 0 else "far in the future"
        raise WebhookRejected(
            401,
            "stale_timestamp",
            f"webhook-timestamp is too {direction}: it must be within 5 minutes of our clock "
            "(check the sender's clock, and sign each delivery afresh).",
        )


@dataclass(frozen=True)
class WebhookSender:
    """An enabled integration as the verifier needs it: its scopes and its active secrets."""

    integration_id: str
    name: str
    scopes: frozenset[str]
    # Whose reports its webhooks submit.
    tenant_id: str
    # (verifier built from one secret, when that secret stops being accepted)
    verifiers: tuple[tuple[Webhook, datetime | None], ...]

    def verify(self, body: bytes, headers: WebhookHeaders, now: datetime | None = None) -> None:
        """Pass if any active secret signed `id.timestamp.body`; else a 401."""
        now = now or utcnow()
        if headers.signatures:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise WebhookRejected(400, "not_utf8", "The body must be UTF-8 JSON.") from None
            for verifier, expires_at in self.verifiers:
                if expires_at is not None and expires_at <= now:
                    continue
                try:
                    verifier.verify(text, headers.as_headers(), json_parse=False)
                    return
                except WebhookVerificationError:
                    continue
        raise BAD_SIGNATURE


# The same answer for an unknown integration as for a wrong signature: a caller without a
# secret learns nothing about which integrations exist.
BAD_SIGNATURE = WebhookRejected(
    401,
    "bad_signature",
    "No webhook-signature matches an active secret of this integration.",
)


class WebhookSenders:
    """Finds the possible senders of a webhook by integration id or name (a name may belong to
    integrations of several tenants: the signature picks the one), with a short per-process
    cache (like API keys) so a webhook costs no extra query. A change to an integration (a
    secret added or revoked, the integration created or disabled) reaches every process's cache
    at once when announced with `announce_integration_change`; else after `cache_seconds`."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        cache_seconds: float,
        redis_url: str | None = None,
    ) -> None:
        self._session_factory = session_factory
        self._cache_seconds = cache_seconds
        # Known integrations, and apart (so made-up names only ever evict each other) unknown
        # ones, remembered briefly. Changes reach every process at once through Redis
        # (shared/cache_invalidation.py); `cache_seconds` bounds them while Redis is away.
        self._known: ExpiringLru[str, tuple[WebhookSender, ...]] = ExpiringLru(KNOWN_SENDERS_CACHED)
        self._unknown: ExpiringLru[str, bool] = ExpiringLru(UNKNOWN_SENDERS_CACHED)
        self._generation = 0  # bumped by invalidations (see shared.auth.ApiKeyVerifier)
        self._lock = threading.Lock()
        self._changes = ListeningCache(redis_url, INTEGRATIONS) if redis_url else None

    @property
    def changes(self) -> ListeningCache | None:
        """How integration changes reach this process (None: only through expiry)."""
        return self._changes

    def invalidate(self, keys: Sequence[str]) -> None:
        """Forget the integrations with these ids or names (an integration changed)."""
        gone = set(keys)
        with self._lock:
            self._known.discard(gone)
            self._known.discard_where(
                lambda senders: any(sender.integration_id in gone for sender in senders)
            )
            self._unknown.discard(gone)
            self._generation += 1

    def invalidate_all(self) -> None:
        with self._lock:
            self._known.clear()
            self._unknown.clear()
            self._generation += 1

    def find(self, id_or_name: str) -> tuple[WebhookSender, ...]:
        """The enabled integrations with this id or name (none, one, or one per tenant)."""
        if self._changes is not None:
            self._changes.ensure(self)
        now = time.monotonic()
        with self._lock:
            known = self._known.get(id_or_name, now)
            if known is not None:
                return known
            if self._unknown.get(id_or_name, now):
                return ()
            generation = self._generation
        senders = self._load(id_or_name)
        if self._cache_seconds > 0:
            with self._lock:
                if generation == self._generation:
                    if senders:
                        self._known.put(id_or_name, senders, now + self._cache_seconds)
                    else:
                        seconds = min(self._cache_seconds, UNKNOWN_SENDER_CACHE_SECONDS)
                        self._unknown.put(id_or_name, True, now + seconds)
        return senders

    def _load(self, id_or_name: str) -> tuple[WebhookSender, ...]:
        # Also keeps NUL and control characters out of the query (PostgreSQL refuses NUL).
        if not 0 < len(id_or_name) <= MAX_INTEGRATION_REF_LENGTH or not id_or_name.isprintable():
            return ()
        with self._session_factory() as session:
            moment = utcnow()
            return tuple(
                WebhookSender(
                    integration.id,
                    integration.name,
                    frozenset(integration.scopes),
                    integration.tenant_id,
                    tuple(
                        (Webhook(secret.secret), ehr_integrations.as_utc(secret.expires_at))
                        for secret in integration.secrets
                        if secret.active_at(moment)
                    ),
                )
                for integration in ehr_integrations.find_webhook_senders(session, id_or_name)
                if integration.disabled_at is None
            )


def announce_integration_change(
    redis_target: redis.Redis | str, integration_id: str, name: str
) -> bool:
    """Tell every intake process to forget its cached senders of this integration: call it once
    a change (created, disabled, secret added or revoked) has committed, with the service's
    Redis client or (command line) the Redis URL. False when Redis is unreachable (logged):
    the caches then expire on their own time."""
    return publisher(redis_target)(INTEGRATIONS, [integration_id, name])


def verified_sender(
    senders: tuple[WebhookSender, ...], body: bytes, headers: WebhookHeaders
) -> WebhookSender:
    """The one of `senders` whose active secret signed the webhook; else the 401 an unknown
    integration gets too."""
    for sender in senders:
        try:
            sender.verify(body, headers)
        except WebhookRejected as why:
            if why is not BAD_SIGNATURE:
                raise
            continue
        return sender
    raise BAD_SIGNATURE

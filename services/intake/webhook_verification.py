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
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.intake import ehr_integrations
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
    """Finds the sender of a webhook by integration id or name, with a short per-process cache
    (like API keys) so a webhook costs no extra query; revoking takes that long to bite."""

    def __init__(self, session_factory: sessionmaker[Session], cache_seconds: float) -> None:
        self._session_factory = session_factory
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, WebhookSender | None]] = {}
        self._lock = threading.Lock()

    def find(self, id_or_name: str) -> WebhookSender | None:
        """The enabled integration with this id or name, or None."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(id_or_name)
        if hit is not None and hit[0] > now:
            return hit[1]
        sender = self._load(id_or_name)
        if self._cache_seconds > 0:
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[id_or_name] = (now + self._cache_seconds, sender)
        return sender

    def _load(self, id_or_name: str) -> WebhookSender | None:
        # Also keeps NUL and control characters out of the query (PostgreSQL refuses NUL).
        if not 0 < len(id_or_name) <= MAX_INTEGRATION_REF_LENGTH or not id_or_name.isprintable():
            return None
        with self._session_factory() as session:
            integration = ehr_integrations.find_integration(session, id_or_name)
            if integration is None or integration.disabled_at is not None:
                return None
            moment = utcnow()
            verifiers = tuple(
                (Webhook(secret.secret), ehr_integrations.as_utc(secret.expires_at))
                for secret in integration.secrets
                if secret.active_at(moment)
            )
            return WebhookSender(
                integration.id, integration.name, frozenset(integration.scopes), verifiers
            )

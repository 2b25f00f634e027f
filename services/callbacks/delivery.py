"""Delivering result callbacks: signed webhooks to subscribed EHR endpoints (Standard Webhooks).

How a result reaches an EHR:

1. `enqueue_result_callbacks` (shared/callbacks.py) runs inside the scoring transaction: for
   each active subscription of the assessment's tenant whose event types match, it writes a
   `callback_deliveries` row (`pending`) and an outbox row (task `callbacks.deliver`, queue
   `callbacks`). Scoring never waits on an EHR.
2. The outbox relay publishes the task (task id = outbox id) to the `callbacks` queue, which the
   callbacks worker (`services.callbacks.worker`, its own Celery app) consumes, so a slow EHR
   never holds up scoring.
3. `deliver` claims the row (`delivering`, with a lease) unless its subscription already has
   `max_in_flight` attempts running (then the row waits as `failed_retrying` for a second or
   two, attempt count untouched). It POSTs the signed payload to the address the destination
   policy checked (`http.py`: public https only, unless allowlisted), within a total deadline,
   logs the attempt and moves the row on: `delivered`; `failed_retrying` with
   `next_attempt_at` from the retry schedule (with jitter, never before `Retry-After`); `dead`
   after the last attempt or on a non-retryable answer; `disabled` on `410 Gone`, which also
   disables the subscription. It then marks its own outbox row completed.
4. Retries live in the database, not in Celery countdowns: the relay calls
   `queue_due_deliveries` every second, which turns due `failed_retrying` rows back into
   `pending` with a fresh outbox row. A restart loses nothing.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import cast

import requests
import structlog
from prometheus_client import Counter, Histogram
from sqlalchemy import Table, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook

from services.callbacks.http import (
    DeadlineExceeded,
    DestinationNotAllowed,
    callback_session,
    post_callback,
)
from shared import worker_runtime
from shared.callback_destinations import DestinationPolicy
from shared.callbacks import disable_subscription, payload_body
from shared.config import Settings
from shared.db import transaction
from shared.models import (
    DELIVERY_DEAD,
    DELIVERY_DELIVERED,
    DELIVERY_DELIVERING,
    DELIVERY_DISABLED,
    DELIVERY_PENDING,
    DELIVERY_RETRYING,
    CallbackAttempt,
    CallbackDelivery,
    CallbackSubscription,
    OutboxMessage,
    new_id,
    utcnow,
)

log = structlog.get_logger("myotriage.callbacks")

# Answers worth trying again; 410 disables; any other non-2xx is dead-lettered at once (the
# same signed request will not start to succeed: the integrator fixes it and replays).
RETRYABLE_STATUS = frozenset({408, 425, 429})
MAX_RETRY_AFTER_SECONDS = 24 * 3600.0
# A worker's hold on a `delivering` row outlasts its attempt's deadline by this much.
LEASE_MARGIN_SECONDS = 5.0
USER_AGENT = "MyoTriage-Webhooks/1.0"
# What the delivery log says of a destination the policy refused: nothing of what it resolved to.
DESTINATION_NOT_ALLOWED = "destination not allowed"
# A delivery held back by its subscription's in-flight cap is tried again after this long
# (plus up to as much again at random, so held-back deliveries do not return in a crowd).
DEFER_SECONDS = 1.0

ATTEMPTS = Counter("myotriage_callback_attempts_total", "Callback HTTP attempts", ["outcome"])
ATTEMPT_SECONDS = Histogram(
    "myotriage_callback_attempt_seconds",
    "Callback HTTP attempt duration",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


# ---- Retry policy -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """When to try, how long to wait for an answer, how many tries before dead-lettering, and
    how many tries of one subscription may run at once."""

    schedule: tuple[float, ...]
    jitter: float = 0.2
    connect_timeout: float = 3.0
    read_timeout: float = 10.0  # per read
    total_timeout: float = 15.0  # the whole attempt
    max_in_flight: int = 8  # per subscription

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            schedule=parse_schedule(settings.callback_retry_schedule),
            jitter=settings.callback_retry_jitter,
            connect_timeout=settings.callback_connect_timeout,
            read_timeout=settings.callback_read_timeout,
            total_timeout=settings.callback_total_timeout,
            max_in_flight=max(1, settings.callback_max_in_flight),
        )

    @property
    def max_attempts(self) -> int:
        return len(self.schedule)

    @property
    def lease_seconds(self) -> float:
        return self.total_timeout + LEASE_MARGIN_SECONDS

    def delay_after(
        self,
        attempts_made: int,
        retry_after: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float | None:
        """Seconds to wait after `attempts_made` failed tries; None when no try is left.

        The scheduled delay is spread by ± `jitter` so that receivers that failed together are
        not retried together, and never ends before the receiver's `Retry-After`.
        """
        if attempts_made >= len(self.schedule):
            return None
        delay = self.schedule[attempts_made] * (1 + self.jitter * (2 * rand() - 1))
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))
        return max(0.0, delay)


def parse_schedule(text: str) -> tuple[float, ...]:
    """`"0,5,300"` → (0.0, 5.0, 300.0); at least one non-negative delay."""
    try:
        delays = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ValueError(f"callback retry schedule {text!r} is not a list of seconds") from exc
    if not delays or any(d < 0 for d in delays):
        raise ValueError(f"callback retry schedule {text!r} needs non-negative delays")
    return delays


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date); None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() is true, float("²") is not
        # A 400-digit delay is just "a long time": no conversion of huge numbers.
        return float(value) if len(value) <= 12 else MAX_RETRY_AFTER_SECONDS
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - now).total_seconds())


# ---- Signatures -------------------------------------------------------------------------------


def signed_headers(secret: str, delivery_id: str, body: str, at: datetime) -> dict[str, str]:
    """Standard Webhooks headers: `webhook-id`, `webhook-timestamp`, `webhook-signature`."""
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(delivery_id, at, body),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }


# ---- Delivering -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Claim:
    delivery_id: str
    subscription_id: str
    attempt: int
    url: str
    secret: str
    body: str


@dataclass(frozen=True)
class _Response:
    status_code: int | None
    error: str | None
    retry_after: str | None
    duration_ms: float


def deliver(
    sessions: sessionmaker[Session],
    delivery_id: str,
    policy: RetryPolicy,
    *,
    message_id: str | None = None,
    destinations: DestinationPolicy | None = None,
) -> str:
    """Make one attempt at `delivery_id` if it is due; returns what happened.

    Outcomes: delivered, retry, dead, disabled (this attempt's result), deferred (its
    subscription already has `policy.max_in_flight` attempts running: it waits a moment, no
    attempt counted), or skipped (nothing to do: already final, waiting for its retry time, or
    another worker holds it). `message_id` is the outbox row that woke us; it is marked
    completed unless another worker holds the row. `destinations` defaults to the
    environment's settings (no allowlist unless MYOTRIAGE_CALLBACK_ALLOWED_NETWORKS is set).
    """
    claim, skipped = _claim(sessions, delivery_id, policy, message_id)
    if claim is None:
        return skipped
    started = utcnow()
    destinations = destinations or destinations_for(worker_runtime.settings())
    response = _post(_http_session(destinations), claim, policy, started)
    return _record(sessions, claim, response, started, policy, message_id)


# Hot-path statements, built once at import: a constant Core statement is compiled once and then
# served from SQLAlchemy's cache, whereas ORM objects, ORM-enabled UPDATEs (which evaluate their
# WHERE against the identity map) and freshly built statements cost several times the SQL.
# (`__table__` is typed as a FromClause; these are Tables.)
_deliveries = cast(Table, CallbackDelivery.__table__)
_subscriptions = cast(Table, CallbackSubscription.__table__)
_outbox = cast(Table, OutboxMessage.__table__)

# Attempts of the same subscription running now (live leases; a dead worker's expired lease
# does not count). The (status, next_attempt_at) index finds them among few rows.
_busy = _deliveries.alias("busy")
_IN_FLIGHT = (
    select(func.count())
    .select_from(_busy)
    .where(
        _busy.c.status == DELIVERY_DELIVERING,
        _busy.c.next_attempt_at > bindparam("now"),
        _busy.c.subscription_id == _deliveries.c.subscription_id,
    )
    .scalar_subquery()
)

# Compare-and-set: of two workers woken for the same row, exactly one matches; and only while
# the subscription has fewer than `max_in_flight` attempts running.
_CLAIM = (
    update(_deliveries)
    .where(
        _deliveries.c.id == bindparam("delivery_id"),
        or_(
            _deliveries.c.status == DELIVERY_PENDING,
            and_(
                _deliveries.c.status == DELIVERY_DELIVERING,
                _deliveries.c.next_attempt_at <= bindparam("now"),  # a dead worker's lease
            ),
        ),
        bindparam("max_in_flight") > _IN_FLIGHT,
    )
    .values(
        status=DELIVERY_DELIVERING,
        next_attempt_at=bindparam("lease_until"),
        attempts=_deliveries.c.attempts + 1,
    )
)

# The delivery and its subscription in one round trip (outer join: the subscription may be gone).
_LOAD_CLAIMED = (
    select(
        _deliveries.c.status,
        _deliveries.c.attempts,
        _deliveries.c.payload,
        _subscriptions.c.id.label("subscription_id"),
        _subscriptions.c.callback_url,
        _subscriptions.c.secret,
        _subscriptions.c.disabled_at,
    )
    .select_from(
        _deliveries.outerjoin(_subscriptions, _subscriptions.c.id == _deliveries.c.subscription_id)
    )
    .where(_deliveries.c.id == bindparam("delivery_id"))
)

# PostgreSQL: claims of one subscription's deliveries take turns (until commit), so that two
# workers cannot both count the same in-flight attempts and both pass the cap. An advisory lock
# rather than a row lock: recording an outcome also writes the subscription row (410), and must
# not wait on a claim that waits on it. (SQLite runs one writer at a time anyway.)
_LOCK_SUBSCRIPTION_CLAIMS = select(
    func.pg_advisory_xact_lock(
        func.hashtext("myotriage.callback_claim"), func.hashtext(_deliveries.c.subscription_id)
    )
).where(_deliveries.c.id == bindparam("delivery_id"))

# A pending delivery held back by the in-flight cap waits as a retry does, for the relay.
_DEFER = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("delivery_id"), _deliveries.c.status == DELIVERY_PENDING)
    .values(status=DELIVERY_RETRYING, next_attempt_at=bindparam("until"))
)

# A claimed delivery whose subscription is gone or disabled is not sent.
_DISABLE_CLAIMED = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("delivery_id"))
    .values(status=DELIVERY_DISABLED, next_attempt_at=None)
)

_INSERT_ATTEMPT = insert(cast(Table, CallbackAttempt.__table__))

# Only while we still hold it: had our lease run out and another worker taken over, its result
# stands (this attempt is logged all the same). `delivered_at` is only ever set, never cleared:
# a NULL parameter keeps the stored value, as leaving the column out of the UPDATE would.
_RECORD_OUTCOME = (
    update(_deliveries)
    .where(
        _deliveries.c.id == bindparam("delivery_id"),
        _deliveries.c.status == DELIVERY_DELIVERING,
        _deliveries.c.attempts == bindparam("attempt"),
    )
    .values(
        status=bindparam("new_status"),
        next_attempt_at=bindparam("next_attempt_at"),
        last_status_code=bindparam("last_status_code"),
        last_error=bindparam("last_error"),
        delivered_at=func.coalesce(
            bindparam("delivered_at", type_=_deliveries.c.delivered_at.type),
            _deliveries.c.delivered_at,
        ),
    )
)

_COMPLETE_MESSAGE = (
    update(_outbox)
    .where(_outbox.c.id == bindparam("message_id"), _outbox.c.completed_at.is_(None))
    .values(completed_at=bindparam("done_at"))
)


def _claim(
    sessions: sessionmaker[Session],
    delivery_id: str,
    policy: RetryPolicy,
    message_id: str | None,
) -> tuple[_Claim | None, str]:
    now = utcnow()
    # The transaction starts with its write: on SQLite a read-then-write transaction fails at
    # once (SQLITE_BUSY_SNAPSHOT) if another process wrote in between, a write-first one waits.
    with transaction(sessions) as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(_LOCK_SUBSCRIPTION_CLAIMS, {"delivery_id": delivery_id})
        claimed = session.execute(
            _CLAIM,
            {
                "delivery_id": delivery_id,
                "now": now,
                "lease_until": now + timedelta(seconds=policy.lease_seconds),
                "max_in_flight": policy.max_in_flight,
            },
        ).rowcount  # type: ignore[attr-defined]
        row = session.execute(_LOAD_CLAIMED, {"delivery_id": delivery_id}).first()
        if not claimed and row is not None and row.status == DELIVERY_PENDING:
            # Pending rows are always claimable but for the cap: wait and let the relay queue
            # it again (deferred, not dropped; no attempt is counted).
            wait = DEFER_SECONDS * (1 + random.random())
            session.execute(
                _DEFER, {"delivery_id": delivery_id, "until": now + timedelta(seconds=wait)}
            )
            _complete_message(session, message_id)
            log.info(
                "callback.deferred",
                delivery_id=delivery_id,
                subscription_id=row.subscription_id,
                max_in_flight=policy.max_in_flight,
            )
            return None, "deferred"
        if not claimed:
            busy = row is not None and row.status == DELIVERY_DELIVERING
            if not busy:
                _complete_message(session, message_id)
            return None, "skipped"
        assert row is not None
        if row.subscription_id is None or row.disabled_at is not None:
            session.execute(_DISABLE_CLAIMED, {"delivery_id": delivery_id})
            _complete_message(session, message_id)
            return None, DELIVERY_DISABLED
        return (
            _Claim(
                delivery_id=delivery_id,
                subscription_id=row.subscription_id,
                attempt=row.attempts,
                url=row.callback_url,
                secret=row.secret,
                body=payload_body(row.payload),
            ),
            "",
        )


def _post(http: requests.Session, claim: _Claim, policy: RetryPolicy, at: datetime) -> _Response:
    """POST the signed body once, to the checked address only, within the total deadline."""
    headers = signed_headers(claim.secret, claim.delivery_id, claim.body, at)
    started = time.perf_counter()
    try:
        answer = post_callback(
            http,
            claim.url,
            claim.body.encode("utf-8"),
            headers,
            connect_timeout=policy.connect_timeout,
            read_timeout=policy.read_timeout,
            total_timeout=policy.total_timeout,
        )
    except DestinationNotAllowed as exc:
        # The log says why (for operators); the delivery log only that it was refused, and no
        # timing: what the name resolved to, and whether anything answers there, stay ours.
        log.warning(
            "callback.destination_refused",
            delivery_id=claim.delivery_id,
            subscription_id=claim.subscription_id,
            reason=exc.code,
        )
        return _Response(None, DESTINATION_NOT_ALLOWED, None, 0.0)
    except DeadlineExceeded:
        return _Response(None, "DeadlineExceeded", None, _ms_since(started))
    except requests.RequestException as exc:
        return _Response(None, type(exc).__name__, None, _ms_since(started))
    return _Response(answer.status_code, None, answer.retry_after, _ms_since(started))


def _outcome(
    response: _Response, attempt: int, policy: RetryPolicy, now: datetime
) -> tuple[str, float | None]:
    """(delivered | retry | dead | disabled, seconds until the next try when retrying)."""
    code = response.status_code
    if code is not None and 200 <= code < 300:
        return DELIVERY_DELIVERED, None
    if code == 410:
        return DELIVERY_DISABLED, None
    retryable = code is None or code >= 500 or code in RETRYABLE_STATUS
    if not retryable:
        return DELIVERY_DEAD, None
    delay = policy.delay_after(attempt, parse_retry_after(response.retry_after, now))
    return ("retry", delay) if delay is not None else (DELIVERY_DEAD, None)


def _record(
    sessions: sessionmaker[Session],
    claim: _Claim,
    response: _Response,
    started: datetime,
    policy: RetryPolicy,
    message_id: str | None,
) -> str:
    now = utcnow()
    outcome, delay = _outcome(response, claim.attempt, policy, now)
    ATTEMPTS.labels(outcome).inc()
    ATTEMPT_SECONDS.observe(response.duration_ms / 1000)
    fields = {
        "delivery_id": claim.delivery_id,
        "subscription_id": claim.subscription_id,
        "attempt": claim.attempt,
        "status_code": response.status_code,
        "error_class": response.error,
        "ms": round(response.duration_ms, 1),
    }
    # Write-first transaction (see `_claim`): the attempt row, then the delivery's new state.
    with transaction(sessions) as session:
        session.execute(
            _INSERT_ATTEMPT,
            {
                "id": new_id(),
                "delivery_id": claim.delivery_id,
                "subscription_id": claim.subscription_id,
                "attempt": claim.attempt,
                "started_at": started,
                "duration_ms": round(response.duration_ms, 2),
                "status_code": response.status_code,
                "error": response.error,
                "outcome": outcome,
            },
        )
        session.execute(
            _RECORD_OUTCOME,
            {
                "delivery_id": claim.delivery_id,
                "attempt": claim.attempt,
                "new_status": DELIVERY_RETRYING if outcome == "retry" else outcome,
                "next_attempt_at": (
                    now + timedelta(seconds=delay or 0) if outcome == "retry" else None
                ),
                "last_status_code": response.status_code,
                "last_error": response.error,
                "delivered_at": now if outcome == DELIVERY_DELIVERED else None,
            },
        )
        if outcome == DELIVERY_DISABLED:
            # Rare: the ORM path is fine here.
            subscription = session.get(CallbackSubscription, claim.subscription_id)
            if subscription is not None:
                disable_subscription(session, subscription, "the endpoint answered 410 Gone")
        _complete_message(session, message_id)
    if outcome == DELIVERY_DELIVERED:
        log.info("callback.delivered", **fields)
    elif outcome == "retry":
        log.warning("callback.retry_scheduled", retry_in_s=round(delay or 0, 1), **fields)
    elif outcome == DELIVERY_DEAD:
        log.warning("callback.dead_lettered", **fields)
    else:
        log.warning("callback.subscription_disabled", **fields)
    return outcome


def _complete_message(session: Session, message_id: str | None) -> None:
    # Our outbox row is done once the delivery no longer needs it (final, or waiting for a
    # retry that the relay will queue afresh); otherwise the relay would republish it forever.
    if message_id is None:
        return
    session.execute(_COMPLETE_MESSAGE, {"message_id": message_id, "done_at": utcnow()})


# ---- Internals --------------------------------------------------------------------------------

_local = threading.local()


def _http_session(destinations: DestinationPolicy) -> requests.Session:
    """This thread's keep-alive pool for `destinations` (requests.Session is not thread-safe),
    none across a fork. It reads nothing from the environment: no .netrc, no proxies
    (`http.callback_session` says why)."""
    pid = os.getpid()
    forked = getattr(_local, "pid", None) != pid
    if forked or getattr(_local, "destinations", None) is not destinations:
        if not forked:
            _local.session.close()  # another policy (tests): its pools go with it
        _local.pid = pid
        _local.destinations = destinations
        _local.session = callback_session(destinations)
    return _local.session  # type: ignore[no-any-return]


def destinations_for(settings: Settings) -> DestinationPolicy:
    """`DestinationPolicy.from_settings`, parsed once per settings object rather than per task."""
    cached = getattr(_local, "destination_policy", None)
    if cached is None or cached[0] is not settings:
        cached = _local.destination_policy = (settings, DestinationPolicy.from_settings(settings))
    return cached[1]  # type: ignore[no-any-return]


def policy_for(settings: Settings) -> RetryPolicy:
    """`RetryPolicy.from_settings`, parsed once per settings object rather than per task."""
    cached = getattr(_local, "policy", None)
    if cached is None or cached[0] is not settings:
        cached = _local.policy = (settings, RetryPolicy.from_settings(settings))
    return cached[1]  # type: ignore[no-any-return]


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000

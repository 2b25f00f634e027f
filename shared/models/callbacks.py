"""Models for outbound result callbacks.

A `CallbackSubscription` is an EHR endpoint that wants results; each result written makes one
`CallbackDelivery` per matching subscription and event type, and every HTTP try of a delivery is
a `CallbackAttempt` (the delivery log).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from shared.models.base import Base, UtcDateTime, new_id, utcnow
from shared.secrets_at_rest import EncryptedText

# Delivery states (docs/INTEGRATION-OUTBOUND.md has the diagram).
DELIVERY_PENDING = "pending"  # queued for an attempt: an open outbox row will run it
DELIVERY_DELIVERING = "delivering"  # a worker holds it until `next_attempt_at` (its lease)
DELIVERY_DELIVERED = "delivered"
DELIVERY_RETRYING = "failed_retrying"  # waiting for `next_attempt_at`; the relay re-queues it
DELIVERY_DEAD = "dead"  # dead-lettered after the last attempt; can be replayed
DELIVERY_DISABLED = "disabled"  # the subscription was disabled before it went out
DELIVERY_STATUSES = (
    DELIVERY_PENDING,
    DELIVERY_DELIVERING,
    DELIVERY_DELIVERED,
    DELIVERY_RETRYING,
    DELIVERY_DEAD,
    DELIVERY_DISABLED,
)
FINAL_DELIVERY_STATUSES = frozenset({DELIVERY_DELIVERED, DELIVERY_DEAD, DELIVERY_DISABLED})


class CallbackSubscription(Base):
    """An EHR endpoint subscribed to result events, owned by the API key that created it.

    Signing needs the secret itself (HMAC), so it is stored encrypted under
    MYOTRIAGE_SECRET_KEYS (shared/secrets_at_rest.py) and read back in clear; it is shown to
    the subscriber once and never logged.
    """

    __tablename__ = "callback_subscriptions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # Only this organisation's results are delivered to it.
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    owner_key_id: Mapped[str] = mapped_column(String(36), index=True)
    callback_url: Mapped[str] = mapped_column(String(2000))
    secret: Mapped[str] = mapped_column(EncryptedText())
    event_types: Mapped[list[str]] = mapped_column(JSON)
    include_fhir: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)

    __table_args__ = (Index("ix_callback_subscriptions_active", "disabled_at"),)


class CallbackDelivery(Base):
    """One event for one subscription. Its id is the `webhook-id`, stable across retries."""

    __tablename__ = "callback_deliveries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    subscription_id: Mapped[str] = mapped_column(
        ForeignKey("callback_subscriptions.id", ondelete="CASCADE"), index=True
    )
    assessment_id: Mapped[str] = mapped_column(
        ForeignKey("assessments.id", ondelete="CASCADE"), index=True
    )
    # The triage result the event is about (a re-score makes a new result and new deliveries).
    result_id: Mapped[str] = mapped_column(String(36))
    event_type: Mapped[str] = mapped_column(String(50))
    # The exact JSON sent: ids, codes and links only (plus FHIR resources when asked for).
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default=DELIVERY_PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When the next attempt may start; while `delivering`, when the worker's lease runs out.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(100), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)

    __table_args__ = (
        UniqueConstraint(
            "subscription_id", "result_id", "event_type", name="uq_callback_deliveries_event"
        ),
        Index("ix_callback_deliveries_due", "status", "next_attempt_at"),
    )


class CallbackAttempt(Base):
    """One HTTP try of a delivery: when, how long, what came back (status code or error class)."""

    __tablename__ = "callback_attempts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("callback_deliveries.id", ondelete="CASCADE"), index=True
    )
    subscription_id: Mapped[str] = mapped_column(String(36), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    duration_ms: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The exception class for timeouts and connection errors (never a message: it may quote URLs).
    error: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # What the attempt led to: delivered, retry, dead, disabled.
    outcome: Mapped[str] = mapped_column(String(20))

"""SQLAlchemy 2 models. The database is the source of truth; Redis only wakes workers.

Schema changes go through Alembic (`shared/migrations/`), never `create_all` outside tests of
the migrations themselves.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator
from uuid6 import uuid7

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL stores and returns aware datetimes; SQLite returns naive ones, which would leave
    the API's timestamps without their "+00:00". Values are stored in UTC and read back as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """A new row id: a UUIDv7, so ids sort by creation time and inserts append to id indexes
    (random UUIDv4s scatter them over the index, dirtying a different page every time)."""
    return str(uuid7())


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON, datetime: UtcDateTime}


class Assessment(Base):
    """One symptom report as accepted, and where it is in the pipeline."""

    __tablename__ = "assessments"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    # Where it came from: api, webhook, form, batch.
    source: Mapped[str] = mapped_column(String(16), default="api")
    # The caller's patient identifier, kept as a column so an EHR can look up its patient.
    patient_ref: Mapped[str] = mapped_column(String(64), index=True)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)
    submitted_by: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)
    scored_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # Why scoring failed, as a code and a sentence without patient data.
    failure_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)

    results: Mapped[list[TriageResult]] = relationship(
        back_populates="assessment", order_by="TriageResult.created_at"
    )
    # No index on status: see migration 0006.


class TriageResult(Base):
    """The rule engine's result for an assessment under one rule-set version.

    Re-scoring under a new version adds a row and moves `current`; old rows are kept.
    """

    __tablename__ = "triage_results"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    assessment_id: Mapped[str] = mapped_column(
        ForeignKey("assessments.id", ondelete="CASCADE"), index=True
    )
    ruleset_version: Mapped[str] = mapped_column(String(32))
    triage_level: Mapped[str] = mapped_column(String(24))
    priority: Mapped[int] = mapped_column(Integer)
    # Sort key for the queue: level rank * 1000 + priority (larger = more urgent).
    urgency: Mapped[int] = mapped_column(Integer, index=True)
    current: Mapped[bool] = mapped_column(Boolean, default=True)
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    assessment: Mapped[Assessment] = relationship(back_populates="results")

    __table_args__ = (
        UniqueConstraint("assessment_id", "ruleset_version", name="uq_triage_results_version"),
        Index("ix_triage_results_current_urgency", "current", "urgency"),
        # At most one current result per assessment, and the index that finds it: without it
        # SQLite looked the current result up through (current, urgency), reading every
        # current result in the table for each task.
        Index(
            "uq_triage_results_one_current",
            "assessment_id",
            unique=True,
            sqlite_where=text("current IS 1"),
            postgresql_where=text("current IS true"),
        ),
    )


class OutboxMessage(Base):
    """A task to publish, written in the same transaction as the change that calls for it.

    The relay publishes it to Celery with task id = this row's id, so publishing twice is
    harmless: the tasks are idempotent and carry ids only, never patient data.
    """

    __tablename__ = "outbox_messages"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    task_name: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(50), default="scoring")
    assessment_id: Mapped[str | None] = mapped_column(String(36), index=True, nullable=True)
    args: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # Set once the task's work is done; a published, unfinished message is re-published later.
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    publish_count: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(200), nullable=True)

    __table_args__ = (
        Index("ix_outbox_unpublished", "published_at", "created_at"),
        Index("ix_outbox_incomplete", "completed_at", "published_at"),
    )


class ApiKey(Base):
    """A system caller's key. Only a SHA-256 of the key is stored; the key is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100))
    key_prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class IdempotencyRecord(Base):
    """The stored answer to a POST made with an Idempotency-Key, per caller."""

    __tablename__ = "idempotency_records"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    api_key_id: Mapped[str] = mapped_column(String(36))
    key: Mapped[str] = mapped_column(String(255))
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any]] = mapped_column(JSON)
    location: Mapped[str | None] = mapped_column(String(300), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("api_key_id", "key", name="uq_idempotency_caller_key"),)


class AuditEvent(Base):
    """Who read or changed which patient's data, and when. Holds ids, never the data."""

    __tablename__ = "audit_events"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(50))
    assessment_id: Mapped[str | None] = mapped_column(String(36), index=True, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


# Models of other areas live in their own modules on the same Base; importing them here puts
# every table in `Base.metadata` for Alembic and the tests.
from shared import cds_models, integration_models  # noqa: E402, F401

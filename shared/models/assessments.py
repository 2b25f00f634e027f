"""Assessments (symptom reports as accepted) and their triage results."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from shared.models.base import Base, UtcDateTime, new_id, utcnow
from shared.vocabulary import STATUS_QUEUED


class Assessment(Base):
    """One symptom report as accepted, and where it is in the pipeline."""

    __tablename__ = "assessments"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(String(16), default=STATUS_QUEUED)
    # Where it came from: api, webhook, form, batch.
    source: Mapped[str] = mapped_column(String(16), default="api")
    # The organisation it belongs to (shared/models/tenants.py).
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    # The patient is (tenant, identifier system, identifier): equal MRNs in two tenants are two
    # patients. The system is "" when the caller gave none (the contract's `patient.id`).
    patient_system: Mapped[str] = mapped_column(String(255), default="")
    patient_ref: Mapped[str] = mapped_column(String(64))
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

    __table_args__ = (
        Index("ix_assessments_tenant_patient", "tenant_id", "patient_ref", "created_at"),
    )


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

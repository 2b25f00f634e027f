"""What clinicians did with the CDS Hooks cards."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shared.models.base import Base, UtcDateTime, new_id, utcnow


class CdsFeedback(Base):
    """What a clinician did with one of our CDS Hooks cards, stored once however often sent."""

    __tablename__ = "cds_feedback"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # The tenant of the EHR (JWT issuer) that sent it.
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    service_id: Mapped[str] = mapped_column(String(64))
    card_uuid: Mapped[str] = mapped_column(String(64), index=True)
    outcome: Mapped[str] = mapped_column(String(16))  # accepted | overridden
    accepted_suggestions: Mapped[list[str]] = mapped_column(JSON, default=list)
    override_reason: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    outcome_timestamp: Mapped[datetime] = mapped_column(UtcDateTime())
    # The EHR (JWT issuer) that sent it.
    issuer: Mapped[str] = mapped_column(String(300))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    __table_args__ = (
        UniqueConstraint(
            "service_id", "card_uuid", "outcome", "outcome_timestamp", name="uq_cds_feedback_once"
        ),
    )

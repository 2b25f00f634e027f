"""Models for EHR integrations: inbound webhook integrations, their secrets, FHIR originals."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from shared.models.base import Base, UtcDateTime, new_id, utcnow
from shared.secrets_at_rest import EncryptedText


class Integration(Base):
    """An EHR (or other system) that sends signed webhooks to `POST /v1/webhooks/ehr/<id>`."""

    __tablename__ = "integrations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # The organisation its webhooks' reports belong to.
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    # Unique within its tenant.
    name: Mapped[str] = mapped_column(String(100))
    # What its webhooks may do, from shared.auth.SCOPES (inbound reports need assessments:write).
    scopes: Mapped[list[str]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    # A disabled integration is kept (assessments point at it) but its webhooks are refused.
    disabled_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)

    secrets: Mapped[list[IntegrationSecret]] = relationship(
        back_populates="integration", order_by="IntegrationSecret.created_at"
    )

    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_integrations_tenant_name"),)


class IntegrationSecret(Base):
    """One Standard Webhooks signing secret (`whsec_<base64>`). Several may be active at once,
    so an integration can rotate: add the new secret, switch the sender, revoke the old one.

    HMAC verification needs the raw key (a hash would not do), so it is stored encrypted under
    MYOTRIAGE_SECRET_KEYS (shared/secrets_at_rest.py) and read back in clear: the database
    alone is not enough to forge webhooks.
    """

    __tablename__ = "integration_secrets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    integration_id: Mapped[str] = mapped_column(
        ForeignKey("integrations.id", ondelete="CASCADE"), index=True
    )
    secret: Mapped[str] = mapped_column(EncryptedText())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    # Set when rotating with a grace period: the old secret keeps working until then.
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)

    integration: Mapped[Integration] = relationship(back_populates="secrets")

    def active_at(self, moment: datetime) -> bool:
        """Whether webhooks signed with this secret are accepted at `moment`."""
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or _aware(self.expires_at) > moment

    @property
    def hint(self) -> str:
        """Enough of the secret to tell two apart in a listing, not enough to use it."""
        return self.secret[:10] + "…"


class FhirQuestionnaireResponse(Base):
    """The QuestionnaireResponse exactly as an EHR sent it, for an assessment made from it.

    `GET /fhir/QuestionnaireResponse/<assessment_id>` returns it (RiskAssessment.basis points
    there), so the EHR gets back its own answers rather than our re-rendering of them.
    """

    __tablename__ = "fhir_questionnaire_responses"

    assessment_id: Mapped[str] = mapped_column(
        ForeignKey("assessments.id", ondelete="CASCADE"), primary_key=True
    )
    resource: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes for timezone-aware columns; they were stored as UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)

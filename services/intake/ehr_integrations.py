"""EHR integrations, their webhook signing secrets, and the FHIR originals they send.

Every query and change of these records goes through here: the admin API, the `myotriage
integration` commands, the webhook verifier and the FHIR endpoints share it.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from shared.auth import SCOPES
from shared.group_commit import Row
from shared.models import (
    DEFAULT_TENANT_ID,
    FhirQuestionnaireResponse,
    Integration,
    IntegrationSecret,
    utcnow,
)

SECRET_PREFIX = "whsec_"
# Standard Webhooks recommends 24 to 64 random bytes.
SECRET_BYTES = 32
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
DEFAULT_SCOPES = ("assessments:write",)


class IntegrationError(ValueError):
    """A request to change integrations that cannot be done (the message says why)."""


class IntegrationNameTaken(IntegrationError):
    """The tenant already has an integration of this name (a conflict, not bad input)."""


def new_webhook_secret() -> str:
    """A fresh Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def check_webhook_secret(secret: str) -> None:
    """Refuse a caller-chosen secret that is not `whsec_` + base64 of 24 to 64 bytes."""
    if not secret.startswith(SECRET_PREFIX):
        raise IntegrationError(f"a webhook secret starts with '{SECRET_PREFIX}'")
    try:
        raw = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise IntegrationError("a webhook secret is whsec_ followed by base64") from None
    if not MIN_SECRET_BYTES <= len(raw) <= MAX_SECRET_BYTES:
        raise IntegrationError(
            f"a webhook secret holds {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes"
        )


def _check_scopes(scopes: list[str] | tuple[str, ...]) -> list[str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise IntegrationError(f"unknown scope(s) {', '.join(unknown)}; valid: {', '.join(SCOPES)}")
    if not scopes:
        raise IntegrationError("give at least one scope")
    return sorted(set(scopes))


def create_integration(
    session: Session,
    name: str,
    scopes: list[str] | tuple[str, ...] = DEFAULT_SCOPES,
    *,
    tenant_id: str = DEFAULT_TENANT_ID,
) -> tuple[Integration, IntegrationSecret, str]:
    """Store a new integration of `tenant_id` with one fresh secret; returns (row, secret row,
    raw secret). Names are unique within a tenant."""
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise IntegrationError("a name is 1 to 100 characters")
    taken = select(Integration.id).where(
        Integration.tenant_id == tenant_id, Integration.name == name
    )
    if session.scalar(taken) is not None:
        raise IntegrationNameTaken(f"an integration named {name!r} exists")
    integration = Integration(name=name, scopes=_check_scopes(scopes), tenant_id=tenant_id)
    session.add(integration)
    try:
        session.flush()
    except IntegrityError:
        raise IntegrationNameTaken(f"an integration named {name!r} exists") from None
    secret_row, raw = add_secret(session, integration)
    return integration, secret_row, raw


def add_secret(
    session: Session,
    integration: Integration,
    *,
    secret: str | None = None,
    expire_others_in: timedelta | None = None,
) -> tuple[IntegrationSecret, str]:
    """Add a signing secret (fresh, or the caller's own); the others stay active unless
    `expire_others_in` gives them a grace period to run out."""
    if secret is not None:
        check_webhook_secret(secret)
    raw = secret or new_webhook_secret()
    now = utcnow()
    if expire_others_in is not None:
        until = now + expire_others_in
        for other in active_secrets(session, integration.id, now):
            expires = as_utc(other.expires_at)
            if expires is None or expires > until:
                other.expires_at = until
    row = IntegrationSecret(secret=raw)
    integration.secrets.append(row)
    session.flush()
    return row, raw


def revoke_secret(session: Session, integration_id: str, secret_id: str) -> bool:
    """Stop accepting webhooks signed with this secret at once. False if there was none."""
    row = session.scalar(
        select(IntegrationSecret).where(
            IntegrationSecret.id == secret_id, IntegrationSecret.integration_id == integration_id
        )
    )
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    return True


def disable_integration(
    session: Session, tenant_id: str, integration_id: str
) -> Integration | None:
    """Refuse every webhook of `tenant_id`'s integration from now on (its records are kept)."""
    integration = get_integration(session, tenant_id, integration_id)
    if integration is not None and integration.disabled_at is None:
        integration.disabled_at = utcnow()
    return integration


def list_integrations(session: Session, tenant_id: str | None) -> list[Integration]:
    """`tenant_id`'s integrations (every tenant's when None: the operator's CLI), oldest first."""
    query = (
        select(Integration)
        .options(selectinload(Integration.secrets))
        .order_by(Integration.created_at)
    )
    if tenant_id is not None:
        query = query.where(Integration.tenant_id == tenant_id)
    return list(session.scalars(query))


def get_integration(session: Session, tenant_id: str, integration_id: str) -> Integration | None:
    """`tenant_id`'s integration with its secrets, or None (another tenant's included)."""
    return session.scalar(
        select(Integration)
        .options(selectinload(Integration.secrets))
        .where(Integration.id == integration_id, Integration.tenant_id == tenant_id)
    )


def find_integration_by_id(session: Session, integration_id: str) -> Integration | None:
    """Any tenant's integration by id: for the operator's CLI, which works across tenants."""
    return session.scalar(
        select(Integration)
        .options(selectinload(Integration.secrets))
        .where(Integration.id == integration_id)
    )


def find_webhook_senders(session: Session, id_or_name: str) -> list[Integration]:
    """The integrations a webhook's `webhook-integration` header can mean: the one with that id,
    or every one with that name (names are unique only within a tenant). The signature decides
    which one sent it: each integration's secrets are its own."""
    return list(
        session.scalars(
            select(Integration)
            .options(selectinload(Integration.secrets))
            .where(or_(Integration.id == id_or_name, Integration.name == id_or_name))
            .order_by(Integration.created_at)
        )
    )


def active_secrets(session: Session, integration_id: str, now: datetime) -> list[IntegrationSecret]:
    rows = session.scalars(
        select(IntegrationSecret).where(
            IntegrationSecret.integration_id == integration_id,
            IntegrationSecret.revoked_at.is_(None),
        )
    )
    return [row for row in rows if row.active_at(now)]


def describe(integration: Integration, now: datetime | None = None) -> dict[str, Any]:
    """An integration as the admin API and CLI show it: never a whole secret."""
    now = now or utcnow()
    return {
        "id": integration.id,
        "tenant_id": integration.tenant_id,
        "name": integration.name,
        "scopes": list(integration.scopes),
        "created_at": integration.created_at,
        "disabled_at": integration.disabled_at,
        "secrets": [
            {
                "id": s.id,
                "hint": s.hint,
                "created_at": s.created_at,
                "expires_at": s.expires_at,
                "revoked_at": s.revoked_at,
                "active": s.active_at(now),
            }
            for s in integration.secrets
        ],
    }


# ---- FHIR originals ---------------------------------------------------------------------------


def questionnaire_response_row(assessment_id: str, resource: dict[str, Any]) -> Row:
    """The row keeping an EHR's QuestionnaireResponse with the assessment made from it."""
    return (
        FhirQuestionnaireResponse.__table__,  # type: ignore[return-value]
        {"assessment_id": assessment_id, "resource": resource, "created_at": utcnow()},
    )


def stored_questionnaire_response(session: Session, assessment_id: str) -> dict[str, Any] | None:
    row = session.get(FhirQuestionnaireResponse, assessment_id)
    return dict(row.resource) if row is not None else None


def as_utc(moment: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime (SQLite returns naive ones; they were UTC)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)

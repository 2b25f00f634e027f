"""SQLAlchemy 2 models, one module per area. The database is the source of truth; Redis only
wakes workers. Schema changes go through Alembic (`shared/migrations/`), never `create_all`
outside tests of the migrations themselves.

Importing this package puts every table in `Base.metadata` (Alembic and the tests need that).
"""

from shared.models.access import ApiKey, AuditEvent, IdempotencyRecord
from shared.models.assessments import Assessment, TriageResult
from shared.models.base import NAMING_CONVENTION, Base, UtcDateTime, new_id, utcnow
from shared.models.callbacks import (
    DELIVERY_DEAD,
    DELIVERY_DELIVERED,
    DELIVERY_DELIVERING,
    DELIVERY_DISABLED,
    DELIVERY_PENDING,
    DELIVERY_RETRYING,
    DELIVERY_STATUSES,
    FINAL_DELIVERY_STATUSES,
    CallbackAttempt,
    CallbackDelivery,
    CallbackSubscription,
)
from shared.models.cds import CdsFeedback
from shared.models.integrations import FhirQuestionnaireResponse, Integration, IntegrationSecret
from shared.models.outbox import OutboxMessage
from shared.models.tenants import DEFAULT_TENANT_ID, DEFAULT_TENANT_NAME, Tenant

__all__ = [
    "DEFAULT_TENANT_ID",
    "DEFAULT_TENANT_NAME",
    "DELIVERY_DEAD",
    "DELIVERY_DELIVERED",
    "DELIVERY_DELIVERING",
    "DELIVERY_DISABLED",
    "DELIVERY_PENDING",
    "DELIVERY_RETRYING",
    "DELIVERY_STATUSES",
    "FINAL_DELIVERY_STATUSES",
    "NAMING_CONVENTION",
    "ApiKey",
    "Assessment",
    "AuditEvent",
    "Base",
    "CallbackAttempt",
    "CallbackDelivery",
    "CallbackSubscription",
    "CdsFeedback",
    "FhirQuestionnaireResponse",
    "IdempotencyRecord",
    "Integration",
    "IntegrationSecret",
    "OutboxMessage",
    "Tenant",
    "TriageResult",
    "UtcDateTime",
    "new_id",
    "utcnow",
]

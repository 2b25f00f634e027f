"""Every database query the services make, in one place. Views and tasks never build SQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, and_, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from shared.celery_app import SCORE_TASK, SCORING_QUEUE
from shared.group_commit import Row
from shared.models import (
    Assessment,
    AuditEvent,
    CdsFeedback,
    IdempotencyRecord,
    OutboxMessage,
    Tenant,
    TriageResult,
    new_id,
    utcnow,
)
from shared.vocabulary import LEVEL_RANK, STATUS_FAILED, STATUS_QUEUED, STATUS_SCORED

# ---- Assessments ------------------------------------------------------------------------------

_ASSESSMENTS: Table = Assessment.__table__  # type: ignore[assignment]
_OUTBOX: Table = OutboxMessage.__table__  # type: ignore[assignment]
_IDEMPOTENCY: Table = IdempotencyRecord.__table__  # type: ignore[assignment]
_RESULTS: Table = TriageResult.__table__  # type: ignore[assignment]


def assessment_rows(
    report: dict[str, Any],
    *,
    tenant_id: str,
    source: str,
    submitted_by: str | None,
    patient_system: str = "",
    queue: str = SCORING_QUEUE,
) -> tuple[str, list[Row]]:
    """A validated report's rows: the `queued` assessment of `tenant_id` and its outbox message,
    to be inserted in one transaction (`GroupCommitter.insert`); returns the new assessment's id
    too. `patient_system` is the identifier system when the caller gave one (FHIR)."""
    now = utcnow()
    assessment_id = new_id()
    return assessment_id, [
        (
            _ASSESSMENTS,
            {
                "id": assessment_id,
                "tenant_id": tenant_id,
                "status": STATUS_QUEUED,
                "source": source,
                "patient_system": patient_system,
                "patient_ref": report["patient"]["id"],
                "report": report,
                "submitted_by": submitted_by,
                "created_at": now,
                "updated_at": now,
                "scored_at": None,
                "failure_reason": None,
            },
        ),
        (
            _OUTBOX,
            {
                "id": new_id(),
                "task_name": SCORE_TASK,
                "queue": queue,
                "assessment_id": assessment_id,
                "args": [assessment_id],
                "created_at": now,
                "published_at": None,
                "completed_at": None,
                "publish_count": 0,
                "last_error": None,
            },
        ),
    ]


def get_assessment(session: Session, tenant_id: str, assessment_id: str) -> Assessment | None:
    """The assessment if it belongs to `tenant_id`: another tenant's is as absent as a missing
    one (callers answer 404, never 403, so existence is not confirmed)."""
    assessment = session.get(Assessment, assessment_id)
    return assessment if assessment is not None and assessment.tenant_id == tenant_id else None


def get_assessment_for_work(session: Session, assessment_id: str) -> Assessment | None:
    """Any tenant's assessment, for the workers and admin commands that act on ids they were
    given by the system itself (a task, a re-score), never on a caller's request."""
    return session.get(Assessment, assessment_id)


def older_results(session: Session, assessment_id: str) -> list[TriageResult]:
    """An assessment's earlier (not current) results, oldest first."""
    return list(
        session.scalars(
            select(TriageResult)
            .where(TriageResult.assessment_id == assessment_id, TriageResult.current.is_(False))
            .order_by(TriageResult.created_at)
        )
    )


def result_count(session: Session, assessment_id: str) -> int:
    """How many results an assessment has had (more than one: it was re-scored, "amended")."""
    count = session.scalar(
        select(func.count())
        .select_from(TriageResult)
        .where(TriageResult.assessment_id == assessment_id)
    )
    return int(count or 0)


def scored_assessment(
    session: Session, tenant_id: str, assessment_id: str
) -> tuple[Assessment, TriageResult] | None:
    """`tenant_id`'s assessment with its current result, or None (missing, another tenant's, or
    not scored yet)."""
    row = session.execute(
        select(Assessment, TriageResult)
        .join(TriageResult, TriageResult.assessment_id == Assessment.id)
        .where(
            Assessment.id == assessment_id,
            Assessment.tenant_id == tenant_id,
            TriageResult.current.is_(True),
        )
    ).first()
    return (row[0], row[1]) if row is not None else None


def scored_for_patient(
    session: Session,
    tenant_id: str,
    patient_ref: str,
    *,
    limit: int,
    since: datetime | None = None,
) -> list[tuple[Assessment, TriageResult]]:
    """One patient's scored assessments in `tenant_id`, newest first, each with its current
    result; `since` keeps those received from then on."""
    query = (
        select(Assessment, TriageResult)
        .join(TriageResult, TriageResult.assessment_id == Assessment.id)
        .where(
            Assessment.tenant_id == tenant_id,
            Assessment.patient_ref == patient_ref,
            TriageResult.current.is_(True),
        )
        .order_by(Assessment.created_at.desc())
        .limit(limit)
    )
    if since is not None:
        query = query.where(Assessment.created_at >= since)
    return [(row[0], row[1]) for row in session.execute(query).all()]


def current_result(session: Session, assessment_id: str) -> TriageResult | None:
    return session.scalar(
        select(TriageResult).where(
            TriageResult.assessment_id == assessment_id, TriageResult.current.is_(True)
        )
    )


def result_for_version(
    session: Session, assessment_id: str, ruleset_version: str
) -> TriageResult | None:
    return session.scalar(
        select(TriageResult).where(
            TriageResult.assessment_id == assessment_id,
            TriageResult.ruleset_version == ruleset_version,
        )
    )


def scored_assessment_ids(session: Session) -> list[str]:
    """Every scored assessment's id, oldest first (ids are UUIDv7): the admin re-score's list."""
    return list(
        session.scalars(
            select(Assessment.id).where(Assessment.status == STATUS_SCORED).order_by(Assessment.id)
        )
    )


def assessments_with_current_result(
    session: Session, assessment_ids: Sequence[str]
) -> list[tuple[Assessment, TriageResult | None]]:
    """The assessments among `assessment_ids` that exist, each with its current result (or None),
    in id order. Keep `assessment_ids` to a few hundred: they go into one `IN (...)`."""
    query = (
        select(Assessment, TriageResult)
        .outerjoin(
            TriageResult,
            and_(TriageResult.assessment_id == Assessment.id, TriageResult.current.is_(True)),
        )
        .where(Assessment.id.in_(assessment_ids))
        .order_by(Assessment.id)
    )
    return [(row[0], row[1]) for row in session.execute(query).all()]


def assessment_ids_with_result_for_version(
    session: Session, assessment_ids: Sequence[str], ruleset_version: str
) -> set[str]:
    """Which of `assessment_ids` already have a result under `ruleset_version` (current or not):
    the ones a re-score under that version leaves as they are."""
    return set(
        session.scalars(
            select(TriageResult.assessment_id).where(
                TriageResult.assessment_id.in_(assessment_ids),
                TriageResult.ruleset_version == ruleset_version,
            )
        )
    )


def insert_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert `rows` (every row with the same keys) into `table` in the caller's transaction:
    one multi-row INSERT on PostgreSQL, an `executemany` of one compiled INSERT elsewhere."""
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(insert(table).values(list(rows)))
    else:
        session.execute(insert(table), list(rows))


_MARK_SCORED = (
    update(_ASSESSMENTS)
    .where(_ASSESSMENTS.c.id == bindparam("for_assessment"))
    .values(
        status=STATUS_SCORED,
        scored_at=bindparam("at"),
        updated_at=bindparam("at"),
        failure_reason=None,
    )
)
_MARK_FAILED = (
    update(_ASSESSMENTS)
    .where(
        _ASSESSMENTS.c.id == bindparam("for_assessment"),
        _ASSESSMENTS.c.status != STATUS_SCORED,
    )
    .values(status=STATUS_FAILED, failure_reason=bindparam("reason"), updated_at=bindparam("at"))
)


def store_first_results(session: Session, results: Sequence[dict[str, Any]]) -> None:
    """Insert first results (`triage_results` rows, each `current`) and mark their assessments
    scored, in bulk; the partial unique index refuses a second current result (IntegrityError)."""
    if not results:
        return
    insert_rows(session, _RESULTS, results)
    session.execute(
        _MARK_SCORED,
        [{"for_assessment": row["assessment_id"], "at": row["created_at"]} for row in results],
    )


def mark_scored_if_not(session: Session, assessment_ids: Sequence[str]) -> None:
    """Assessments that already have a current result but not the status say `scored`."""
    if assessment_ids:
        session.execute(
            update(_ASSESSMENTS)
            .where(_ASSESSMENTS.c.id.in_(list(assessment_ids)))
            .where(_ASSESSMENTS.c.status != STATUS_SCORED)
            .values(status=STATUS_SCORED, updated_at=utcnow())
        )


def mark_failed_many(session: Session, reasons: dict[str, str]) -> None:
    """Mark assessments (not already scored) failed, each with its reason (≤ 200 chars)."""
    if reasons:
        now = utcnow()
        session.execute(
            _MARK_FAILED,
            [
                {"for_assessment": assessment_id, "reason": reason[:200], "at": now}
                for assessment_id, reason in reasons.items()
            ],
        )


def urgency_of(level: str, priority: int) -> int:
    """Queue sort key: the level always dominates; priority orders within a level."""
    return LEVEL_RANK[level] * 1000 + priority


def triage_queue(
    session: Session, tenant_id: str, *, limit: int, offset: int = 0, level: str | None = None
) -> Sequence[tuple[Assessment, TriageResult]]:
    """`tenant_id`'s scored assessments with their current result, most urgent first, oldest
    first in a tie."""
    query = (
        select(Assessment, TriageResult)
        .join(TriageResult, TriageResult.assessment_id == Assessment.id)
        .where(TriageResult.current.is_(True), Assessment.tenant_id == tenant_id)
        .order_by(TriageResult.urgency.desc(), Assessment.created_at.asc())
        .limit(limit)
        .offset(offset)
    )
    if level is not None:
        query = query.where(TriageResult.triage_level == level)
    return [(row[0], row[1]) for row in session.execute(query).all()]


def history_for_patient(
    session: Session, assessment: Assessment, limit: int = 20
) -> list[Assessment]:
    """The assessments of `assessment`'s patient (same tenant, identifier system and identifier),
    newest first, itself included."""
    return list(
        session.scalars(
            select(Assessment)
            .where(
                Assessment.tenant_id == assessment.tenant_id,
                Assessment.patient_ref == assessment.patient_ref,
                Assessment.patient_system == assessment.patient_system,
            )
            .order_by(Assessment.created_at.desc())
            .limit(limit)
        )
    )


# ---- Idempotency ------------------------------------------------------------------------------


def find_idempotency_record(
    session: Session, api_key_id: str, key: str, not_before: datetime
) -> IdempotencyRecord | None:
    return session.scalar(
        select(IdempotencyRecord).where(
            IdempotencyRecord.api_key_id == api_key_id,
            IdempotencyRecord.key == key,
            IdempotencyRecord.created_at >= not_before,
        )
    )


def idempotency_row(
    *,
    caller_id: str,
    key: str,
    fingerprint: str,
    status_code: int,
    response_body: dict[str, Any],
    location: str | None,
) -> Row:
    """The remembered answer to a keyed request; a repeat of (caller, key) violates a unique key
    when it is inserted."""
    return (
        _IDEMPOTENCY,
        {
            "id": new_id(),
            "api_key_id": caller_id,
            "key": key,
            "request_fingerprint": fingerprint,
            "status_code": status_code,
            "response_body": response_body,
            "location": location,
            "created_at": utcnow(),
        },
    )


def delete_expired_idempotency_record(
    session: Session, api_key_id: str, key: str, not_before: datetime
) -> None:
    session.query(IdempotencyRecord).filter(
        IdempotencyRecord.api_key_id == api_key_id,
        IdempotencyRecord.key == key,
        IdempotencyRecord.created_at < not_before,
    ).delete(synchronize_session=False)


# ---- Outbox -----------------------------------------------------------------------------------


def unpublished_messages(session: Session, limit: int) -> list[OutboxMessage]:
    """The oldest unpublished outbox rows; locked against other relays on PostgreSQL."""
    query = (
        select(OutboxMessage)
        .where(OutboxMessage.published_at.is_(None))
        .order_by(OutboxMessage.created_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return list(session.scalars(query))


def stale_messages(session: Session, published_before: datetime, limit: int) -> list[OutboxMessage]:
    """Published messages whose work is still not done: the broker may have lost them."""
    query = (
        select(OutboxMessage)
        .where(
            OutboxMessage.completed_at.is_(None),
            OutboxMessage.published_at.is_not(None),
            OutboxMessage.published_at < published_before,
        )
        .order_by(OutboxMessage.published_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return list(session.scalars(query))


_COMPLETE_OUTBOX = (
    update(_OUTBOX)
    .where(
        _OUTBOX.c.assessment_id == bindparam("for_assessment"),
        _OUTBOX.c.task_name == bindparam("for_task"),
        _OUTBOX.c.completed_at.is_(None),
    )
    .values(completed_at=bindparam("done_at"))
)


def complete_outbox_messages(session: Session, assessment_id: str, task_name: str) -> None:
    """Mark the assessment's `task_name` messages done, so the relay never re-publishes them."""
    session.execute(
        _COMPLETE_OUTBOX,
        {"for_assessment": assessment_id, "for_task": task_name, "done_at": utcnow()},
    )


def complete_outbox_messages_of(
    session: Session, assessment_ids: Sequence[str], task_name: str
) -> None:
    """`complete_outbox_messages` for many assessments in one statement."""
    if assessment_ids:
        session.execute(
            update(_OUTBOX)
            .where(
                _OUTBOX.c.assessment_id.in_(list(assessment_ids)),
                _OUTBOX.c.task_name == task_name,
                _OUTBOX.c.completed_at.is_(None),
            )
            .values(completed_at=utcnow())
        )


def outbox_backlog(session: Session) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(OutboxMessage.published_at.is_(None))
        )
        or 0
    )


def purge_completed_outbox(session: Session, older_than: timedelta) -> int:
    cutoff = utcnow() - older_than
    result = (
        session.query(OutboxMessage)
        .filter(OutboxMessage.completed_at.is_not(None), OutboxMessage.completed_at < cutoff)
        .delete(synchronize_session=False)
    )
    return int(result)


# ---- Audit ------------------------------------------------------------------------------------


def record_audit(
    session: Session,
    *,
    tenant_id: str | None,
    actor: str,
    action: str,
    assessment_id: str | None = None,
    request_id: str | None = None,
    detail: str | None = None,
) -> None:
    """Write one audit event into `tenant_id`'s log (None: an action across tenants)."""
    session.add(
        AuditEvent(
            tenant_id=tenant_id,
            actor=actor,
            action=action,
            assessment_id=assessment_id,
            request_id=request_id,
            detail=detail,
        )
    )


def audit_events(session: Session, tenant_id: str, *, limit: int = 100) -> list[AuditEvent]:
    """`tenant_id`'s audit log, newest first."""
    return list(
        session.scalars(
            select(AuditEvent)
            .where(AuditEvent.tenant_id == tenant_id)
            .order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
            .limit(limit)
        )
    )


# ---- Tenants ----------------------------------------------------------------------------------


def create_tenant(session: Session, name: str) -> Tenant:
    """A new tenant; ValueError when the name is taken or empty."""
    name = name.strip()
    if not name or len(name) > 100:
        raise ValueError("a tenant name is 1 to 100 characters")
    if session.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
        raise ValueError(f"a tenant named {name!r} exists already")
    tenant = Tenant(name=name)
    session.add(tenant)
    session.flush()
    return tenant


def find_tenant(session: Session, name_or_id: str) -> Tenant | None:
    """A tenant by its name or id."""
    return session.scalar(
        select(Tenant).where((Tenant.name == name_or_id) | (Tenant.id == name_or_id))
    )


def ensure_tenant(session: Session, name: str) -> Tenant:
    """The tenant called `name`, created if missing (the local run's own tenant)."""
    return find_tenant(session, name) or create_tenant(session, name)


def tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.name)))


# ---- CDS Hooks --------------------------------------------------------------------------------


def cds_feedback_stored(
    session: Session, service_id: str, card_uuid: str, outcome: str, at: datetime
) -> bool:
    """Whether this exact feedback (service, card, outcome, time) is stored already."""
    found = session.scalar(
        select(CdsFeedback.id).where(
            CdsFeedback.service_id == service_id,
            CdsFeedback.card_uuid == card_uuid,
            CdsFeedback.outcome == outcome,
            CdsFeedback.outcome_timestamp == at,
        )
    )
    return found is not None

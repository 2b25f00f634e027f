"""Result callbacks as data: subscriptions, the deliveries a result makes, and what the
subscriptions API reads. Scoring (services/rules) writes deliveries in its own transaction;
the reporting service manages subscriptions; the delivery worker (services/callbacks) sends
them. How a result reaches an EHR: docs/INTEGRATION-OUTBOUND.md and services/callbacks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, defer

from shared.celery_app import CALLBACKS_QUEUE
from shared.config import Settings
from shared.models import (
    DELIVERY_DISABLED,
    DELIVERY_PENDING,
    DELIVERY_RETRYING,
    FINAL_DELIVERY_STATUSES,
    Assessment,
    CallbackAttempt,
    CallbackDelivery,
    CallbackSubscription,
    OutboxMessage,
    TriageResult,
    new_id,
    utcnow,
)
from shared.repository import insert_rows

CALLBACK_TASK = "callbacks.deliver"
EVENT_SCORED = "assessment.scored"
EVENT_EMERGENCY = "assessment.emergency"
EVENT_TYPES = (EVENT_SCORED, EVENT_EMERGENCY)
EMERGENCY_LEVELS = frozenset({"emergency_ambulance", "emergency"})

_settings: list[Settings] = []


# ---- Payloads ---------------------------------------------------------------------------------


def callback_payload(
    event_type: str,
    assessment: Assessment,
    result: TriageResult,
    settings: Settings,
    *,
    include_fhir: bool = False,
    amended: bool = False,
) -> dict[str, Any]:
    """The thin event body: ids, level, codes and links. No free text, no patient data but ids."""
    intake, reporting = settings.intake_base_url, settings.reporting_base_url
    data: dict[str, Any] = {
        "assessment_id": assessment.id,
        "result_id": result.id,
        "triage": result.triage_level,
        "priority": result.priority,
        "ruleset_version": result.ruleset_version,
        "red_flags": [flag["id"] for flag in result.result.get("red_flags", [])],
        "links": {
            "assessment": f"{intake}/v1/assessments/{assessment.id}",
            "report": f"{reporting}/v1/reports/assessments/{assessment.id}",
            "risk_assessment": f"{reporting}/fhir/RiskAssessment/{assessment.id}",
            "detected_issues": f"{reporting}/fhir/DetectedIssue?assessment={assessment.id}",
        },
    }
    if include_fhir:
        # Imported here: the FHIR models are heavy and most subscribers do not ask for them.
        from shared.fhir_results import ScoredAssessment, result_bundle

        data["fhir"] = result_bundle(
            ScoredAssessment.from_rows(assessment, result, amended=amended), reporting
        )
    return {"type": event_type, "timestamp": _iso(result.created_at), "data": data}


def payload_body(payload: dict[str, Any]) -> str:
    """The exact text sent and signed (compact JSON)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


# ---- Writing deliveries -----------------------------------------------------------------------


def events_for(level: str) -> list[str]:
    """The event types a result at `level` raises."""
    return [EVENT_SCORED, EVENT_EMERGENCY] if level in EMERGENCY_LEVELS else [EVENT_SCORED]


def enqueue_result_callbacks(
    session: Session,
    assessment: Assessment,
    result: TriageResult,
    settings: Settings | None = None,
) -> int:
    """In the caller's transaction, queue one delivery per matching subscription and event.

    Returns how many deliveries were queued. Costs one query when nobody subscribes.
    """
    subscriptions = list(
        session.scalars(
            # Only the assessment's own organisation hears about it.
            select(CallbackSubscription)
            .where(
                CallbackSubscription.tenant_id == assessment.tenant_id,
                CallbackSubscription.disabled_at.is_(None),
            )
            # Not the (encrypted) signing secret: scoring never signs, nor needs the keys.
            .options(defer(CallbackSubscription.secret, raiseload=True))
        )
    )
    if not subscriptions:
        return 0
    settings = settings or _default_settings()
    session.flush()  # the result's id and created_at go into the payload
    events = events_for(result.triage_level)
    amended: bool | None = None
    queued = 0
    for subscription in subscriptions:
        for event_type in events:
            if event_type not in subscription.event_types:
                continue
            if subscription.include_fhir and amended is None:
                amended = _has_earlier_result(session, assessment.id, result.id)
            delivery = CallbackDelivery(
                id=new_id(),
                subscription_id=subscription.id,
                assessment_id=assessment.id,
                result_id=result.id,
                event_type=event_type,
                payload=callback_payload(
                    event_type,
                    assessment,
                    result,
                    settings,
                    include_fhir=subscription.include_fhir,
                    amended=bool(amended),
                ),
                attempts=0,
            )
            session.add(delivery)
            queue_delivery(session, delivery, utcnow())
            queued += 1
    return queued


def enqueue_group_callbacks(
    session: Session,
    scored: Sequence[tuple[Assessment, TriageResult]],
    settings: Settings | None = None,
) -> int:
    """`enqueue_result_callbacks` for a group of new results, in bulk: one query for the
    subscriptions of every tenant in the group, then one insert of the deliveries and one of
    their outbox rows. Each result reaches only its own assessment's tenant's subscriptions.

    The results are plain (transient) rows the caller inserted with Core, `id` and
    `created_at` set. Returns how many deliveries were queued.
    """
    if not scored:
        return 0
    tenants = {assessment.tenant_id for assessment, _ in scored}
    by_tenant: dict[str, list[CallbackSubscription]] = {}
    for subscription in session.scalars(
        select(CallbackSubscription)
        .where(
            CallbackSubscription.tenant_id.in_(sorted(tenants)),
            CallbackSubscription.disabled_at.is_(None),
        )
        .options(defer(CallbackSubscription.secret, raiseload=True))
    ):
        by_tenant.setdefault(subscription.tenant_id, []).append(subscription)
    if not by_tenant:
        return 0
    settings = settings or _default_settings()
    amended_ids = _assessments_with_earlier_results(
        session, [(a.id, r.id) for a, r in scored if a.tenant_id in by_tenant]
    )
    now = utcnow()
    deliveries: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for assessment, result in scored:
        for subscription in by_tenant.get(assessment.tenant_id, ()):
            for event_type in events_for(result.triage_level):
                if event_type not in subscription.event_types:
                    continue
                delivery_id = new_id()
                deliveries.append(
                    {
                        "id": delivery_id,
                        "subscription_id": subscription.id,
                        "assessment_id": assessment.id,
                        "result_id": result.id,
                        "event_type": event_type,
                        "payload": callback_payload(
                            event_type,
                            assessment,
                            result,
                            settings,
                            include_fhir=subscription.include_fhir,
                            amended=assessment.id in amended_ids,
                        ),
                        "status": DELIVERY_PENDING,
                        "attempts": 0,
                        "next_attempt_at": now,
                        "last_status_code": None,
                        "last_error": None,
                        "created_at": now,
                        "updated_at": now,
                        "delivered_at": None,
                    }
                )
                messages.append(
                    {
                        "id": new_id(),
                        "task_name": CALLBACK_TASK,
                        "queue": CALLBACKS_QUEUE,
                        "assessment_id": assessment.id,
                        "args": [delivery_id],
                        "created_at": now,
                        "published_at": None,
                        "completed_at": None,
                        "publish_count": 0,
                        "last_error": None,
                    }
                )
    insert_rows(session, CallbackDelivery.__table__, deliveries)  # type: ignore[arg-type]
    insert_rows(session, OutboxMessage.__table__, messages)  # type: ignore[arg-type]
    return len(deliveries)


def queue_delivery(session: Session, delivery: CallbackDelivery, now: datetime) -> None:
    """Make `delivery` pending with an outbox row, so the relay sends a worker to it."""
    delivery.status = DELIVERY_PENDING
    delivery.next_attempt_at = now
    session.add(
        OutboxMessage(
            task_name=CALLBACK_TASK,
            queue=CALLBACKS_QUEUE,
            assessment_id=delivery.assessment_id,
            args=[delivery.id],
        )
    )


def queue_due_deliveries(session: Session, now: datetime, limit: int) -> int:
    """Queue `failed_retrying` deliveries whose time has come (the relay calls this each second)."""
    query = (
        select(CallbackDelivery)
        .where(
            CallbackDelivery.status == DELIVERY_RETRYING,
            CallbackDelivery.next_attempt_at <= now,
        )
        .order_by(CallbackDelivery.next_attempt_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    due = list(session.scalars(query))
    for delivery in due:
        queue_delivery(session, delivery, now)
    return len(due)


def replay_delivery(session: Session, delivery: CallbackDelivery) -> None:
    """Send a dead-lettered delivery again, now, with a fresh attempt budget."""
    delivery.attempts = 0
    delivery.last_error = None
    queue_delivery(session, delivery, utcnow())


def disable_subscription(session: Session, subscription: CallbackSubscription, reason: str) -> int:
    """Stop a subscription; its deliveries not yet sent become `disabled`. Returns how many."""
    if subscription.disabled_at is None:
        subscription.disabled_at = utcnow()
        subscription.disabled_reason = reason[:200]
    result = session.execute(
        update(CallbackDelivery)
        .where(
            CallbackDelivery.subscription_id == subscription.id,
            CallbackDelivery.status.in_((DELIVERY_PENDING, DELIVERY_RETRYING)),
        )
        .values(status=DELIVERY_DISABLED, next_attempt_at=None)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# ---- Reads for the subscriptions API ----------------------------------------------------------


def deliveries_of(
    session: Session,
    subscription_id: str,
    *,
    status: str | None,
    limit: int,
    offset: int,
) -> list[tuple[CallbackDelivery, list[CallbackAttempt]]]:
    """A subscription's deliveries, newest first, each with its attempts in order."""
    query = (
        select(CallbackDelivery)
        .where(CallbackDelivery.subscription_id == subscription_id)
        .order_by(CallbackDelivery.created_at.desc(), CallbackDelivery.id)
        .limit(limit)
        .offset(offset)
    )
    if status is not None:
        query = query.where(CallbackDelivery.status == status)
    deliveries = list(session.scalars(query))
    attempts: dict[str, list[CallbackAttempt]] = {d.id: [] for d in deliveries}
    if deliveries:
        for attempt in session.scalars(
            select(CallbackAttempt)
            .where(CallbackAttempt.delivery_id.in_(list(attempts)))
            .order_by(CallbackAttempt.attempt, CallbackAttempt.started_at)
        ):
            attempts[attempt.delivery_id].append(attempt)
    return [(d, attempts[d.id]) for d in deliveries]


def reserve_subscription_slot(session: Session, tenant_id: str, limit: int) -> bool:
    """Whether `tenant_id` may add one more active subscription (it has fewer than `limit`).

    Call it in the transaction that adds the subscription: on PostgreSQL it holds a lock per
    tenant until commit, so two concurrent creates cannot both take the last slot. Disabled
    subscriptions do not count (there is no delete: disabling frees the slot).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            select(
                func.pg_advisory_xact_lock(
                    func.hashtext("myotriage.subscription_slots"), func.hashtext(tenant_id)
                )
            )
        )
    active = session.scalar(
        select(func.count())
        .select_from(CallbackSubscription)
        .where(
            CallbackSubscription.tenant_id == tenant_id,
            CallbackSubscription.disabled_at.is_(None),
        )
    )
    return int(active or 0) < limit


def subscriptions_of(
    session: Session, tenant_id: str, owner_key_id: str | None
) -> Sequence[CallbackSubscription]:
    """`tenant_id`'s subscriptions owned by `owner_key_id` (all of the tenant's when None),
    newest first."""
    query = (
        select(CallbackSubscription)
        .where(CallbackSubscription.tenant_id == tenant_id)
        .order_by(CallbackSubscription.created_at.desc())
    )
    if owner_key_id is not None:
        query = query.where(CallbackSubscription.owner_key_id == owner_key_id)
    return list(session.scalars(query))


def get_subscription(
    session: Session, tenant_id: str, subscription_id: str
) -> CallbackSubscription | None:
    """`tenant_id`'s subscription, or None (another tenant's is not found)."""
    subscription = session.get(CallbackSubscription, subscription_id)
    if subscription is None or subscription.tenant_id != tenant_id:
        return None
    return subscription


def delivery_of(
    session: Session, subscription_id: str, delivery_id: str
) -> CallbackDelivery | None:
    """One delivery of a subscription, or None."""
    delivery = session.get(CallbackDelivery, delivery_id)
    return (
        delivery if delivery is not None and delivery.subscription_id == subscription_id else None
    )


def is_final(status: str) -> bool:
    return status in FINAL_DELIVERY_STATUSES


# ---- Internals --------------------------------------------------------------------------------


def _default_settings() -> Settings:
    if not _settings:
        _settings.append(Settings.from_env())
    return _settings[0]


def _assessments_with_earlier_results(
    session: Session, new_results: list[tuple[str, str]]
) -> set[str]:
    """Which assessments among (assessment id, new result id) pairs had a result before."""
    if not new_results:
        return set()
    return set(
        session.scalars(
            select(TriageResult.assessment_id).where(
                TriageResult.assessment_id.in_([a for a, _ in new_results]),
                TriageResult.id.not_in([r for _, r in new_results]),
            )
        )
    )


def _has_earlier_result(session: Session, assessment_id: str, result_id: str) -> bool:
    return (
        session.scalar(
            select(TriageResult.id)
            .where(TriageResult.assessment_id == assessment_id, TriageResult.id != result_id)
            .limit(1)
        )
        is not None
    )


def _iso(moment: datetime) -> str:
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")

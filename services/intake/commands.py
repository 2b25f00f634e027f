"""Accepting a symptom report: validate everything, then store it and its outbox row at once.

This is the one path every way in (API, webhook, form, batch row) goes through.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from marshmallow import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared import repository
from shared.db import transaction
from shared.group_commit import GroupCommitter, Row
from shared.models import utcnow
from shared.problems import Problem, validation_problem
from shared.schemas.report_json_schema import fast_load
from shared.schemas.symptom_report import SymptomReportSchema
from shared.vocabulary import STATUS_QUEUED

log = structlog.get_logger("myotriage.intake")
_schema = SymptomReportSchema()


@dataclass(frozen=True)
class Accepted:
    """What the caller is told: status code, body and Location (fresh or replayed)."""

    status_code: int
    body: dict[str, Any]
    location: str | None
    replayed: bool = False


def fingerprint(body: Any) -> str:
    """A stable hash of a JSON body, independent of key order and white space."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def validate_report(body: Any) -> dict[str, Any]:
    """The report with the contract's defaults filled in, or a 422 Problem naming every field.

    Valid reports are recognised by the compiled JSON Schema; marshmallow (the reference) reads
    the rest and names every bad field."""
    if not isinstance(body, dict):
        raise Problem(
            422,
            "Invalid symptom report",
            "The body must be a JSON object.",
            problem_type="validation-error",
            errors=[],
        )
    report = fast_load(body)
    if report is not None:
        return report
    try:
        return _schema.load(body)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise validation_problem(exc.messages) from None


def accept_assessment(
    writer: GroupCommitter,
    sessions: sessionmaker[Session],
    body: Any,
    *,
    tenant_id: str,
    source: str,
    caller_id: str,
    links: Any,
    patient_system: str = "",
    idempotency_key: str | None = None,
    idempotency_ttl: timedelta = timedelta(hours=24),
    request_fingerprint: str | None = None,
    extra_rows: Callable[[str], list[Row]] | None = None,
) -> Accepted:
    """Validate `body` and store it as a queued assessment of `tenant_id` with its outbox row,
    atomically. `patient_system` is the patient identifier's system when the caller gave one.

    `links(assessment_id) -> (location, links dict)` builds the URLs. With an idempotency key,
    a repeat of the same body returns the first answer; a different body is a 422.
    `request_fingerprint` overrides what "the same body" means (a FHIR caller's original
    resource rather than the report mapped from it); `extra_rows(assessment_id)` gives rows
    that belong with the assessment (the FHIR original), inserted in the same transaction.
    The rows are committed by `writer`, together with concurrent requests' rows.
    """
    report = validate_report(body)
    request_hash = (request_fingerprint or fingerprint(body)) if idempotency_key else ""
    # Optimistic: store first and let the unique (caller, key) constraint detect a repeat, so a
    # first request with a key costs one transaction, not a lookup as well.
    for first_try in (True, False):
        assessment_id, rows = repository.assessment_rows(
            report,
            tenant_id=tenant_id,
            source=source,
            submitted_by=caller_id,
            patient_system=patient_system,
        )
        if extra_rows is not None:
            rows.extend(extra_rows(assessment_id))
        location, link_map = links(assessment_id)
        response = {"id": assessment_id, "status": STATUS_QUEUED, "links": link_map}
        if idempotency_key:
            rows.append(
                repository.idempotency_row(
                    caller_id=caller_id,
                    key=idempotency_key,
                    fingerprint=request_hash,
                    status_code=202,
                    response_body=response,
                    location=location,
                )
            )
        try:
            writer.insert(rows)
        except IntegrityError:
            if not idempotency_key:
                raise
            # The key was used before (or a concurrent request with it committed first).
            not_before = utcnow() - idempotency_ttl
            replay = _replay(sessions, caller_id, idempotency_key, request_hash, not_before)
            if replay is not None:
                return replay
            if first_try:  # the earlier use has expired: forget it and store afresh
                with transaction(sessions) as session:
                    repository.delete_expired_idempotency_record(
                        session, caller_id, idempotency_key, not_before
                    )
                continue
            raise Problem(
                409, "Conflict", "A request with this Idempotency-Key is in progress."
            ) from None
        log.info("assessment.accepted", assessment_id=assessment_id, source=source)
        return Accepted(202, response, location)
    raise AssertionError("unreachable")


def _replay(
    sessions: sessionmaker[Session],
    caller_id: str,
    key: str,
    request_hash: str,
    not_before: Any,
) -> Accepted | None:
    with sessions() as session:
        record = repository.find_idempotency_record(session, caller_id, key, not_before)
        if record is None:
            return None
        if record.request_fingerprint != request_hash:
            raise Problem(
                422,
                "Idempotency-Key reused",
                "This Idempotency-Key was already used with a different request body.",
                problem_type="idempotency-key-reused",
            )
        return Accepted(record.status_code, record.response_body, record.location, replayed=True)

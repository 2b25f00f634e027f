"""Scoring an assessment and storing the result: the worker's work, outside Celery.

Idempotent: a second run for the same assessment and rule-set version changes nothing, so a
task delivered twice (worker killed after commit, relay re-publishing) is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.rules.engine import RuleSet
from shared import repository
from shared.callbacks import enqueue_result_callbacks
from shared.celery_app import SCORE_TASK
from shared.db import transaction
from shared.models import Assessment, TriageResult, new_id, utcnow
from shared.vocabulary import STATUS_FAILED, STATUS_SCORED

log = structlog.get_logger("myotriage.rules")


@dataclass(frozen=True)
class ScoreOutcome:
    """What happened, in ids and codes only (it is logged)."""

    assessment_id: str
    outcome: str  # scored | already_scored | missing
    triage_level: str | None = None
    ruleset_version: str | None = None


def score_assessment(
    sessions: sessionmaker[Session], ruleset: RuleSet, assessment_id: str, *, rescore: bool = False
) -> ScoreOutcome:
    """Score `assessment_id` under `ruleset` and store the result as its current one.

    Without `rescore`, an assessment that already has a current result is left as it is (even
    one scored under an older rule set: re-scoring is an explicit admin action). With `rescore`,
    a result under this version is added and becomes current; older results are kept.

    One session, two short transactions: a read, then (after the engine, which does no I/O) a
    write whose first statements are writes. On SQLite a transaction that reads and then
    writes fails at once if another process wrote in between; one that starts by writing waits
    for the lock instead.
    """
    with sessions() as session:
        with session.begin():
            assessment = repository.get_assessment_for_work(session, assessment_id)
            if assessment is None:
                log.warning("score.assessment_missing", assessment_id=assessment_id)
                return ScoreOutcome(assessment_id, "missing")
            current = repository.current_result(session, assessment_id)
            done = (
                repository.result_for_version(session, assessment_id, ruleset.version)
                if rescore
                else current
            )
        if done is not None:
            _mark_done(sessions, assessment_id)
            return ScoreOutcome(
                assessment_id, "already_scored", done.triage_level, done.ruleset_version
            )

        result = score_stored_report(ruleset, assessment)
        now = utcnow()
        priority = int(result["priority"])
        triage_result = TriageResult(
            id=new_id(),
            assessment_id=assessment_id,
            ruleset_version=result["ruleset_version"],
            triage_level=result["triage"],
            priority=priority,
            urgency=repository.urgency_of(result["triage"], priority),
            current=True,
            result=result,
            created_at=now,
        )
        try:
            with session.begin():
                if current is not None:
                    current.current = False
                session.add(triage_result)
                assessment.status = STATUS_SCORED
                assessment.scored_at = now
                assessment.failure_reason = None
                session.flush()  # the writes go first (see the docstring)
                repository.complete_outbox_messages(session, assessment_id, SCORE_TASK)
                # Same transaction: a stored result always has its EHR callbacks queued.
                enqueue_result_callbacks(session, assessment, triage_result)
        except IntegrityError:
            # Another delivery of the same task stored it first; that result stands.
            log.info("score.duplicate_delivery", assessment_id=assessment_id)
            return ScoreOutcome(assessment_id, "already_scored", result["triage"], ruleset.version)
    log.info(
        "score.stored",
        assessment_id=assessment_id,
        triage_level=result["triage"],
        priority=priority,
        ruleset_version=ruleset.version,
        red_flags=[flag["id"] for flag in result["red_flags"]],
    )
    return ScoreOutcome(assessment_id, "scored", result["triage"], ruleset.version)


def score_stored_report(ruleset: RuleSet, assessment: Assessment) -> dict[str, Any]:
    """The engine's result for a stored assessment's report, as scoring stores it; a re-score
    preview calls this too, so it compares exactly what a re-score would store."""
    return ruleset.score(dict(assessment.report))


def _mark_done(sessions: sessionmaker[Session], assessment_id: str) -> None:
    with transaction(sessions) as session:
        repository.complete_outbox_messages(session, assessment_id, SCORE_TASK)
        assessment = repository.get_assessment_for_work(session, assessment_id)
        if assessment is not None and assessment.status != STATUS_SCORED:
            assessment.status = STATUS_SCORED


def mark_failed(sessions: sessionmaker[Session], assessment_id: str, reason: str) -> None:
    """Record that scoring failed for good; the report is kept for a person to look at."""
    with transaction(sessions) as session:
        repository.complete_outbox_messages(session, assessment_id, SCORE_TASK)
        assessment = repository.get_assessment_for_work(session, assessment_id)
        if assessment is not None and assessment.status != STATUS_SCORED:
            assessment.status = STATUS_FAILED
            assessment.failure_reason = reason[:200]

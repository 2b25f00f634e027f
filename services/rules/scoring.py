"""Scoring an assessment and storing the result: the worker's work, outside Celery.

Idempotent: a second run for the same assessment and rule-set version changes nothing, so a
task delivered twice (worker killed after commit, relay re-publishing) is harmless.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.rules.engine import RuleSet
from shared import repository
from shared.callbacks import enqueue_group_callbacks, enqueue_result_callbacks
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

        now = utcnow()
        result = score_stored_report(ruleset, assessment)
        triage_result = new_result(assessment_id, result, now)
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
        priority=triage_result.priority,
        ruleset_version=ruleset.version,
        red_flags=[flag["id"] for flag in result["red_flags"]],
    )
    return ScoreOutcome(assessment_id, "scored", result["triage"], ruleset.version)


@dataclass(frozen=True)
class EngineFailure:
    """A report the engine raised on: its id, the error's class and where it was raised (code,
    never data)."""

    assessment_id: str
    error_class: str
    raised_at: str


@dataclass
class GroupOutcome:
    """What scoring a group did, in ids and codes only."""

    scored: list[tuple[str, str]] = field(default_factory=list)  # (assessment id, level)
    already_scored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failed: list[EngineFailure] = field(default_factory=list)
    fell_back: bool = False  # a concurrent delivery stored some first: scored one by one


def score_group(
    sessions: sessionmaker[Session], ruleset: RuleSet, assessment_ids: Sequence[str]
) -> GroupOutcome:
    """Score every assessment of `assessment_ids` that has no current result yet, and store
    the results, in one read and one write transaction.

    The read loads the assessments with their current results in one query. The engine scores
    each report without one; a report it raises on is marked failed with the error's class, alone.
    The write inserts the results in bulk (marking them scored), completes the group's outbox
    rows and queues their callbacks, all in one transaction: a worker killed before the commit
    leaves the whole group to be delivered again, one killed after it leaves nothing to redo.
    When a concurrent delivery stored one of the results first (the partial unique index says
    so with an IntegrityError), the group is scored again one report at a time with
    `score_assessment`, so exactly one current result stands for each.
    """
    ids = list(dict.fromkeys(assessment_ids))
    outcome = GroupOutcome()
    with sessions() as session:
        with session.begin():
            rows = repository.assessments_with_current_result(session, ids)
        found = {assessment.id for assessment, _ in rows}
        outcome.missing = [assessment_id for assessment_id in ids if assessment_id not in found]
        for assessment_id in outcome.missing:
            log.warning("score.assessment_missing", assessment_id=assessment_id)

        now = utcnow()
        new_results: list[tuple[Assessment, TriageResult]] = []
        for assessment, current in rows:
            if current is not None:
                outcome.already_scored.append(assessment.id)
                continue
            try:
                result = score_stored_report(ruleset, assessment)
            except Exception as exc:
                # A bug in the engine on this report: it fails alone, the group goes on.
                outcome.failed.append(
                    EngineFailure(assessment.id, type(exc).__name__, where_raised(exc))
                )
                continue
            new_results.append((assessment, new_result(assessment.id, result, now)))
        session.expunge_all()  # the rows are plain data from here on: writes go through Core
        try:
            with session.begin():
                # Writes first (see `score_assessment` on SQLite's locks).
                repository.store_first_results(session, [_result_row(r) for _, r in new_results])
                repository.mark_scored_if_not(session, outcome.already_scored)
                repository.mark_failed_many(
                    session,
                    {f.assessment_id: f"engine error: {f.error_class}" for f in outcome.failed},
                )
                repository.complete_outbox_messages_of(session, list(found), SCORE_TASK)
                # Same transaction: a stored result always has its EHR callbacks queued.
                enqueue_group_callbacks(session, new_results)
        except IntegrityError:
            log.info("score.group_duplicate_delivery", size=len(ids))
            return _score_one_by_one(sessions, ruleset, [a.id for a, _ in new_results], outcome)
    outcome.scored = [(a.id, r.triage_level) for a, r in new_results]
    return outcome


def _score_one_by_one(
    sessions: sessionmaker[Session],
    ruleset: RuleSet,
    assessment_ids: list[str],
    outcome: GroupOutcome,
) -> GroupOutcome:
    """The group's fall-back after a duplicate: each report in its own transactions; the
    failed ones (already known) are marked failed."""
    outcome.fell_back = True
    for assessment_id in outcome.already_scored:  # the write that did this was rolled back
        _mark_done(sessions, assessment_id)
    for failure in outcome.failed:
        mark_failed(sessions, failure.assessment_id, f"engine error: {failure.error_class}")
    for assessment_id in assessment_ids:
        one = score_assessment(sessions, ruleset, assessment_id)
        if one.outcome == "scored" and one.triage_level is not None:
            outcome.scored.append((assessment_id, one.triage_level))
        else:
            outcome.already_scored.append(assessment_id)
    return outcome


def _result_row(result: TriageResult) -> dict[str, Any]:
    return {
        "id": result.id,
        "assessment_id": result.assessment_id,
        "ruleset_version": result.ruleset_version,
        "triage_level": result.triage_level,
        "priority": result.priority,
        "urgency": result.urgency,
        "current": True,
        "result": result.result,
        "created_at": result.created_at,
    }


def where_raised(exc: BaseException) -> str:
    """Where `exc` was raised, as `file.py:line (function)`: code, never data."""
    frames = traceback.StackSummary.extract(
        traceback.walk_tb(exc.__traceback__), lookup_lines=False
    )
    if not frames:
        return "unknown"
    frame = frames[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} ({frame.name})"


def new_result(assessment_id: str, result: dict[str, Any], at: datetime) -> TriageResult:
    """The current-result row for the engine's `result` of an assessment."""
    priority = int(result["priority"])
    return TriageResult(
        id=new_id(),
        assessment_id=assessment_id,
        ruleset_version=result["ruleset_version"],
        triage_level=result["triage"],
        priority=priority,
        urgency=repository.urgency_of(result["triage"], priority),
        current=True,
        result=result,
        created_at=at,
    )


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

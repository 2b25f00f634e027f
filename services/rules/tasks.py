"""Celery tasks of the rules worker: thin shells around plain functions.

Every task is declared with `house_task`, which names it, routes it, binds `task_id` to the log
context and counts it in metrics. Tasks take ids only, never patient data, and what they raise
to Celery (its logs, its result) names ids and error classes only: see `ScoringFailed`.
"""

from __future__ import annotations

import structlog
from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded
from prometheus_client import Counter
from sqlalchemy.exc import OperationalError

from services.rules import runtime
from services.rules.scoring import mark_failed, score_assessment, score_group, where_raised
from shared.celery_app import SCORE_GROUP_TASK, SCORE_TASK, house_task

log = structlog.get_logger("myotriage.rules")

TRIAGED = Counter("myotriage_triaged_total", "Assessments scored, by level", ["level"])


class ScoringFailed(Exception):
    """What Celery gets of an unexpected error while scoring: the assessment id and the error's
    class, never its message, which may quote the report (a KeyError names a finding code, a
    ValueError a value), and never the error itself chained on."""

    def __init__(self, assessment_id: str, error_class: str) -> None:
        # Both as args: the prefork pool pickles it back to the parent process.
        super().__init__(assessment_id, error_class)
        self.assessment_id = assessment_id
        self.error_class = error_class

    def __str__(self) -> str:
        return f"scoring assessment {self.assessment_id} failed: {self.error_class}"


def register_tasks(app: Celery) -> None:
    """Declare this worker's tasks on `app`."""

    @house_task(
        app,
        SCORE_TASK,
        autoretry_for=(OperationalError, SoftTimeLimitExceeded),
        retry_backoff=2,
        retry_backoff_max=120,
        retry_jitter=True,
        max_retries=None,
    )
    def score(self: Task, assessment_id: str) -> None:
        """Score one assessment by id (idempotent)."""
        sessions = runtime.sessions()
        ruleset = runtime.ruleset()
        failure: tuple[str, str] | None = None
        try:
            outcome = score_assessment(sessions, ruleset, assessment_id)
        except (OperationalError, SoftTimeLimitExceeded):
            raise  # retried (SQL parameters are hidden from their messages: shared/db.py)
        except Exception as exc:
            failure = (type(exc).__name__, where_raised(exc))
        if failure is not None:
            # A bug in the engine on this report: keep the report, show it as failed, tell ops.
            # Out here, not in the handler, so nothing raised from now on has the original
            # error chained on as its context.
            error_class, raised_at = failure
            log.error(
                "score.engine_error",
                assessment_id=assessment_id,
                error_class=error_class,
                raised_at=raised_at,
            )
            mark_failed(sessions, assessment_id, f"engine error: {error_class}")
            raise ScoringFailed(assessment_id, error_class)
        if outcome.triage_level and outcome.outcome == "scored":
            TRIAGED.labels(outcome.triage_level).inc()
            runtime.publish_event(
                "assessment.scored",
                {"assessment_id": assessment_id, "triage": outcome.triage_level},
            )

    @house_task(
        app,
        SCORE_GROUP_TASK,
        autoretry_for=(OperationalError, SoftTimeLimitExceeded),
        retry_backoff=2,
        retry_backoff_max=120,
        retry_jitter=True,
        max_retries=None,
    )
    def score_many(self: Task, assessment_ids: list[str]) -> None:
        """Score a group of assessments by id (idempotent; see `scoring.score_group`).

        A report the engine raises on is marked failed and logged, alone: the task itself
        succeeds, so Celery does not deliver the others again.
        """
        outcome = score_group(runtime.sessions(), runtime.ruleset(), assessment_ids)
        for failure in outcome.failed:
            log.error(
                "score.engine_error",
                assessment_id=failure.assessment_id,
                error_class=failure.error_class,
                raised_at=failure.raised_at,
            )
        for _, level in outcome.scored:
            TRIAGED.labels(level).inc()
        log.info(
            "score.group_done",
            size=len(assessment_ids),
            scored=len(outcome.scored),
            already_scored=len(outcome.already_scored),
            failed=len(outcome.failed),
            missing=len(outcome.missing),
            fell_back=outcome.fell_back,
        )
        runtime.publish_events(
            [
                ("assessment.scored", {"assessment_id": assessment_id, "triage": level})
                for assessment_id, level in outcome.scored
            ]
        )

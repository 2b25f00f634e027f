"""Celery tasks of the rules worker: thin shells around plain functions.

Every task is declared with `house_task`, which names it, routes it, binds `task_id` to the log
context and counts it in metrics. Tasks take ids only, never patient data.
"""

from __future__ import annotations

import structlog
from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded
from prometheus_client import Counter
from sqlalchemy.exc import OperationalError

from services.rules import runtime
from services.rules.scoring import mark_failed, score_assessment
from shared.celery_app import SCORE_TASK, house_task

log = structlog.get_logger("myotriage.rules")

TRIAGED = Counter("myotriage_triaged_total", "Assessments scored, by level", ["level"])


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
        try:
            outcome = score_assessment(sessions, ruleset, assessment_id)
        except (OperationalError, SoftTimeLimitExceeded):
            raise
        except Exception as exc:
            # A bug in the engine on this report: keep the report, show it as failed, tell ops.
            log.error(
                "score.engine_error", assessment_id=assessment_id, error_class=type(exc).__name__
            )
            mark_failed(sessions, assessment_id, f"engine error: {type(exc).__name__}")
            raise
        if outcome.triage_level and outcome.outcome == "scored":
            TRIAGED.labels(outcome.triage_level).inc()
            runtime.publish_event(
                "assessment.scored",
                {"assessment_id": assessment_id, "triage": outcome.triage_level},
            )

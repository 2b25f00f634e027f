"""Celery tasks of the rules worker: thin shells around plain functions.

Every task is declared with `house_task`, which names it, routes it, binds `task_id` to the log
context and counts it in metrics. Tasks take ids only, never patient data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from typing import Any

import structlog
from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded
from prometheus_client import Counter, Histogram
from sqlalchemy.exc import OperationalError

from services.rules import runtime
from services.rules.scoring import mark_failed, score_assessment
from shared.celery_app import SCORE_TASK

log = structlog.get_logger("myotriage.rules")

TASKS = Counter("myotriage_tasks_total", "Tasks run", ["task", "outcome"])
TASK_SECONDS = Histogram(
    "myotriage_task_seconds",
    "Task run time",
    ["task"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
TRIAGED = Counter("myotriage_triaged_total", "Assessments scored, by level", ["level"])


def house_task(app: Celery, name: str, **options: Any) -> Callable[[Callable[..., Any]], Task]:
    """Register `func` as task `name` with log context and metrics."""

    def decorate(func: Callable[..., Any]) -> Task:
        @wraps(func)
        def run(self: Task, *args: Any, **kwargs: Any) -> Any:
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(task=name, task_id=self.request.id)
            started = time.perf_counter()
            outcome = "error"
            try:
                value = func(self, *args, **kwargs)
                outcome = "ok"
                return value
            finally:
                TASKS.labels(name, outcome).inc()
                TASK_SECONDS.labels(name).observe(time.perf_counter() - started)

        return app.task(name=name, bind=True, **options)(run)  # type: ignore[no-any-return]

    return decorate


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

"""The Celery app factory, configured for "never lose a report".

- `acks_late` + `reject_on_worker_lost`: a task is acknowledged only after it finished, and a
  worker killed mid-task puts it back on the queue.
- prefetch 1: a worker holds one task at a time, so a crash strands at most one.
- No result backend: results live in the database, which is the source of truth.
- JSON only, ids only: task messages never carry patient data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from typing import Any

import structlog
from celery import Celery, Task
from kombu import Exchange, Queue
from prometheus_client import Counter, Histogram

from shared.config import Settings

# Separate queues so a flood of batch screening never delays an interactive report.
SCORING_QUEUE = "scoring"
BATCH_QUEUE = "batch"
# Outbound EHR callbacks: a slow EHR endpoint must never hold up scoring.
CALLBACKS_QUEUE = "callbacks"
ALL_QUEUES = (SCORING_QUEUE, BATCH_QUEUE, CALLBACKS_QUEUE)
# The rules worker consumes these; the callbacks worker (services.callbacks.worker) the other.
RULES_QUEUES = (SCORING_QUEUE, BATCH_QUEUE)
SCORE_TASK = "rules.score_assessment"
# Many assessments in one message (ids only): the relay groups pending SCORE_TASK rows into it.
SCORE_GROUP_TASK = "rules.score_group"


def create_celery(settings: Settings | None = None, name: str = "myotriage") -> Celery:
    """Build a Celery app for `settings` (from the environment by default)."""
    settings = settings or Settings.from_env()
    app = Celery(name, broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        task_default_queue=SCORING_QUEUE,
        # Each queue gets its own exchange and routing key: with the defaults all three bind
        # to one exchange under one key, and every task is delivered to every queue.
        task_queues=tuple(Queue(name, Exchange(name), routing_key=name) for name in ALL_QUEUES),
        task_routes={
            SCORE_TASK: {"queue": SCORING_QUEUE},
            SCORE_GROUP_TASK: {"queue": SCORING_QUEUE},
        },
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout,
            # Redis restarts are survived: reconnect rather than give up.
            "socket_timeout": 5,
            "socket_connect_timeout": 2,
            "retry_on_timeout": True,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # The relay decides about retries itself (it keeps the row and tries again later),
        # so a publish while Redis is down fails fast instead of blocking the relay.
        task_publish_retry=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_pool_limit=4,
        timezone="UTC",
        enable_utc=True,
    )
    app.settings = settings  # type: ignore[attr-defined]
    return app


TASKS = Counter("myotriage_tasks_total", "Tasks run", ["task", "outcome"])
TASK_SECONDS = Histogram(
    "myotriage_task_seconds",
    "Task run time",
    ["task"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)


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

        # shared=False: a task belongs to the app that declares it, not to every app the
        # process creates (the rules and callbacks workers are separate apps).
        return app.task(name=name, bind=True, shared=False, **options)(run)  # type: ignore[no-any-return]

    return decorate

"""The Celery app factory, configured for "never lose a report".

- `acks_late` + `reject_on_worker_lost`: a task is acknowledged only after it finished, and a
  worker killed mid-task puts it back on the queue.
- prefetch 1: a worker holds one task at a time, so a crash strands at most one.
- No result backend: results live in the database, which is the source of truth.
- JSON only, ids only: task messages never carry patient data.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from shared.config import Settings

# Separate queues so a flood of batch screening never delays an interactive report.
SCORING_QUEUE = "scoring"
BATCH_QUEUE = "batch"
# Outbound EHR callbacks: a slow EHR endpoint must never hold up scoring.
CALLBACKS_QUEUE = "callbacks"
ALL_QUEUES = (SCORING_QUEUE, BATCH_QUEUE, CALLBACKS_QUEUE)
SCORE_TASK = "rules.score_assessment"


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
        task_routes={SCORE_TASK: {"queue": SCORING_QUEUE}},
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

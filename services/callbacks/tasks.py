"""The delivery task: a thin shell around `delivery.deliver`, taking a delivery id only."""

from __future__ import annotations

from celery import Celery, Task
from sqlalchemy.exc import OperationalError

from services.callbacks.delivery import deliver, destinations_for, policy_for
from shared import worker_runtime
from shared.callbacks import CALLBACK_TASK
from shared.celery_app import house_task


def register_callback_tasks(app: Celery) -> None:
    """Declare the delivery task on the callbacks worker's Celery app."""

    @house_task(
        app,
        CALLBACK_TASK,
        # Only for the database being away, with short Celery back-off; HTTP retries are ours.
        autoretry_for=(OperationalError,),
        retry_backoff=2,
        retry_backoff_max=60,
        retry_jitter=True,
        max_retries=None,
    )
    def deliver_callback(self: Task, delivery_id: str) -> None:
        """Attempt one callback delivery by id (idempotent: a finished delivery is skipped)."""
        settings = worker_runtime.settings()
        deliver(
            worker_runtime.sessions(),
            delivery_id,
            policy_for(settings),
            message_id=self.request.id,
            destinations=destinations_for(settings),
        )

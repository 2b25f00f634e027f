"""The callbacks worker's Celery app (`celery -A services.callbacks.worker worker -Q callbacks`).

Its own process, apart from the rules worker: it never loads the rule set, and a slow or dead
EHR endpoint holds up only callbacks, never scoring. A bad destination allowlist
(MYOTRIAGE_CALLBACK_ALLOWED_NETWORKS) stops it at start-up rather than failing every delivery.
So does a malformed MYOTRIAGE_SECRET_KEYS (checked on import: Celery only logs what a
`worker_init` handler raises); signing needs the subscriptions' secrets.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery.signals import worker_init, worker_process_init

from services.callbacks.tasks import register_callback_tasks
from shared import worker_runtime
from shared.callback_destinations import DestinationPolicy
from shared.celery_app import create_celery
from shared.observability import configure_logging
from shared.secrets_at_rest import use_secret_keys

configure_logging(worker_runtime.settings().log_level)
log = structlog.get_logger("myotriage.callbacks")

use_secret_keys(worker_runtime.settings())
celery_app = create_celery(worker_runtime.settings(), name="myotriage-callbacks")
register_callback_tasks(celery_app)
app = celery_app  # `celery -A services.callbacks.worker` finds `app`


@worker_init.connect
def _check_destinations(**_: Any) -> None:
    DestinationPolicy.from_settings(worker_runtime.settings())
    log.info("worker.callbacks_ready")


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # A forked child must not reuse the parent's database connections.
    worker_runtime.after_fork()

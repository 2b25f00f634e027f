"""The rules worker's Celery app (`celery -A services.rules.worker worker -Q ...`).

The rule set is loaded and validated when the worker starts: a bad rule file stops the worker
with a message naming the rule, instead of failing on the first report.
"""

from __future__ import annotations

import os
from typing import Any

import structlog
from celery.signals import worker_init, worker_process_init

from services.rules import runtime
from services.rules.tasks import register_tasks
from shared.celery_app import create_celery
from shared.observability import configure_logging

configure_logging(runtime.settings().log_level)
log = structlog.get_logger("myotriage.rules")

celery_app = create_celery(runtime.settings(), name="myotriage-rules")
register_tasks(celery_app)
app = celery_app  # `celery -A services.rules.worker` finds `app`


@worker_init.connect
def _load_rules(**_: Any) -> None:
    ruleset = runtime.ruleset()  # raises RuleSetError naming the rule: the worker stops
    log.info("worker.ruleset_loaded", ruleset_version=ruleset.version)
    port = os.environ.get("MYOTRIAGE_WORKER_METRICS_PORT")
    if port:
        from prometheus_client import start_http_server

        start_http_server(
            int(port), addr=os.environ.get("MYOTRIAGE_WORKER_METRICS_ADDR", "127.0.0.1")
        )


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # A forked child must not reuse the parent's database or Redis connections.
    runtime.after_fork()

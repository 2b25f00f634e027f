"""gunicorn settings for both Flask services (compose and the local run command).

Every value can be overridden with GUNICORN_CMD_ARGS or the variables below.
"""

import os

workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
# More than one thread makes gunicorn use its gthread worker. Intake runs 16: concurrent
# requests of one process then share a commit (shared/group_commit.py).
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
worker_class = "sync"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 20
keepalive = 5
# A slow or hostile client cannot hold a sync worker with an endless header section.
limit_request_line = 8190
limit_request_fields = 100
# Access lines come from the app's own structlog middleware (no PHI); gunicorn's are off.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "warning")
bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")


def child_exit(server, worker):
    """Let Prometheus' multiprocess collector drop a dead worker's live gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

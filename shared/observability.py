"""Structured logs (structlog JSON lines) and Prometheus metrics, without patient data.

Log lines are an event name plus ids and codes: `request_id`, `task_id`, `assessment_id`,
triage level, status. Never a report field, a name, a patient id or free text. Metric labels are
routes, methods, statuses, levels and task names: bounded sets, never an id.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import MutableMapping
from typing import Any

import structlog
from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

_configured = False

# Fields that must never reach a log line even if a caller binds them by mistake.
_PHI_KEYS = frozenset(
    {
        "patient",
        "report",
        "free_text",
        "medications",
        "medication_changes",
        "conditions",
        "findings",
        "patient_id",
        "patient_ref",
        "authorization",
        "api_key",
        "body",
    }
)


def _drop_phi(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in _PHI_KEYS.intersection(event):
        event[key] = "[redacted]"
    return event


def configure_logging(level: str = "INFO") -> None:
    """JSON lines to stdout, with contextvars (request_id, task_id) merged into each line."""
    global _configured
    if _configured:
        return
    logging.basicConfig(format="%(message)s", stream=sys.stdout, level=level.upper())
    # Libraries' own chatter stays at WARNING so their messages cannot carry payloads.
    for noisy in ("werkzeug", "celery", "kombu", "amqp", "gunicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_phi,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    _configured = True


REQUESTS = Counter(
    "myotriage_http_requests_total", "HTTP requests", ["service", "route", "method", "status"]
)
LATENCY = Histogram(
    "myotriage_http_request_seconds",
    "HTTP request latency",
    ["service", "route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


def install_request_observability(app: Flask, service: str) -> None:
    """Request ids, one access log line per request, and per-route metrics."""
    access_log = structlog.get_logger(f"myotriage.{service}")

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        # Accept a caller's id only if it looks like one; it is echoed and logged.
        ok = 0 < len(incoming) <= 64 and all(c.isalnum() or c in "-_." for c in incoming)
        g.request_id = incoming if ok else uuid.uuid4().hex
        g.started = time.perf_counter()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=g.request_id, service=service)

    @app.after_request
    def _finish(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        elapsed = time.perf_counter() - getattr(g, "started", time.perf_counter())
        REQUESTS.labels(service, route, request.method, str(response.status_code)).inc()
        LATENCY.labels(service, route, request.method).observe(elapsed)
        response.headers["X-Request-ID"] = getattr(g, "request_id", "")
        if route not in ("/livez", "/metrics"):
            access_log.info(
                "http.request",
                method=request.method,
                route=route,
                status=response.status_code,
                ms=round(elapsed * 1000, 2),
            )
        return response


def metrics_response() -> Response:
    """Prometheus exposition; adds up gunicorn workers when PROMETHEUS_MULTIPROC_DIR is set."""
    import os

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)

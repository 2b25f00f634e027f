"""Per-process resources of the rules worker: the settings and database sessions
(shared/worker_runtime.py), the rule set and the Redis publisher.

Created lazily in each worker process (after the prefork), never shared across a fork.
"""

from __future__ import annotations

import json
from typing import Any

import redis
import structlog

from services.rules.engine import RuleSet, load_ruleset
from shared import worker_runtime
from shared.worker_runtime import sessions, settings

__all__ = ["after_fork", "publish_event", "publish_events", "ruleset", "sessions", "settings"]

EVENTS_CHANNEL = "myotriage:events"
log = structlog.get_logger("myotriage.rules")

_state: dict[str, Any] = {}


def ruleset() -> RuleSet:
    if "ruleset" not in _state:
        _state["ruleset"] = load_ruleset()
    return _state["ruleset"]  # type: ignore[no-any-return]


def publish_event(event_type: str, data: dict[str, Any]) -> None:
    """Tell live dashboards (ids and levels only). Best effort: the database has the truth."""
    try:
        _redis().publish(EVENTS_CHANNEL, json.dumps({"type": event_type, "data": data}))
    except redis.RedisError as exc:
        log.warning("event.publish_failed", error_class=type(exc).__name__)


def publish_events(events: list[tuple[str, dict[str, Any]]]) -> None:
    """`publish_event` for many events in one round trip (a pipeline). Best effort."""
    if not events:
        return
    try:
        pipeline = _redis().pipeline(transaction=False)
        for event_type, data in events:
            pipeline.publish(EVENTS_CHANNEL, json.dumps({"type": event_type, "data": data}))
        pipeline.execute()
    except redis.RedisError as exc:
        log.warning("event.publish_failed", error_class=type(exc).__name__)


def _redis() -> redis.Redis:
    if "redis" not in _state:
        _state["redis"] = redis.Redis.from_url(
            settings().redis_url, socket_timeout=1, socket_connect_timeout=1
        )
    return _state["redis"]  # type: ignore[no-any-return]


def after_fork() -> None:
    """Drop connections inherited from the parent; keep the (immutable) loaded rule set."""
    worker_runtime.after_fork()
    _state.pop("redis", None)

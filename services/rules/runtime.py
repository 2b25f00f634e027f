"""Per-process resources of the worker: the DB engine, the rule set, the Redis publisher.

Created lazily in each worker process (after the prefork), never shared across a fork.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
import structlog
from sqlalchemy.orm import Session, sessionmaker

from services.rules.engine import RuleSet, load_ruleset
from shared.config import Settings
from shared.db import make_engine, make_session_factory

EVENTS_CHANNEL = "myotriage:events"
log = structlog.get_logger("myotriage.rules")

_state: dict[str, Any] = {}


def settings() -> Settings:
    if "settings" not in _state:
        _state["settings"] = Settings.from_env()
    return _state["settings"]  # type: ignore[no-any-return]


def sessions() -> sessionmaker[Session]:
    if _state.get("pid") != os.getpid() or "sessions" not in _state:
        _state["pid"] = os.getpid()
        _state["sessions"] = make_session_factory(make_engine(settings().database_url))
    return _state["sessions"]  # type: ignore[no-any-return]


def ruleset() -> RuleSet:
    if "ruleset" not in _state:
        _state["ruleset"] = load_ruleset()
    return _state["ruleset"]  # type: ignore[no-any-return]


def publish_event(event_type: str, data: dict[str, Any]) -> None:
    """Tell live dashboards (ids and levels only). Best effort: the database has the truth."""
    try:
        if "redis" not in _state:
            _state["redis"] = redis.Redis.from_url(
                settings().redis_url, socket_timeout=1, socket_connect_timeout=1
            )
        _state["redis"].publish(EVENTS_CHANNEL, json.dumps({"type": event_type, "data": data}))
    except redis.RedisError as exc:
        log.warning("event.publish_failed", error_class=type(exc).__name__)


def after_fork() -> None:
    """Drop connections inherited from the parent; keep the (immutable) loaded rule set."""
    kept: dict[str, Any] = {key: _state[key] for key in ("settings", "ruleset") if key in _state}
    _state.clear()
    _state.update(kept)

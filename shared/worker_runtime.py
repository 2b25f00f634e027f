"""Per-process resources of a worker or the relay: the settings and the database sessions.

Created lazily in each process (after a prefork), never shared across a fork: call
`after_fork()` in a forked child before it touches the database.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import make_engine, make_session_factory

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


def after_fork() -> None:
    """Drop the database connections inherited from the parent; keep the settings."""
    kept = {key: _state[key] for key in ("settings",) if key in _state}
    _state.clear()
    _state.update(kept)

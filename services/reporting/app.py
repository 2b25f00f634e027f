"""The reporting service: clinician summaries and the triage queue."""

from __future__ import annotations

from typing import Any

from flask import Flask

from shared.config import Settings
from shared.web import build_app, resolve_settings


def create_app(config: Settings | dict[str, Any] | None = None) -> Flask:
    """Build the reporting app. `config` is a Settings, or overrides of the environment's."""
    settings = resolve_settings(config)
    app, api = build_app(__name__, "reporting", "MyoTriage reporting", settings)
    from services.reporting.api.reports import blp as reports

    api.register_blueprint(reports)
    return app

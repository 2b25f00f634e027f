"""The reporting service: clinician summaries and the triage queue."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask_cors import CORS

from shared.callback_destinations import DestinationPolicy
from shared.config import Settings
from shared.web import build_app, resolve_settings


def create_app(config: Settings | dict[str, Any] | None = None) -> Flask:
    """Build the reporting app. `config` is a Settings, or overrides of the environment's."""
    settings = resolve_settings(config)
    app, api = build_app(__name__, "reporting", "MyoTriage reporting", settings)
    # Parsed now: a bad MYOTRIAGE_CALLBACK_ALLOWED_NETWORKS stops the service at start-up.
    app.extensions["myotriage.callback_destinations"] = DestinationPolicy.from_settings(settings)
    from services.reporting.api.cds_hooks import register_cds_hooks
    from services.reporting.api.fhir import register_fhir
    from services.reporting.api.reports import blp as reports
    from services.reporting.api.subscriptions import blp as subscriptions

    api.register_blueprint(reports)
    api.register_blueprint(subscriptions)
    register_cds_hooks(app)
    register_fhir(app)
    # EHRs and SMART apps call CDS Hooks and FHIR from the browser; preflights must pass.
    CORS(
        app,
        resources={r"/cds-services*": {}, r"/fhir/*": {}},
        origins=[o.strip() for o in settings.cors_origins.split(",")],
        allow_headers=["Authorization", "Content-Type"],
        methods=["GET", "POST", "OPTIONS"],
        expose_headers=["X-Request-ID", "Location"],
        max_age=86400,
    )
    return app

"""The intake service: symptom reports in."""

from __future__ import annotations

from typing import Any

from flask import Flask

from shared.config import Settings
from shared.web import build_app, resolve_settings


def create_app(config: Settings | dict[str, Any] | None = None) -> Flask:
    """Build the intake app. `config` is a Settings, or overrides of the environment's."""
    settings = resolve_settings(config)
    app, api = build_app(__name__, "intake", "MyoTriage intake", settings)
    from services.intake.api.admin import blp as admin_integrations
    from services.intake.api.assessments import blp as assessments
    from services.intake.api.fhir import blp as fhir
    from services.intake.api.schemas import blp as schemas
    from services.intake.api.webhooks import blp as webhooks

    api.register_blueprint(assessments)
    api.register_blueprint(schemas)
    # EHR integration, inbound: signed webhooks, FHIR Questionnaire(Response), their admin.
    api.register_blueprint(webhooks)
    api.register_blueprint(fhir)
    api.register_blueprint(admin_integrations)
    return app

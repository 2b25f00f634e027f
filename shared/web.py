"""What both Flask services share: the app skeleton, health endpoints, OpenAPI, auth wiring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flask_smorest
import flask_swagger_ui
import redis
import structlog
from flask import Blueprint, Flask, current_app, g, jsonify
from flask_smorest import Api
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.middleware.proxy_fix import ProxyFix

from shared import repository
from shared.auth import ApiKeyVerifier
from shared.config import Settings
from shared.db import make_engine, make_session_factory
from shared.group_commit import GroupCommitter
from shared.observability import (
    configure_logging,
    install_request_observability,
    metrics_response,
)
from shared.openapi import DocumentedApi
from shared.problems import register_problem_handlers
from shared.rate_limits import install_rate_limits
from shared.request_input import BoundedArgumentsParser, install_json_bounds
from shared.secrets_at_rest import use_secret_keys

log = structlog.get_logger("myotriage.web")


def build_app(import_name: str, service: str, title: str, settings: Settings) -> tuple[Flask, Api]:
    """A Flask app with config, DB, Redis, auth, problem+json, logs, metrics, health and OpenAPI."""
    configure_logging(settings.log_level)
    app = Flask(import_name)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        API_TITLE=title,
        API_VERSION="v1",
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        # Swagger UI's files come from this service (`swagger_ui_assets`), never a CDN.
        OPENAPI_SWAGGER_UI_URL="/docs/assets/",
        API_SPEC_OPTIONS={
            "components": {
                "securitySchemes": {
                    "ApiKeyAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "API key"}
                }
            },
            "info": {
                "description": "MyoTriage: decision support for adults reporting muscle fatigue, "
                "weakness, twitching or cramps. Errors are RFC 9457 application/problem+json."
            },
        },
        JSON_SORT_KEYS=False,
    )
    engine = make_engine(settings.database_url)
    session_factory = make_session_factory(engine)
    app.extensions["myotriage.settings"] = settings
    app.extensions["myotriage.engine"] = engine
    app.extensions["myotriage.sessions"] = session_factory
    app.extensions["myotriage.writer"] = GroupCommitter(engine)
    app.extensions["myotriage.redis"] = redis.Redis.from_url(
        settings.redis_url, socket_timeout=1, socket_connect_timeout=1
    )
    app.extensions["myotriage.api_keys"] = ApiKeyVerifier(
        session_factory, settings.api_key_cache_seconds, settings.redis_url
    )
    use_secret_keys(settings)
    if settings.trusted_proxy_hops:
        # The client's address is the one our own proxies appended to X-Forwarded-For.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxy_hops)  # type: ignore[method-assign]
    install_request_observability(app, service)
    # After request observability, so refusals by these before_request hooks carry the request
    # id; rate limits first, so a refused request costs nothing more.
    install_rate_limits(app, service, settings)
    install_json_bounds(app, settings.max_json_depth)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # Every operation's OpenAPI lists the errors it can answer, as problem+json (or FHIR).
    api = DocumentedApi(app)
    # After Api(): flask-smorest registers its own HTTPException handler, ours must win.
    register_problem_handlers(app)
    app.register_blueprint(_health_blueprint(service))
    app.register_blueprint(_swagger_ui_assets())
    return app, api


def _swagger_ui_assets() -> Blueprint:
    """Swagger UI's JavaScript and CSS for the `/docs` page, from the flask-swagger-ui package's
    copy of swagger-ui-dist: hospital networks are closed, so the page must not need a CDN."""
    assets = Blueprint(
        "swagger_ui_assets",
        __name__,
        static_folder=str(Path(flask_swagger_ui.__file__).parent / "dist"),
        static_url_path="/docs/assets",
    )
    return assets


class ApiBlueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint whose `@arguments` read JSON bodies with the app's bounds
    (shared/request_input.py). Put `@require_scope` above `@arguments`: the caller is
    authenticated before the body is read, so a caller without a key gets 401, never 422."""

    ARGUMENTS_PARSER = BoundedArgumentsParser()


def audit_caller(
    session: Session,
    action: str,
    *,
    assessment_id: str | None = None,
    detail: str | None = None,
) -> None:
    """Write `action` by the request's API-key caller into its tenant's audit log."""
    repository.record_audit(
        session,
        tenant_id=g.caller.tenant_id,
        actor=g.caller.actor,
        action=action,
        assessment_id=assessment_id,
        request_id=g.request_id,
        detail=detail,
    )


def settings_of(app: Flask | None = None) -> Settings:
    return (app or current_app).extensions["myotriage.settings"]  # type: ignore[no-any-return]


def sessions() -> sessionmaker[Session]:
    return current_app.extensions["myotriage.sessions"]  # type: ignore[no-any-return]


def writer() -> GroupCommitter:
    """This process's group committer: inserts that commit together with concurrent requests'."""
    return current_app.extensions["myotriage.writer"]  # type: ignore[no-any-return]


def resolve_settings(config: Settings | dict[str, Any] | None) -> Settings:
    if isinstance(config, Settings):
        return config
    return Settings.from_env(**(config or {}))


def _health_blueprint(service: str) -> Blueprint:
    health = Blueprint("health", __name__)

    @health.get("/livez")
    def livez() -> Any:
        """The process is up and serving."""
        return jsonify(status="ok", service=service)

    @health.get("/readyz")
    def readyz() -> Any:
        """Ready when the database answers. Redis being down is reported but not fatal:
        intake keeps accepting (the outbox relay catches up), so taking the service out of
        a load balancer for a Redis blip would turn it into refused reports."""
        checks: dict[str, str] = {}
        try:
            with current_app.extensions["myotriage.engine"].connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            log.warning("readyz.database_down", error_class=type(exc).__name__)
            checks["database"] = "down"
        try:
            current_app.extensions["myotriage.redis"].ping()
            checks["redis"] = "ok"
        except Exception as exc:
            log.warning("readyz.redis_down", error_class=type(exc).__name__)
            checks["redis"] = "down"
        if checks["database"] != "ok":
            return jsonify(status="unavailable", service=service, checks=checks), 503
        status = "ok" if checks["redis"] == "ok" else "degraded"
        return jsonify(status=status, service=service, checks=checks), 200

    @health.get("/metrics")
    def metrics() -> Any:
        """Prometheus metrics (no patient data in any label)."""
        return metrics_response()

    return health

"""`/v1/admin/integrations`: register EHR integrations and rotate their webhook secrets (admin).

A secret is shown once, when it is made; listings show a short hint only.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import current_app, g, url_for
from flask.views import MethodView
from marshmallow import RAISE, Schema, fields, validate

from services.intake import ehr_integrations
from services.intake.ehr_integrations import (
    MAX_SECRET_BYTES,
    MIN_SECRET_BYTES,
    IntegrationError,
    IntegrationNameTaken,
)
from services.intake.webhook_verification import announce_integration_change
from shared.auth import SCOPES, require_scope
from shared.db import transaction
from shared.openapi import whsec_pattern
from shared.problems import Problem
from shared.web import ApiBlueprint, audit_caller, sessions

blp = ApiBlueprint(
    "admin_integrations",
    __name__,
    url_prefix="/v1/admin/integrations",
    description="EHR integrations that send signed webhooks, and their secrets (scope admin).",
)


class IntegrationIn(Schema):
    class Meta:
        unknown = RAISE

    name = fields.String(
        required=True,
        validate=validate.Length(min=1, max=100),
        # Leading and trailing spaces are dropped; a name of spaces only is no name.
        metadata={"pattern": "[^\\s]"},
    )
    scopes = fields.List(
        fields.String(validate=validate.OneOf(SCOPES)),
        load_default=lambda: list(ehr_integrations.DEFAULT_SCOPES),
        validate=validate.Length(min=1),
    )


class SecretIn(Schema):
    class Meta:
        unknown = RAISE

    secret = fields.String(
        metadata={
            "description": "Your own whsec_ secret; leave out to have one generated.",
            "pattern": whsec_pattern(MIN_SECRET_BYTES, MAX_SECRET_BYTES),
        }
    )
    expire_others_in_hours = fields.Float(
        validate=validate.Range(min=0, max=24 * 30),
        metadata={
            "description": "Rotation grace period: the current secrets stop working "
            "after this many hours (default: they stay until revoked)."
        },
    )


class SecretOut(Schema):
    id = fields.String()
    hint = fields.String()
    created_at = fields.DateTime()
    expires_at = fields.DateTime(allow_none=True)
    revoked_at = fields.DateTime(allow_none=True)
    active = fields.Boolean()


class IntegrationOut(Schema):
    id = fields.String()
    tenant_id = fields.String(metadata={"description": "The organisation it belongs to."})
    name = fields.String(metadata={"description": "Unique within the tenant."})
    scopes = fields.List(fields.String())
    created_at = fields.DateTime()
    disabled_at = fields.DateTime(allow_none=True)
    secrets = fields.List(fields.Nested(SecretOut))
    webhook_url = fields.String()


class CreatedIntegrationOut(IntegrationOut):
    secret = fields.String(metadata={"description": "The signing secret, shown this once."})


class CreatedSecretOut(SecretOut):
    secret = fields.String(metadata={"description": "The signing secret, shown this once."})


class IntegrationListOut(Schema):
    items = fields.List(fields.Nested(IntegrationOut))


def _view(integration: Any) -> dict[str, Any]:
    out = ehr_integrations.describe(integration)
    out["webhook_url"] = url_for("webhooks.receive_for_integration", integration_ref=integration.id)
    return out


def _audit(session: Any, action: str, integration_id: str) -> None:
    audit_caller(
        session,
        action,
        detail=f"integration {integration_id}",
    )


def _refused(exc: IntegrationError) -> Problem:
    if isinstance(exc, IntegrationNameTaken):
        return Problem(409, "Conflict", str(exc), problem_type="integration-name-taken")
    return Problem(
        422,
        "Invalid integration request",
        str(exc),
        problem_type="validation-error",
        errors=[{"field": None, "pointer": "", "message": str(exc)}],
    )


@blp.route("")
class Integrations(MethodView):
    @blp.response(200, IntegrationListOut)
    @require_scope("admin")
    def get(self) -> Any:
        """Every integration of the caller's tenant, with its secrets (hints only)."""
        with sessions()() as session:
            integrations = ehr_integrations.list_integrations(session, g.caller.tenant_id)
            return {"items": [_view(i) for i in integrations]}

    @require_scope("admin")  # above @arguments: no key is a 401 whatever the body
    @blp.arguments(IntegrationIn)
    @blp.response(201, CreatedIntegrationOut)
    @blp.alt_response(409, description="The organisation has an integration of this name.")
    def post(self, args: dict[str, Any]) -> Any:
        """Register an integration. The answer holds its first signing secret, once."""
        try:
            with transaction(sessions()) as session:
                integration, _, raw = ehr_integrations.create_integration(
                    session, args["name"], args["scopes"], tenant_id=g.caller.tenant_id
                )
                _audit(session, "integration.create", integration.id)
                body = {**_view(integration), "secret": raw}
        except IntegrationError as exc:
            raise _refused(exc) from None
        _announce(integration)  # an intake process may remember the name as unknown
        return body, 201, {"Location": url_for(".Integration", integration_id=body["id"])}


@blp.route("/<string:integration_id>")
class Integration(MethodView):
    @blp.response(200, IntegrationOut)
    @require_scope("admin")
    def get(self, integration_id: str) -> Any:
        """One integration."""
        with sessions()() as session:
            return _view(_integration_or_404(session, integration_id))


@blp.route("/<string:integration_id>/disable")
class DisableIntegration(MethodView):
    @blp.response(200, IntegrationOut)
    @require_scope("admin")
    def post(self, integration_id: str) -> Any:
        """Refuse every webhook of this integration from now on (records are kept)."""
        with transaction(sessions()) as session:
            integration = _integration_or_404(session, integration_id)
            ehr_integrations.disable_integration(session, g.caller.tenant_id, integration_id)
            _audit(session, "integration.disable", integration_id)
            out = _view(integration)
        _announce(integration)
        return out


@blp.route("/<string:integration_id>/secrets")
class Secrets(MethodView):
    @require_scope("admin")
    @blp.arguments(SecretIn)
    @blp.response(201, CreatedSecretOut)
    def post(self, args: dict[str, Any], integration_id: str) -> Any:
        """Add a signing secret (rotation). Both old and new work until the old is revoked
        or its grace period (`expire_others_in_hours`) runs out."""
        grace = args.get("expire_others_in_hours")
        try:
            with transaction(sessions()) as session:
                integration = _integration_or_404(session, integration_id)
                row, raw = ehr_integrations.add_secret(
                    session,
                    integration,
                    secret=args.get("secret"),
                    expire_others_in=timedelta(hours=grace) if grace is not None else None,
                )
                _audit(session, "integration.add_secret", integration_id)
                described = next(s for s in _view(integration)["secrets"] if s["id"] == row.id)
        except IntegrationError as exc:
            raise _refused(exc) from None
        _announce(integration)  # the new secret works at once, as do shortened grace periods
        return {**described, "secret": raw}


@blp.route("/<string:integration_id>/secrets/<string:secret_id>")
class Secret(MethodView):
    @blp.response(204)
    @require_scope("admin")
    def delete(self, integration_id: str, secret_id: str) -> Any:
        """Revoke a secret at once: webhooks signed with it are refused."""
        with transaction(sessions()) as session:
            integration = _integration_or_404(session, integration_id)
            if not ehr_integrations.revoke_secret(session, integration_id, secret_id):
                raise Problem(404, "Not Found", "No active secret with this id.")
            _audit(session, "integration.revoke_secret", integration_id)
        _announce(integration)
        return None


def _announce(integration: Any) -> None:
    """Once a change has committed: every intake process drops its cached senders of it."""
    announce_integration_change(
        current_app.extensions["myotriage.redis"], integration.id, integration.name
    )


def _integration_or_404(session: Any, integration_id: str) -> Any:
    # Another tenant's integration is as absent as a missing one: 404, never 403.
    integration = ehr_integrations.get_integration(session, g.caller.tenant_id, integration_id)
    if integration is None:
        raise Problem(404, "Not Found", "No integration has this id.")
    return integration

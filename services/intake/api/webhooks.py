"""`POST /v1/webhooks/ehr/<integration>`: signed symptom reports from EHRs (Standard Webhooks).

The integration is named in the path (its id or name), or, for senders that can only be given
one URL, in a `webhook-integration` header on `POST /v1/webhooks/ehr`. The body is a v1
symptom report or a FHIR QuestionnaireResponse for the intake Questionnaire.

The webhook-id is the idempotency key, scoped to the integration: a redelivery (same id, same
body) gets the first answer and stores nothing new; the same id with another body is a 409.
Errors about the envelope (headers, signature, replay, content type) are problem+json; errors
about a FHIR body's content are an OperationOutcome. Logs carry ids and reason codes only.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, NoReturn

import structlog
from flask import Response, current_app, request

from services.intake.api.assessments import AcceptedOut
from services.intake.api.fhir import (
    QUESTIONNAIRE_RESPONSE_SCHEMA,
    accept_questionnaire_response,
    accepted_links,
    accepted_response,
    outcome_response,
)
from services.intake.commands import Accepted, accept_assessment, fingerprint
from services.intake.fhir_questionnaire import FHIR_MEDIA_TYPE, QuestionnaireResponseRefused
from services.intake.webhook_verification import (
    MAX_INTEGRATION_REF_LENGTH,
    MAX_SIGNATURE_HEADER_LENGTH,
    MAX_TIMESTAMP_DIGITS,
    MAX_WEBHOOK_ID_LENGTH,
    WebhookHeaders,
    WebhookRejected,
    WebhookSender,
    WebhookSenders,
    check_timestamp,
    verified_sender,
)
from shared.openapi import error_response
from shared.problems import PROBLEM_MEDIA_TYPE, Problem
from shared.request_input import JsonBodyRefused, loads, max_json_depth
from shared.schemas.symptom_report import SymptomReportSchema
from shared.web import ApiBlueprint, sessions, settings_of, writer

log = structlog.get_logger("myotriage.intake.webhooks")
INTEGRATION_HEADER = "webhook-integration"
WEBHOOK_SCOPE = "assessments:write"
_MISSING_INTEGRATION = (
    "Name the integration: POST /v1/webhooks/ehr/<integration id>, or send the "
    f"'{INTEGRATION_HEADER}' header."
)
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    409: "Conflict",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
}

blp = ApiBlueprint(
    "webhooks",
    __name__,
    url_prefix="/v1/webhooks",
    description="Signed webhooks from EHRs (Standard Webhooks): a v1 symptom report or a FHIR "
    "QuestionnaireResponse. See docs/INTEGRATION.md.",
)

_SIGNED = ("webhook-id", "webhook-timestamp", "webhook-signature")
# The headers' form as WebhookHeaders.read checks it (a malformed one is a 400).
_SIGNED_HEADERS = [
    {
        "in": "header",
        "name": "webhook-id",
        "required": True,
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_WEBHOOK_ID_LENGTH,
            "pattern": "^[ -~]+$",
        },
        "description": "The message id (printable ASCII): a redelivery keeps it.",
    },
    {
        "in": "header",
        "name": "webhook-timestamp",
        "required": True,
        "schema": {"type": "string", "pattern": f"^[0-9]{{1,{MAX_TIMESTAMP_DIGITS}}}$"},
        "description": "The send time in unix seconds, within 5 minutes of our clock.",
    },
    {
        "in": "header",
        "name": "webhook-signature",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_SIGNATURE_HEADER_LENGTH},
        "description": "Space-separated 'v1,<base64 HMAC-SHA256 of id.timestamp.body>'.",
    },
]
_WEBHOOK_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A v1 symptom report, or a QuestionnaireResponse for the intake "
        "Questionnaire; the signature covers these bytes exactly.",
        "content": {
            "application/json": {
                "schema": {"anyOf": [SymptomReportSchema, QUESTIONNAIRE_RESPONSE_SCHEMA]}
            },
            FHIR_MEDIA_TYPE: {"schema": QUESTIONNAIRE_RESPONSE_SCHEMA},
        },
    },
    "responses": {
        "202": {
            "description": "Accepted (a redelivery: the first answer again).",
            "content": {"application/json": {"schema": AcceptedOut}},
        },
        # Errors about the envelope are problem+json; about a FHIR body, an OperationOutcome.
        "400": error_response(
            400,
            PROBLEM_MEDIA_TYPE,
            FHIR_MEDIA_TYPE,
            description="Malformed headers or JSON (problem+json), or a body that is no "
            "QuestionnaireResponse at all (OperationOutcome).",
        ),
        "401": error_response(
            401,
            description="Unknown or disabled integration, a signature that does not "
            "verify, or a timestamp more than 5 minutes away.",
        ),
        "403": error_response(403, description="The integration lacks 'assessments:write'."),
        "409": error_response(
            409, description="This webhook-id was already delivered with another body."
        ),
        "415": error_response(415, description="The body is not JSON."),
        "422": error_response(
            422,
            PROBLEM_MEDIA_TYPE,
            FHIR_MEDIA_TYPE,
            description="An invalid report (problem+json naming every bad field) or "
            "QuestionnaireResponse (OperationOutcome naming each item).",
        ),
    },
}


def webhook_senders() -> WebhookSenders:
    """The app's directory of integrations that may send webhooks (created on first use)."""
    senders = current_app.extensions.get("myotriage.webhook_senders")
    if senders is None:
        settings = settings_of()
        senders = WebhookSenders(sessions(), settings.api_key_cache_seconds, settings.redis_url)
        current_app.extensions["myotriage.webhook_senders"] = senders
    return senders  # type: ignore[no-any-return]


@blp.route("/ehr/<string:integration_ref>", methods=["POST"])
@blp.doc(parameters=_SIGNED_HEADERS, **_WEBHOOK_DOC)
def receive_for_integration(integration_ref: str) -> Response:
    """Receive a signed report for the integration with this id (or name)."""
    return _receive(integration_ref)


@blp.route("/ehr", methods=["POST"])
@blp.doc(
    parameters=[
        *_SIGNED_HEADERS,
        {
            "in": "header",
            "name": INTEGRATION_HEADER,
            "required": True,
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_INTEGRATION_REF_LENGTH,
                "pattern": "[^ ]",
            },
            "description": "The integration's id or name.",
        },
    ],
    **_WEBHOOK_DOC,
)
def receive() -> Response:
    """Receive a signed report; the integration (id or name) is in `webhook-integration`."""
    integration_ref = request.headers.get(INTEGRATION_HEADER, "").strip()
    if not integration_ref:
        _reject(None, None, WebhookRejected(400, "missing_integration", _MISSING_INTEGRATION))
    return _receive(integration_ref)


def _reject(integration_id: str | None, webhook_id: str | None, why: WebhookRejected) -> NoReturn:
    """Log the refusal (ids and a reason code, never the body) and answer it as problem+json."""
    log.warning(
        "webhook.rejected",
        reason=why.reason,
        status=why.status,
        integration_id=integration_id,
        webhook_id=webhook_id,
    )
    raise Problem(
        why.status,
        _TITLES.get(why.status, "Bad Request"),
        why.detail,
        problem_type=f"webhook-{why.reason.replace('_', '-')}",
    )


def _receive(integration_ref: str) -> Response:
    try:
        headers = WebhookHeaders.read({name: request.headers.get(name, "") for name in _SIGNED})
    except WebhookRejected as why:
        _reject(None, None, why)
    webhook_id = headers.webhook_id
    try:
        # Time first, then the integration: a stale or unknown sender learns nothing more.
        check_timestamp(headers)
        raw_body = request.get_data(cache=True)
        sender = verified_sender(webhook_senders().find(integration_ref), raw_body, headers)
    except WebhookRejected as why:
        _reject(None, webhook_id, why)
    integration_id = sender.integration_id
    if WEBHOOK_SCOPE not in sender.scopes and "admin" not in sender.scopes:
        _reject(
            integration_id,
            webhook_id,
            WebhookRejected(403, "scope", f"This integration lacks the '{WEBHOOK_SCOPE}' scope."),
        )
    if not request.is_json:
        _reject(
            integration_id,
            webhook_id,
            WebhookRejected(
                415,
                "content_type",
                "Send 'Content-Type: application/json' (v1 report) or "
                "'application/fhir+json' (QuestionnaireResponse).",
            ),
        )
    try:
        body = loads(raw_body, max_depth=max_json_depth())
    except JsonBodyRefused as refused:
        _reject(integration_id, webhook_id, WebhookRejected(400, refused.reason, refused.detail))
    except ValueError:
        _reject(
            integration_id,
            webhook_id,
            WebhookRejected(400, "malformed_json", "The body is not valid JSON."),
        )
    try:
        accepted = _accept(body, sender, webhook_id)
    except QuestionnaireResponseRefused as refused:
        log.warning(
            "webhook.rejected",
            reason="questionnaire_response",
            status=refused.status,
            integration_id=integration_id,
            webhook_id=webhook_id,
        )
        return outcome_response(refused.issues, refused.status)
    except Problem as problem:
        if problem.problem_type == "idempotency-key-reused":
            _reject(
                integration_id,
                webhook_id,
                WebhookRejected(
                    409,
                    "webhook_id_reused",
                    "This webhook-id was already delivered with a different body. Give each "
                    "new message its own webhook-id; resend the same body to retry.",
                ),
            )
        log.warning(
            "webhook.rejected",
            reason=problem.problem_type or "problem",
            status=problem.status,
            integration_id=integration_id,
            webhook_id=webhook_id,
        )
        raise
    log.info(
        "webhook.redelivered" if accepted.replayed else "webhook.accepted",
        integration_id=integration_id,
        webhook_id=webhook_id,
        assessment_id=accepted.body.get("id"),
    )
    return accepted_response(accepted)


def _accept(body: Any, sender: WebhookSender, webhook_id: str) -> Accepted:
    kind = body.get("resourceType") if isinstance(body, dict) else None
    if kind == "QuestionnaireResponse":
        return accept_questionnaire_response(
            body,
            tenant_id=sender.tenant_id,
            source="webhook",
            caller_id=sender.integration_id,
            idempotency_key=webhook_id,
        )
    if kind is not None:
        raise Problem(
            422,
            "Unprocessable Content",
            f"A webhook carries a v1 symptom report or a QuestionnaireResponse, not a "
            f"{str(kind)[:40]}.",
            problem_type="webhook-unsupported-body",
        )
    return accept_assessment(
        writer(),
        sessions(),
        body,
        tenant_id=sender.tenant_id,
        source="webhook",
        caller_id=sender.integration_id,
        links=lambda assessment_id: accepted_links(assessment_id, with_fhir=False),
        idempotency_key=webhook_id,
        idempotency_ttl=timedelta(hours=settings_of().idempotency_ttl_hours),
        request_fingerprint=fingerprint(body),
    )

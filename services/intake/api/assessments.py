"""`/v1/assessments`: submit a symptom report, read its status and result."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Response, g, json, request, url_for
from flask.views import MethodView
from marshmallow import Schema, fields

from services.intake.commands import accept_assessment
from shared import repository
from shared.auth import require_scope
from shared.openapi import IDEMPOTENCY_KEY_HEADER
from shared.problems import Problem
from shared.request_input import idempotency_key, json_body
from shared.schemas.symptom_report import SymptomReportSchema, TriageResultOut
from shared.vocabulary import ASSESSMENT_STATUSES
from shared.web import ApiBlueprint, audit_caller, sessions, settings_of, writer

blp = ApiBlueprint(
    "assessments",
    __name__,
    url_prefix="/v1/assessments",
    description="Submit symptom reports (v1 contract) and read their triage.",
)


class LinksOut(Schema):
    self = fields.String()
    report = fields.String()


class AcceptedOut(Schema):
    id = fields.String(required=True)
    status = fields.String(required=True)
    links = fields.Nested(LinksOut)


class AssessmentOut(Schema):
    id = fields.String(required=True)
    status = fields.String(required=True, metadata={"enum": list(ASSESSMENT_STATUSES)})
    created_at = fields.DateTime()
    scored_at = fields.DateTime(allow_none=True)
    result = fields.Nested(TriageResultOut, allow_none=True)
    links = fields.Nested(LinksOut)


def _links(assessment_id: str) -> tuple[str, dict[str, str]]:
    settings = settings_of()
    location = url_for("assessments.Assessment", assessment_id=assessment_id)
    return location, {
        "self": location,
        "report": f"{settings.reporting_base_url}/v1/reports/assessments/{assessment_id}",
    }


def _json_body() -> Any:
    """The parsed JSON body, or a 415/400 problem. Size is capped by MAX_CONTENT_LENGTH (413),
    nesting and the rest by shared/request_input.py."""
    if not request.is_json:
        raise Problem(
            415,
            "Unsupported Media Type",
            "Send the symptom report as 'Content-Type: application/json'.",
        )
    return json_body(request.get_data(cache=True))


@blp.route("")
class Assessments(MethodView):
    @blp.doc(
        requestBody={
            "required": True,
            "content": {"application/json": {"schema": SymptomReportSchema}},
        },
        parameters=[
            IDEMPOTENCY_KEY_HEADER,
        ],
    )
    @blp.response(202, AcceptedOut)
    @blp.alt_response(415, description="The report is not sent as application/json.")
    @blp.alt_response(
        422,
        description="Invalid report: problem+json naming every bad field; or an "
        "Idempotency-Key already used with another body.",
    )
    @require_scope("assessments:write")
    def post(self) -> Any:
        """Submit a symptom report. It is stored at once and scored in the background."""
        key = idempotency_key()
        accepted = accept_assessment(
            writer(),
            sessions(),
            _json_body(),
            tenant_id=g.caller.tenant_id,
            source="api",
            caller_id=g.caller.key_id,
            links=_links,
            idempotency_key=key,
            idempotency_ttl=timedelta(hours=settings_of().idempotency_ttl_hours),
        )
        response = Response(
            json.dumps(accepted.body), status=accepted.status_code, mimetype="application/json"
        )
        if accepted.location:
            response.headers["Location"] = accepted.location
        if accepted.replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return response


@blp.route("/<string:assessment_id>")
class Assessment(MethodView):
    @blp.response(200, AssessmentOut)
    @require_scope("assessments:read")
    def get(self, assessment_id: str) -> Any:
        """An assessment's status and, once scored, its triage result."""
        with sessions()() as session, session.begin():
            assessment = repository.get_assessment(session, g.caller.tenant_id, assessment_id)
            if assessment is None:
                raise Problem(404, "Not Found", "No assessment has this id.")
            result = repository.current_result(session, assessment_id)
            # Status and result only (the report itself needs reports:read); still a read of
            # a patient's triage, so it is audited with the caller.
            audit_caller(
                session,
                "assessment.read",
                assessment_id=assessment_id,
            )
            return {
                "id": assessment.id,
                "status": assessment.status,
                "created_at": assessment.created_at,
                "scored_at": assessment.scored_at,
                "result": result.result if result is not None else None,
                "links": _links(assessment.id)[1],
            }

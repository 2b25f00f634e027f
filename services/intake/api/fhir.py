"""FHIR R4 on intake: the Questionnaire, QuestionnaireResponses in, and each assessment's
QuestionnaireResponse back (RiskAssessment.basis points at it).

Every answer from these routes, errors included, is `application/fhir+json`: resources, or an
OperationOutcome naming each problem. The 202 for an accepted response is the same JSON as
`POST /v1/assessments` (it is not a FHIR resource), so it is `application/json`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, Final

import structlog
from flask import Response, g, json, request, url_for
from werkzeug.exceptions import HTTPException

from services.intake import ehr_integrations
from services.intake.api.assessments import AcceptedOut
from services.intake.commands import Accepted, accept_assessment, fingerprint
from services.intake.fhir_questionnaire import (
    ACCEPTED_STATUSES,
    FHIR_MEDIA_TYPE,
    QUESTIONNAIRE_ID,
    QUESTIONNAIRE_URL,
    QuestionnaireResponseRefused,
    issue,
    issues_from_field_errors,
    operation_outcome,
    outcome_for_error,
    patient_identifier_system,
    questionnaire,
    questionnaire_response_from_report,
    report_from_questionnaire_response,
)
from shared import repository
from shared.auth import require_scope
from shared.group_commit import Row
from shared.openapi import IDEMPOTENCY_KEY_HEADER, fhir_resource_response
from shared.problems import MAX_LISTED_ERRORS, Problem
from shared.request_input import idempotency_key, json_body
from shared.web import ApiBlueprint, audit_caller, sessions, settings_of, writer

log = structlog.get_logger("myotriage.intake.fhir")

blp = ApiBlueprint(
    "fhir",
    __name__,
    url_prefix="/fhir",
    description="FHIR R4: the intake Questionnaire and QuestionnaireResponses "
    "(application/fhir+json; errors are OperationOutcome).",
)


def fhir_response(resource: dict[str, Any], status: int = 200) -> Response:
    """A FHIR resource as `application/fhir+json`."""
    return Response(json.dumps(resource), status=status, mimetype=FHIR_MEDIA_TYPE)


def outcome_response(issues: list[dict[str, Any]], status: int) -> Response:
    """An OperationOutcome naming each problem (up to MAX_LISTED_ERRORS of them), with the
    request id for support."""
    if len(issues) > MAX_LISTED_ERRORS:
        # A 64 KB response of made-up linkIds must not get an answer many times its size.
        unlisted = len(issues) - MAX_LISTED_ERRORS
        issues = [
            *issues[:MAX_LISTED_ERRORS],
            issue(
                "informational", f"{unlisted} more issue(s) are not listed.", severity="information"
            ),
        ]
    outcome = operation_outcome(issues)
    outcome["id"] = getattr(g, "request_id", None) or "unknown"
    return fhir_response(outcome, status)


@blp.errorhandler(Problem)
def _problem_as_outcome(problem: Problem) -> Response:
    # Auth failures, 404s and 415s on FHIR routes speak FHIR too.
    outcome = outcome_for_error(problem.status, problem.title, problem.detail, problem.errors)
    response = outcome_response(outcome["issue"], problem.status)
    for name, value in problem.headers.items():
        response.headers[name] = value
    return response


@blp.errorhandler(HTTPException)
def _http_error_as_outcome(exc: HTTPException) -> Response:
    status = exc.code or 500
    detail = exc.description if status < 500 else None
    return outcome_response(outcome_for_error(status, exc.name, detail)["issue"], status)


def accepted_links(assessment_id: str, *, with_fhir: bool) -> tuple[str, dict[str, str]]:
    """Location and links of an accepted report, as `POST /v1/assessments` gives them."""
    location = url_for("assessments.Assessment", assessment_id=assessment_id)
    links = {
        "self": location,
        "report": f"{settings_of().reporting_base_url}/v1/reports/assessments/{assessment_id}",
    }
    if with_fhir:
        links["questionnaire_response"] = url_for(
            "fhir.read_questionnaire_response", assessment_id=assessment_id
        )
    return location, links


def accepted_response(accepted: Accepted) -> Response:
    """The 202 (or its replay) with Location, like `POST /v1/assessments`."""
    response = Response(
        json.dumps(accepted.body), status=accepted.status_code, mimetype="application/json"
    )
    if accepted.location:
        response.headers["Location"] = accepted.location
    if accepted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def keep_original(resource: dict[str, Any]) -> Callable[[str], list[Row]]:
    """An `extra_rows` hook storing the QuestionnaireResponse with the assessment it made."""

    def rows(assessment_id: str) -> list[Row]:
        return [ehr_integrations.questionnaire_response_row(assessment_id, resource)]

    return rows


def accept_questionnaire_response(
    resource: Any,
    *,
    tenant_id: str,
    source: str,
    caller_id: str,
    idempotency_key: str | None,
) -> Accepted:
    """Map a QuestionnaireResponse to a v1 report and accept it, keeping the original.

    Raises QuestionnaireResponseRefused with OperationOutcome issues for anything that does
    not fit, including the v1 contract's own range checks after mapping."""
    report = report_from_questionnaire_response(resource)
    try:
        return accept_assessment(
            writer(),
            sessions(),
            report,
            tenant_id=tenant_id,
            source=source,
            caller_id=caller_id,
            patient_system=patient_identifier_system(resource),
            links=lambda assessment_id: accepted_links(assessment_id, with_fhir=True),
            idempotency_key=idempotency_key,
            idempotency_ttl=timedelta(hours=settings_of().idempotency_ttl_hours),
            request_fingerprint=fingerprint(resource),
            extra_rows=keep_original(resource),
        )
    except Problem as problem:
        if problem.status == 422 and problem.problem_type == "validation-error":
            issues = issues_from_field_errors(problem.errors or [])
            raise QuestionnaireResponseRefused(422, issues) from None
        raise


# What the OpenAPI can say of a QuestionnaireResponse; the Questionnaire says the rest.
QUESTIONNAIRE_RESPONSE_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["resourceType", "status", "questionnaire", "item"],
    "properties": {
        "resourceType": {"type": "string", "enum": ["QuestionnaireResponse"]},
        "status": {"type": "string", "enum": sorted(ACCEPTED_STATUSES)},
        "questionnaire": {
            "type": "string",
            "pattern": "^" + QUESTIONNAIRE_URL.replace(".", "\\.") + "([|].*)?$",
        },
        "subject": {"type": "object", "description": "Patient/<your patient id>."},
        "item": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["linkId"],
                "properties": {"linkId": {"type": "string"}},
            },
        },
    },
}
QUESTIONNAIRE_RESPONSE_BODY: Final[dict[str, Any]] = {
    "required": True,
    "description": f"A completed QuestionnaireResponse answering Questionnaire/{QUESTIONNAIRE_ID}"
    " (GET it for the items): each answer is checked against its item, then the report it "
    "makes against the v1 contract.",
    "content": {
        media_type: {"schema": QUESTIONNAIRE_RESPONSE_SCHEMA}
        for media_type in (FHIR_MEDIA_TYPE, "application/json")
    },
}


def _fhir_json_body() -> Any:
    if not request.is_json:
        raise Problem(
            415,
            "Unsupported Media Type",
            "Send the resource as 'Content-Type: application/fhir+json' (or application/json).",
        )
    return json_body(request.get_data(cache=True))


@blp.get(f"/Questionnaire/{QUESTIONNAIRE_ID}")
@blp.doc(responses={"200": fhir_resource_response("The Questionnaire.")})
def read_questionnaire() -> Response:
    """The intake questions as a FHIR R4 Questionnaire (public: it holds no patient data)."""
    return fhir_response(questionnaire())


@blp.get("/Questionnaire/<string:questionnaire_id>")
def read_other_questionnaire(questionnaire_id: str) -> Response:
    """Any other Questionnaire id: not here."""
    return outcome_response(
        [issue("not-found", f"Only Questionnaire/{QUESTIONNAIRE_ID} is published here.")], 404
    )


@blp.get("/Questionnaire")
@blp.doc(
    parameters=[
        {
            "in": "query",
            "name": "url",
            "required": False,
            "schema": {"type": "string"},
            "description": "The Questionnaire's canonical URL, optionally with '|version'.",
        }
    ],
    responses={"200": fhir_resource_response("A searchset Bundle with 0 or 1 entries.")},
)
def search_questionnaires() -> Response:
    """Search by `url` (optionally `|version`): a searchset Bundle with 0 or 1 entries."""
    wanted = request.args.get("url")
    matches = wanted is None or wanted.split("|", 1)[0] == QUESTIONNAIRE_URL
    entries = (
        [
            {
                "fullUrl": url_for("fhir.read_questionnaire", _external=True),
                "resource": questionnaire(),
                "search": {"mode": "match"},
            }
        ]
        if matches
        else []
    )
    return fhir_response(
        {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}
    )


@blp.post("/QuestionnaireResponse")
@blp.doc(requestBody=QUESTIONNAIRE_RESPONSE_BODY, parameters=[IDEMPOTENCY_KEY_HEADER])
@blp.alt_response(
    202, schema=AcceptedOut, success=True, description="Accepted, as POST /v1/assessments."
)
@blp.alt_response(415, description="The body is not sent as application/fhir+json or JSON.")
@blp.alt_response(
    422,
    description="Answers that do not fit the Questionnaire or the v1 contract: an "
    "OperationOutcome naming each item.",
)
@require_scope("assessments:write")
def create_questionnaire_response() -> Response:
    """Submit a completed QuestionnaireResponse for the intake Questionnaire. 202 with the
    assessment's links (as `POST /v1/assessments`), or an OperationOutcome (400/422)."""
    key = idempotency_key()
    try:
        accepted = accept_questionnaire_response(
            _fhir_json_body(),
            tenant_id=g.caller.tenant_id,
            source="fhir",
            caller_id=g.caller.key_id,
            idempotency_key=key,
        )
    except QuestionnaireResponseRefused as refused:
        log.info("fhir.questionnaire_response_refused", status=refused.status)
        return outcome_response(refused.issues, refused.status)
    return accepted_response(accepted)


@blp.get("/QuestionnaireResponse/<string:assessment_id>")
@blp.doc(responses={"200": fhir_resource_response("The assessment's QuestionnaireResponse.")})
@require_scope("assessments:read")
def read_questionnaire_response(assessment_id: str) -> Response:
    """An assessment's answers as a QuestionnaireResponse: the EHR's original if it came in as
    FHIR, otherwise one made from the v1 report."""
    with sessions()() as session, session.begin():
        assessment = repository.get_assessment(session, g.caller.tenant_id, assessment_id)
        if assessment is None:
            raise Problem(404, "Not Found", "No assessment has this id.")
        resource = ehr_integrations.stored_questionnaire_response(session, assessment_id)
        if resource is None:
            resource = questionnaire_response_from_report(
                assessment.report,
                response_id=assessment_id,
                authored=ehr_integrations.as_utc(assessment.created_at),
            )
        # Our id for it is the assessment's, whatever id the sender gave it.
        resource["id"] = assessment_id
        audit_caller(
            session,
            "fhir.questionnaire_response.read",
            assessment_id=assessment_id,
        )
    return fhir_response(resource)

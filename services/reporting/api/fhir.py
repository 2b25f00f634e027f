"""FHIR R4 read and search of results: `RiskAssessment` and `DetectedIssue` (application/fhir+json).

- `GET /fhir/RiskAssessment/<assessment id>`
- `GET /fhir/RiskAssessment?subject=Patient/<id>` (also `patient=`) → searchset Bundle
- `GET /fhir/DetectedIssue/<assessment id>-<n>`
- `GET /fhir/DetectedIssue?assessment=<id>` (also `implicated=QuestionnaireResponse/<id>`,
  `patient=Patient/<id>`) → searchset Bundle

Callers authenticate with an API key carrying `reports:read`; every read is audited. Errors are
`OperationOutcome`s, never problem+json.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Blueprint, Flask, Response, g, json, request
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException

from shared import repository
from shared.auth import require_scope
from shared.fhir_results import (
    FHIR_MEDIA_TYPE,
    ScoredAssessment,
    detected_issue,
    detected_issues,
    operation_outcome,
    parse_detected_issue_id,
    risk_assessment,
    searchset,
)
from shared.problems import Problem
from shared.web import audit_caller, sessions, settings_of

blp = Blueprint("fhir", __name__, url_prefix="/fhir")

DEFAULT_COUNT = 50
MAX_COUNT = 200
# OperationOutcome issue codes for the HTTP statuses we answer with.
ISSUE_CODE = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
}


def register_fhir(app: Flask) -> None:
    """Add the FHIR result routes to the reporting app."""
    app.register_blueprint(blp)


@blp.errorhandler(Problem)
def _problem(exc: Problem) -> Response:
    response = fhir_response(
        operation_outcome(ISSUE_CODE.get(exc.status, "processing"), exc.detail or exc.title),
        exc.status,
    )
    for name, value in exc.headers.items():
        response.headers[name] = value
    return response


@blp.errorhandler(HTTPException)
def _http(exc: HTTPException) -> Response:
    status = exc.code or 500
    detail = (exc.description or exc.name) if status < 500 else "The error was logged."
    return fhir_response(operation_outcome(ISSUE_CODE.get(status, "exception"), detail), status)


def fhir_response(resource: dict[str, Any], status: int = 200) -> Response:
    """`resource` as application/fhir+json."""
    return Response(json.dumps(resource), status=status, mimetype=FHIR_MEDIA_TYPE)


def _audited(action: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Protect a FHIR view with `reports:read`; the view returns (resource, assessment ids)."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Response:
            with sessions()() as session:
                resource, assessment_ids = view(session, *args, **kwargs)
                for assessment_id in assessment_ids or [None]:
                    audit_caller(
                        session,
                        action,
                        assessment_id=assessment_id,
                    )
                session.commit()
            return fhir_response(resource)

        return require_scope("reports:read")(wrapper)

    return decorate


@blp.get("/RiskAssessment/<string:assessment_id>")
@_audited("fhir.risk_assessment.read")
def read_risk_assessment(session: Session, assessment_id: str) -> tuple[dict[str, Any], list[str]]:
    """The current result of one assessment as a RiskAssessment."""
    scored = _scored(session, assessment_id)
    if scored is None:
        raise Problem(404, "Not Found", f"RiskAssessment/{assessment_id} is not known.")
    return risk_assessment(scored, _base()), [assessment_id]


@blp.get("/RiskAssessment")
@_audited("fhir.risk_assessment.search")
def search_risk_assessments(session: Session) -> tuple[dict[str, Any], list[str]]:
    """RiskAssessments of one patient, newest first."""
    patient_ref = _patient_param("subject") or _patient_param("patient")
    if patient_ref is None:
        raise Problem(400, "Bad Request", "Search by 'subject' or 'patient' (Patient/<id>).")
    found = _scored_for_patient(session, patient_ref, _count())
    resources = [risk_assessment(s, _base()) for s in found]
    return searchset(resources, _base(), _self_url()), [s.assessment_id for s in found]


@blp.get("/DetectedIssue/<string:issue_id>")
@_audited("fhir.detected_issue.read")
def read_detected_issue(session: Session, issue_id: str) -> tuple[dict[str, Any], list[str]]:
    """One red flag of an assessment's current result."""
    parsed = parse_detected_issue_id(issue_id)
    scored = _scored(session, parsed[0]) if parsed else None
    if parsed is None or scored is None or parsed[1] >= len(scored.result.get("red_flags", [])):
        raise Problem(404, "Not Found", f"DetectedIssue/{issue_id} is not known.")
    return detected_issue(scored, parsed[1], _base()), [scored.assessment_id]


@blp.get("/DetectedIssue")
@_audited("fhir.detected_issue.search")
def search_detected_issues(session: Session) -> tuple[dict[str, Any], list[str]]:
    """The red flags of one assessment (`assessment`, `implicated`) or of one patient."""
    assessment_id = request.args.get("assessment") or _implicated()
    if assessment_id:
        scored = _scored(session, assessment_id)
        found = [scored] if scored is not None else []
    else:
        patient_ref = _patient_param("patient")
        if patient_ref is None:
            raise Problem(
                400,
                "Bad Request",
                "Search by 'assessment', 'implicated' (QuestionnaireResponse/<id>) or 'patient'.",
            )
        found = _scored_for_patient(session, patient_ref, _count())
    resources = [issue for s in found for issue in detected_issues(s, _base())]
    return searchset(resources, _base(), _self_url()), [s.assessment_id for s in found]


@blp.route("/<path:rest>", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
def unsupported(rest: str) -> Response:
    """Any other FHIR interaction: an OperationOutcome rather than a problem+json."""
    raise Problem(404, "Not Found", f"This server has no FHIR endpoint at /fhir/{rest}.")


# ---- Queries ----------------------------------------------------------------------------------


def _scored(session: Session, assessment_id: str) -> ScoredAssessment | None:
    """The caller's tenant's scored assessment, or None (another tenant's is not found)."""
    found = repository.scored_assessment(session, g.caller.tenant_id, assessment_id)
    if found is None:
        return None
    amended = repository.result_count(session, assessment_id) > 1
    return ScoredAssessment.from_rows(found[0], found[1], amended=amended)


def _scored_for_patient(session: Session, patient_ref: str, limit: int) -> list[ScoredAssessment]:
    rows = repository.scored_for_patient(session, g.caller.tenant_id, patient_ref, limit=limit)
    return [ScoredAssessment.from_rows(a, r) for a, r in rows]


# ---- Parameters -------------------------------------------------------------------------------


def _patient_param(name: str) -> str | None:
    value = request.args.get(name)
    if not value:
        return None
    # Accept "Patient/<id>", a bare id, or an absolute reference ending in Patient/<id>.
    if "Patient/" in value:
        value = value.rsplit("Patient/", 1)[1]
    return value[:64] or None


def _implicated() -> str | None:
    value = request.args.get("implicated", "")
    prefix = "QuestionnaireResponse/"
    return value.rsplit(prefix, 1)[1] if prefix in value else None


def _count() -> int:
    raw = request.args.get("_count", "")
    if not raw:
        return DEFAULT_COUNT
    # isdigit() alone admits '²', which int() refuses; the length keeps int() quick.
    if len(raw) > 9 or not raw.isascii() or not raw.isdigit() or int(raw) < 1:
        raise Problem(400, "Bad Request", "'_count' must be a positive integer.")
    return min(int(raw), MAX_COUNT)


def _base() -> str:
    return settings_of().reporting_base_url.rstrip("/")


def _self_url() -> str:
    query = request.query_string.decode("utf-8", "replace")
    return f"{_base()}{request.path}" + (f"?{query}" if query else "")

"""FHIR reads and searches of results, parsed back with `fhir.resources` (R4B)."""

from __future__ import annotations

import functools
import uuid
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.detectedissue import DetectedIssue
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.riskassessment import RiskAssessment
from sqlalchemy import select

from services.rules.engine import load_ruleset
from services.rules.scoring import score_assessment
from shared.db import transaction
from shared.models import DEFAULT_TENANT_ID, Assessment, AuditEvent
from tests.factories import DOMS, STROKE, report

FHIR_JSON = "application/fhir+json"


@functools.cache
def _ruleset() -> Any:
    return load_ruleset()


def scored(sessions: Any, body: dict[str, Any], patient_id: str) -> str:
    body = {**body, "patient": {**body["patient"], "id": patient_id}}
    with transaction(sessions) as session:
        assessment = Assessment(
            tenant_id=DEFAULT_TENANT_ID,
            report=body,
            patient_ref=patient_id,
            source="api",
            status="queued",
        )
        session.add(assessment)
    assert score_assessment(sessions, _ruleset(), assessment.id).outcome == "scored"
    return assessment.id


@pytest.fixture
def patient() -> str:
    return f"PT-{uuid.uuid4().hex[:12]}"


def test_read_a_risk_assessment(reporting: Any, auth: Any, sessions: Any, patient: str) -> None:
    assessment_id = scored(sessions, report(STROKE), patient)
    response = reporting.get(f"/fhir/RiskAssessment/{assessment_id}", headers=auth)
    assert response.status_code == 200 and response.mimetype == FHIR_JSON
    resource = RiskAssessment.model_validate(response.get_json())
    assert resource.id == assessment_id
    assert resource.subject.reference == f"Patient/{patient}"
    assert resource.basis[0].reference == f"QuestionnaireResponse/{assessment_id}"
    assert resource.prediction[0].qualitativeRisk.coding[0].code == "high"
    with sessions() as session:
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.assessment_id == assessment_id)
        ).all()
        assert actions == ["fhir.risk_assessment.read"]


def test_search_risk_assessments_by_subject(
    reporting: Any, auth: Any, sessions: Any, patient: str
) -> None:
    first = scored(sessions, report(DOMS), patient)
    second = scored(sessions, report(STROKE), patient)
    scored(sessions, report(STROKE), f"{patient}-someone-else")
    response = reporting.get(f"/fhir/RiskAssessment?subject=Patient/{patient}", headers=auth)
    assert response.status_code == 200 and response.mimetype == FHIR_JSON
    bundle = Bundle.model_validate(response.get_json())
    assert bundle.type == "searchset" and bundle.total == 2
    assert [e.resource.id for e in bundle.entry] == [second, first]  # newest first
    assert bundle.entry[0].fullUrl == f"http://reporting.test/fhir/RiskAssessment/{second}"
    by_patient = reporting.get(f"/fhir/RiskAssessment?patient={patient}", headers=auth)
    assert by_patient.get_json()["total"] == 2


def test_detected_issues_of_an_assessment(
    reporting: Any, auth: Any, sessions: Any, patient: str
) -> None:
    assessment_id = scored(sessions, report(STROKE), patient)
    response = reporting.get(f"/fhir/DetectedIssue?assessment={assessment_id}", headers=auth)
    bundle = Bundle.model_validate(response.get_json())
    issues = [e.resource for e in bundle.entry]
    assert issues and all(i.get_resource_type() == "DetectedIssue" for i in issues)
    stroke = next(i for i in issues if i.code.coding[0].code == "RF_STROKE_FAST")
    assert stroke.severity == "high" and "Source:" in stroke.detail
    implicated = reporting.get(
        f"/fhir/DetectedIssue?implicated=QuestionnaireResponse/{assessment_id}", headers=auth
    )
    assert implicated.get_json()["total"] == len(issues)
    one = reporting.get(f"/fhir/DetectedIssue/{stroke.id}", headers=auth)
    assert DetectedIssue.model_validate(one.get_json()).code.coding[0].code == "RF_STROKE_FAST"


def test_a_self_care_result_has_no_detected_issues(
    reporting: Any, auth: Any, sessions: Any, patient: str
) -> None:
    assessment_id = scored(sessions, report(DOMS), patient)
    bundle = reporting.get(f"/fhir/DetectedIssue?assessment={assessment_id}", headers=auth)
    assert bundle.get_json()["total"] == 0


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/RiskAssessment/00000000-0000-4000-8000-000000000000",
        "/fhir/DetectedIssue/00000000-0000-4000-8000-000000000000-0",
        "/fhir/DetectedIssue/not-an-issue-id",
        "/fhir/Observation/1",
    ],
)
def test_unknown_resources_are_404_operation_outcomes(reporting: Any, auth: Any, path: str) -> None:
    response = reporting.get(path, headers=auth)
    assert response.status_code == 404 and response.mimetype == FHIR_JSON
    outcome = OperationOutcome.model_validate(response.get_json())
    assert outcome.issue[0].code == "not-found" and outcome.issue[0].severity == "error"


def test_errors_are_operation_outcomes_not_problem_json(
    reporting: Any, auth: Any, make_key: Any
) -> None:
    no_params = reporting.get("/fhir/RiskAssessment", headers=auth)
    assert no_params.status_code == 400 and no_params.mimetype == FHIR_JSON
    assert OperationOutcome.model_validate(no_params.get_json()).issue[0].code == "invalid"
    anonymous = reporting.get("/fhir/RiskAssessment?subject=Patient/x")
    assert anonymous.status_code == 401 and anonymous.mimetype == FHIR_JSON
    assert anonymous.get_json()["issue"][0]["code"] == "login"
    writer = {"Authorization": f"Bearer {make_key('assessments:write')}"}
    forbidden = reporting.get("/fhir/RiskAssessment?subject=Patient/x", headers=writer)
    assert forbidden.status_code == 403 and forbidden.get_json()["issue"][0]["code"] == "forbidden"


def test_fhir_routes_answer_cors_preflights(reporting: Any) -> None:
    response = reporting.options(
        "/fhir/RiskAssessment",
        headers={
            "Origin": "https://smart-app.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert response.status_code == 200
    assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()

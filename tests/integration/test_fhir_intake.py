"""FHIR on intake, on a real database: the Questionnaire, QuestionnaireResponses in (API key),
and each assessment's QuestionnaireResponse back. Resources come from fhir.resources."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.questionnaire import Questionnaire
from fhir.resources.R4B.questionnaireresponse import (
    QuestionnaireResponse,
    QuestionnaireResponseItem,
    QuestionnaireResponseItemAnswer,
)
from fhir.resources.R4B.reference import Reference
from sqlalchemy import func, select

from services.intake.fhir_questionnaire import CODE_SYSTEM_BASE, QUESTIONNAIRE_URL
from shared.models import Assessment, AuditEvent
from tests.factories import WITH_MEDICATION_CHANGES, report

FHIR = "application/fhir+json"
QUESTIONNAIRE_PATH = "/fhir/Questionnaire/myotriage-symptom-report-v1"


def answer(link_id: str, **value: Any) -> QuestionnaireResponseItem:
    return QuestionnaireResponseItem(
        linkId=link_id, answer=[QuestionnaireResponseItemAnswer(**value)]
    )


def coded(field: str, code: str) -> dict[str, Any]:
    return {"valueCoding": Coding(system=CODE_SYSTEM_BASE + field, code=code)}


def medication_change(name: str, change: str, days_ago: float) -> QuestionnaireResponseItem:
    """One repetition of the medication_changes group (contract v1.1)."""
    return QuestionnaireResponseItem(
        linkId="medication_changes",
        item=[
            answer("medication_changes.name", valueString=name),
            answer("medication_changes.change", **coded("change", change)),
            answer("medication_changes.days_ago", valueDecimal=days_ago),
        ],
    )


def questionnaire_response(*extra: QuestionnaireResponseItem, age: int = 44) -> str:
    """A completed response from an EHR form, grouped like the Questionnaire."""
    resource = QuestionnaireResponse(
        status="completed",
        questionnaire=f"{QUESTIONNAIRE_URL}|1.0.0",
        subject=Reference(identifier=Identifier(system="urn:oid:1.2.3", value="MRN-FHIR-9")),
        source=Reference(reference="Patient/pat-9"),
        authored="2026-11-21T08:00:00Z",
        item=[
            QuestionnaireResponseItem(
                linkId="patient",
                item=[
                    answer("patient.age", valueInteger=age),
                    answer("patient.sex", **coded("sex", "male")),
                ],
            ),
            answer("complaints", **coded("complaints", "weakness")),
            answer("onset_days", valueDecimal=0.5),
            answer("course", **coded("course", "rapidly_worsening")),
            QuestionnaireResponseItem(
                linkId="findings",
                item=[
                    answer("findings.ascending_weakness", valueBoolean=True),
                    answer("findings.breathless_at_rest", valueBoolean=False),
                ],
            ),
            *extra,
        ],
    )
    return resource.model_dump_json()


def post(intake: Any, body: str, headers: dict[str, str], content_type: str = FHIR) -> Any:
    return intake.post(
        "/fhir/QuestionnaireResponse", data=body, content_type=content_type, headers=headers
    )


def assessments(sessions: Any) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Assessment)) or 0)


def test_questionnaire_is_public_fhir_json_and_valid(intake: Any) -> None:
    response = intake.get(QUESTIONNAIRE_PATH)
    assert response.status_code == 200 and response.mimetype == FHIR
    resource = Questionnaire.model_validate(response.get_json())
    assert resource.url == QUESTIONNAIRE_URL
    found = intake.get("/fhir/Questionnaire", query_string={"url": QUESTIONNAIRE_URL})
    bundle = Bundle.model_validate(found.get_json())
    assert bundle.total == 1 and bundle.entry[0].resource.id == resource.id
    none = intake.get("/fhir/Questionnaire", query_string={"url": "http://example.org/x"})
    assert none.get_json()["total"] == 0
    missing = intake.get("/fhir/Questionnaire/phq-9")
    assert missing.status_code == 404 and missing.mimetype == FHIR
    OperationOutcome.model_validate(missing.get_json())


def test_response_is_accepted_mapped_and_given_back_as_sent(
    intake: Any, auth: dict[str, str], sessions: Any
) -> None:
    sent = questionnaire_response()
    response = post(intake, sent, auth)
    assert response.status_code == 202, response.get_data(as_text=True)
    body = response.get_json()
    assert response.headers["Location"] == f"/v1/assessments/{body['id']}"
    assert body["links"]["questionnaire_response"] == f"/fhir/QuestionnaireResponse/{body['id']}"
    with sessions() as session:
        stored = session.get(Assessment, body["id"])
        assert stored.source == "fhir"
        assert stored.report["patient"] == {
            "id": "MRN-FHIR-9",
            "age": 44,
            "sex": "male",
            "pregnant": False,
        }
        assert stored.report["course"] == "rapidly_worsening"
        # Unanswered findings stay unknown; "no" stays no.
        assert stored.report["findings"] == {
            "ascending_weakness": True,
            "breathless_at_rest": False,
        }
    back = intake.get(body["links"]["questionnaire_response"], headers=auth)
    assert back.status_code == 200 and back.mimetype == FHIR
    resource = back.get_json()
    QuestionnaireResponse.model_validate(resource)
    assert resource["id"] == body["id"]
    assert resource["item"] == json.loads(sent)["item"]
    assert resource["subject"] == json.loads(sent)["subject"]


def test_medication_changes_groups_are_accepted_and_stored_as_entries(
    intake: Any, auth: dict[str, str], sessions: Any
) -> None:
    sent = questionnaire_response(
        medication_change("atorvastatin 40 mg", "dose_increased", 14),
        medication_change("prednisolone", "stopped", 0.5),
    )
    response = post(intake, sent, auth)
    assert response.status_code == 202, response.get_data(as_text=True)
    body = response.get_json()
    with sessions() as session:
        stored = session.get(Assessment, body["id"])
        assert stored.report["medication_changes"] == [
            {"name": "atorvastatin 40 mg", "change": "dose_increased", "days_ago": 14},
            {"name": "prednisolone", "change": "stopped", "days_ago": 0.5},
        ]
    back = intake.get(body["links"]["questionnaire_response"], headers=auth).get_json()
    assert back["item"] == json.loads(sent)["item"]


def test_a_v1_report_with_medication_changes_reads_back_as_repeated_groups(
    intake: Any, auth: dict[str, str]
) -> None:
    accepted = intake.post(
        "/v1/assessments", json=report(WITH_MEDICATION_CHANGES), headers=auth
    ).get_json()
    resource = intake.get(f"/fhir/QuestionnaireResponse/{accepted['id']}", headers=auth)
    QuestionnaireResponse.model_validate(resource.get_json())
    groups = [i for i in resource.get_json()["item"] if i["linkId"] == "medication_changes"]
    assert len(groups) == len(WITH_MEDICATION_CHANGES["medication_changes"])
    assert [i["linkId"] for i in groups[0]["item"]] == [
        "medication_changes.name",
        "medication_changes.change",
        "medication_changes.days_ago",
    ]
    assert groups[0]["item"][0]["answer"] == [{"valueString": "atorvastatin"}]


def test_plain_json_content_type_is_accepted_too(intake: Any, auth: dict[str, str]) -> None:
    response = post(intake, questionnaire_response(), auth, content_type="application/json")
    assert response.status_code == 202


@pytest.mark.parametrize(
    ("body", "status", "expression"),
    [
        # An answer of the wrong type for its item.
        (
            questionnaire_response(answer("pain_level", valueDecimal=3.5)),
            422,
            "pain_level",
        ),
        # A linkId the Questionnaire does not have.
        (
            questionnaire_response(answer("findings.third_eye", valueBoolean=True)),
            422,
            "findings.third_eye",
        ),
        # The v1 contract's own range check, after mapping.
        (questionnaire_response(age=12), 422, "patient.age"),
        (
            questionnaire_response(medication_change("atorvastatin", "started", 36501)),
            422,
            "medication_changes.days_ago",
        ),
        # A code the medication_changes.change item does not offer.
        (
            questionnaire_response(medication_change("atorvastatin", "increased", 3)),
            422,
            "medication_changes.change",
        ),
        # Not valid FHIR: fhir.resources would let "yes" through as a boolean.
        (
            questionnaire_response(answer("sudden_onset", valueBoolean=True)).replace(
                '"valueBoolean":true}]}]', '"valueBoolean":"yes"}]}]'
            ),
            400,
            "sudden_onset",
        ),
    ],
    ids=[
        "wrong-type",
        "unknown-linkid",
        "out-of-range",
        "medication-change-out-of-range",
        "medication-change-unknown-code",
        "not-fhir",
    ],
)
def test_bad_responses_get_an_operation_outcome_and_store_nothing(
    intake: Any, auth: dict[str, str], sessions: Any, body: str, status: int, expression: str
) -> None:
    before = assessments(sessions)
    response = post(intake, body, auth)
    assert response.status_code == status
    assert response.mimetype == FHIR
    outcome = OperationOutcome.model_validate(response.get_json())
    assert [i.expression for i in outcome.issue] == [[expression]]
    assert assessments(sessions) == before


def test_errors_on_fhir_routes_are_operation_outcomes(
    intake: Any, auth: dict[str, str], make_key: Any
) -> None:
    no_key = post(intake, questionnaire_response(), {})
    assert no_key.status_code == 401 and no_key.mimetype == FHIR
    assert no_key.get_json()["issue"][0]["code"] == "login"
    text = post(intake, questionnaire_response(), auth, content_type="text/plain")
    assert text.status_code == 415 and text.mimetype == FHIR
    broken = post(intake, "{not json", auth)
    assert broken.status_code == 400 and broken.mimetype == FHIR
    writer = {"Authorization": f"Bearer {make_key('assessments:write')}"}
    accepted = post(intake, questionnaire_response(), writer).get_json()
    forbidden = intake.get(accepted["links"]["questionnaire_response"], headers=writer)
    assert forbidden.status_code == 403 and forbidden.mimetype == FHIR
    unknown = intake.get("/fhir/QuestionnaireResponse/no-such-assessment", headers=auth)
    assert unknown.status_code == 404 and unknown.mimetype == FHIR
    OperationOutcome.model_validate(unknown.get_json())


def test_a_v1_report_reads_back_as_a_questionnaire_response(
    intake: Any, auth: dict[str, str], sessions: Any
) -> None:
    accepted = intake.post("/v1/assessments", json=report(), headers=auth).get_json()
    response = intake.get(f"/fhir/QuestionnaireResponse/{accepted['id']}", headers=auth)
    assert response.status_code == 200 and response.mimetype == FHIR
    resource = QuestionnaireResponse.model_validate(response.get_json())
    assert resource.id == accepted["id"] and resource.questionnaire == QUESTIONNAIRE_URL
    findings = next(item for item in resource.item if item.linkId == "findings")
    answered = {item.linkId: item.answer[0].valueBoolean for item in findings.item}
    # Exactly the findings the report has: nothing unasked becomes "no".
    assert answered == {f"findings.{k}": v for k, v in report()["findings"].items()}
    with sessions() as session:
        reads = session.scalars(
            select(AuditEvent).where(
                AuditEvent.assessment_id == accepted["id"],
                AuditEvent.action == "fhir.questionnaire_response.read",
            )
        ).all()
    assert len(reads) == 1

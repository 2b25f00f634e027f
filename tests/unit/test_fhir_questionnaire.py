"""The intake Questionnaire and the QuestionnaireResponse ↔ v1 mapping, without a server.

Resources are checked with fhir.resources (R4B), a FHIR implementation nobody here wrote.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
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

from services.intake.commands import validate_report
from services.intake.fhir_questionnaire import (
    CODE_SYSTEM_BASE,
    QUESTIONNAIRE_URL,
    QuestionnaireResponseRefused,
    issues_from_field_errors,
    operation_outcome,
    questionnaire,
    questionnaire_response_from_report,
    report_from_questionnaire_response,
)
from shared.problems import Problem
from shared.schemas.symptom_report import PatientSchema, SymptomReportSchema
from shared.vocabulary import FINDING_CODES
from tests.factories import DOMS, STROKE, report


def coding(field: str, code: str) -> dict[str, Any]:
    return {"valueCoding": Coding(system=CODE_SYSTEM_BASE + field, code=code)}


def response(
    answers: dict[str, list[dict[str, Any]]],
    *,
    patient: str | None = "MRN-FHIR-1",
    status: str = "completed",
) -> dict[str, Any]:
    """A QuestionnaireResponse built with fhir.resources, as JSON (flat items, one per linkId)."""
    resource = QuestionnaireResponse(
        status=status,
        questionnaire=QUESTIONNAIRE_URL,
        subject=Reference(identifier=Identifier(value=patient)) if patient else None,
        authored="2026-11-20T09:30:00+00:00",
        item=[
            QuestionnaireResponseItem(
                linkId=link_id, answer=[QuestionnaireResponseItemAnswer(**a) for a in values]
            )
            for link_id, values in answers.items()
        ],
    )
    return json.loads(resource.model_dump_json())


MINIMAL = {
    "patient.age": [{"valueInteger": 58}],
    "complaints": [coding("complaints", "weakness"), coding("complaints", "twitching")],
    "onset_days": [{"valueDecimal": 120.5}],
    "course": [coding("course", "worsening")],
}


def refusal(resource: Any) -> QuestionnaireResponseRefused:
    with pytest.raises(QuestionnaireResponseRefused) as caught:
        report_from_questionnaire_response(resource)
    OperationOutcome.model_validate(operation_outcome(caught.value.issues))
    return caught.value


def expressions(refused: QuestionnaireResponseRefused) -> dict[str, str]:
    return {i["expression"][0]: i["code"] for i in refused.issues if "expression" in i}


# ---- The Questionnaire ------------------------------------------------------------------------


def all_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for item in items:
        out.append(item)
        out.extend(all_items(item.get("item", [])))
    return out


def test_questionnaire_is_valid_r4_with_an_item_per_contract_field_and_finding() -> None:
    resource = questionnaire()
    Questionnaire.model_validate(resource)
    items = {item["linkId"]: item for item in all_items(resource["item"])}
    assert len(items) == len(all_items(resource["item"])), "linkIds must be unique"
    fields = set(SymptomReportSchema().fields) | {f"patient.{n}" for n in PatientSchema().fields}
    findings = {f"findings.{code}" for code in FINDING_CODES}
    assert set(items) == fields | findings
    assert items["findings"]["type"] == "group"
    assert {items[f]["type"] for f in findings} == {"boolean"}
    assert items["complaints"]["type"] == "choice" and items["complaints"]["repeats"] is True
    assert items["onset_days"]["type"] == "decimal" and items["onset_days"]["required"] is True
    assert items["patient.age"]["type"] == "integer"
    assert items["free_text"]["type"] == "text" and items["free_text"]["maxLength"] == 4000
    assert items["medications"]["type"] == "string" and items["medications"]["repeats"] is True
    assert [o["valueCoding"]["code"] for o in items["course"]["answerOption"]] == [
        "improving",
        "unchanged",
        "worsening",
        "rapidly_worsening",
    ]


@pytest.mark.parametrize(
    ("link_id", "snomed"),
    [
        ("findings.twitching", "82470000"),
        ("findings.cramps", "55300003"),
        ("findings.weak_grip", "26544005"),
        ("findings.breathless_at_rest", "267036007"),
        ("findings.breathless_lying_flat", "62744007"),
        ("findings.swallowing_difficulty", "40739000"),
        ("findings.droopy_eyelids", "11934000"),
        ("findings.double_vision", "24982008"),
        ("findings.speech_difficulty", "8011004"),
        ("findings.dark_urine", "48165008"),
        ("fatigue_level", "84229001"),
    ],
)
def test_items_carry_the_snomed_codes_from_interop(link_id: str, snomed: str) -> None:
    items = {item["linkId"]: item for item in all_items(questionnaire()["item"])}
    assert {"system": "http://snomed.info/sct", "code": snomed} in [
        {"system": c["system"], "code": c["code"]} for c in items[link_id]["code"]
    ]


# ---- QuestionnaireResponse → v1 ---------------------------------------------------------------


def test_a_minimal_response_maps_to_a_valid_v1_report() -> None:
    mapped = report_from_questionnaire_response(response(MINIMAL))
    assert mapped == {
        "patient": {"id": "MRN-FHIR-1", "age": 58},
        "complaints": ["weakness", "twitching"],
        "onset_days": 120.5,
        "course": "worsening",
    }
    validate_report(mapped)


def test_unanswered_finding_is_unknown_and_false_is_no() -> None:
    answers = {
        **MINIMAL,
        "findings.breathless_at_rest": [{"valueBoolean": False}],
        "findings.twitching": [{"valueBoolean": True}],
    }
    findings = report_from_questionnaire_response(response(answers))["findings"]
    # Only what was asked: absence means "not asked", never "no".
    assert findings == {"breathless_at_rest": False, "twitching": True}


@pytest.mark.parametrize("base", [report(), STROKE, DOMS], ids=["contract", "stroke", "doms"])
def test_v1_report_to_response_and_back_is_lossless(base: dict[str, Any]) -> None:
    loaded = validate_report(base)
    resource = questionnaire_response_from_report(loaded, response_id="a1")
    QuestionnaireResponse.model_validate(resource)
    assert validate_report(report_from_questionnaire_response(resource)) == loaded


def test_patient_comes_from_subject_reference_when_not_answered() -> None:
    resource = response(MINIMAL, patient=None)
    resource["subject"] = {"reference": "Patient/pat-77"}
    assert report_from_questionnaire_response(resource)["patient"]["id"] == "pat-77"


def test_status_amended_is_accepted_in_progress_is_not() -> None:
    assert report_from_questionnaire_response(response(MINIMAL, status="amended"))
    refused = refusal(response(MINIMAL, status="in-progress"))
    assert refused.status == 422
    assert expressions(refused) == {"QuestionnaireResponse.status": "business-rule"}


def test_unknown_linkid_wrong_type_and_missing_items_are_each_named() -> None:
    answers = {
        "patient.age": [{"valueString": "58"}],
        "complaints": [coding("complaints", "hiccups")],
        "findings.third_eye": [{"valueBoolean": True}],
        "findings.fever": [{"valueInteger": 1}],
        "course": [coding("course", "worsening"), coding("course", "improving")],
    }
    refused = refusal(response(answers, patient=None))
    assert refused.status == 422
    assert expressions(refused) == {
        "patient.age": "value",
        "complaints": "code-invalid",
        "findings.third_eye": "not-found",
        "findings.fever": "value",
        "course": "structure",
        "onset_days": "required",
        "patient.id": "required",
    }


@pytest.mark.parametrize(
    ("mutate", "expression"),
    [
        (lambda r: r["item"][0]["answer"][0].update(valueInteger="58"), "patient.age"),
        (lambda r: r.update(status="done"), "QuestionnaireResponse.status"),
        (lambda r: r.update(item={"linkId": "x"}), "QuestionnaireResponse.item"),
        (lambda r: r.update(resourceType="Patient"), "resourceType"),
    ],
    ids=["string-as-integer", "unknown-status", "item-not-a-list", "not-a-qr"],
)
def test_what_is_not_valid_fhir_is_a_400(mutate: Any, expression: str) -> None:
    resource = response(MINIMAL)
    mutate(resource)
    refused = refusal(resource)
    assert refused.status == 400
    assert expression in expressions(refused)


def test_fhir_resources_is_lax_about_booleans_we_are_not() -> None:
    resource = response({**MINIMAL, "findings.fever": [{"valueBoolean": True}]})
    resource["item"][-1]["answer"][0]["valueBoolean"] = "yes"
    QuestionnaireResponse.model_validate(resource)  # the library lets it through...
    refused = refusal(resource)  # ...we do not
    assert refused.status == 400
    assert expressions(refused) == {"findings.fever": "structure"}


def test_another_questionnaire_is_refused() -> None:
    resource = response(MINIMAL)
    resource["questionnaire"] = "http://example.org/Questionnaire/phq-9"
    assert expressions(refusal(resource)) == {
        "QuestionnaireResponse.questionnaire": "not-supported"
    }


def test_v1_range_errors_point_at_the_linkid() -> None:
    mapped = report_from_questionnaire_response(
        response({**MINIMAL, "patient.age": [{"valueInteger": 9}]})
    )
    with pytest.raises(Problem) as caught:
        validate_report(mapped)
    issues = issues_from_field_errors(caught.value.errors or [])
    OperationOutcome.model_validate(operation_outcome(issues))
    assert [(i["code"], i["expression"]) for i in issues] == [("value", ["patient.age"])]
    assert issues_from_field_errors([{"field": "complaints.1", "message": "Bad."}])[0][
        "expression"
    ] == ["complaints"]

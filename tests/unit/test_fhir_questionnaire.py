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
from shared.schemas.symptom_report import (
    MedicationChangeSchema,
    PatientSchema,
    SymptomReportSchema,
)
from shared.vocabulary import FINDING_CODES
from tests.factories import DOMS, STROKE, WITH_MEDICATION_CHANGES, report


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


def medication_change(
    name: Any = "atorvastatin",
    change: Any = "started",
    days_ago: Any = 30,
    **extra: list[dict[str, Any]],
) -> dict[str, Any]:
    """One repetition of the medication_changes group, as JSON; None leaves an item out."""
    answers: dict[str, list[dict[str, Any]]] = {
        "medication_changes.name": [{"valueString": name}] if name is not None else [],
        "medication_changes.change": [coding("change", change)] if change is not None else [],
        "medication_changes.days_ago": [{"valueDecimal": days_ago}] if days_ago is not None else [],
        **extra,
    }
    group = QuestionnaireResponseItem(
        linkId="medication_changes",
        item=[
            QuestionnaireResponseItem(
                linkId=link_id, answer=[QuestionnaireResponseItemAnswer(**a) for a in values]
            )
            for link_id, values in answers.items()
            if values
        ],
    )
    return json.loads(group.model_dump_json())


def with_items(resource: dict[str, Any], *items: dict[str, Any]) -> dict[str, Any]:
    resource["item"].extend(items)
    return resource


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
    changes = {f"medication_changes.{n}" for n in MedicationChangeSchema().fields}
    assert set(items) == fields | findings | changes
    assert items["findings"]["type"] == "group"
    assert {items[f]["type"] for f in findings} == {"boolean"}
    assert items["complaints"]["type"] == "choice" and items["complaints"]["repeats"] is True
    assert items["onset_days"]["type"] == "decimal" and items["onset_days"]["required"] is True
    assert items["patient.age"]["type"] == "integer"
    assert items["free_text"]["type"] == "text" and items["free_text"]["maxLength"] == 4000
    assert items["medications"]["type"] == "string" and items["medications"]["repeats"] is True
    assert items["medication_changes"]["type"] == "group"
    assert items["medication_changes"]["repeats"] is True
    assert "required" not in items["medication_changes"]
    assert {
        "url": "http://hl7.org/fhir/StructureDefinition/questionnaire-maxOccurs",
        "valueInteger": 50,
    } in items["medication_changes"]["extension"]
    assert [i["linkId"] for i in items["medication_changes"]["item"]] == [
        "medication_changes.name",
        "medication_changes.change",
        "medication_changes.days_ago",
    ]
    # Required in each repetition (the group itself is optional).
    assert all(i["required"] is True for i in items["medication_changes"]["item"])
    assert items["medication_changes.name"]["type"] == "string"
    assert items["medication_changes.name"]["maxLength"] == 200
    assert items["medication_changes.change"]["type"] == "choice"
    options = items["medication_changes.change"]["answerOption"]
    assert [o["valueCoding"]["code"] for o in options] == ["started", "dose_increased", "stopped"]
    days_ago = items["medication_changes.days_ago"]
    assert days_ago["type"] == "decimal"
    assert [e["valueDecimal"] for e in days_ago["extension"]] == [0, 36500]
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


@pytest.mark.parametrize(
    "base",
    [report(), STROKE, DOMS, WITH_MEDICATION_CHANGES],
    ids=["contract", "stroke", "doms", "medication-changes"],
)
def test_v1_report_to_response_and_back_is_lossless(base: dict[str, Any]) -> None:
    loaded = validate_report(base)
    resource = questionnaire_response_from_report(loaded, response_id="a1")
    QuestionnaireResponse.model_validate(resource)
    assert validate_report(report_from_questionnaire_response(resource)) == loaded


def test_each_medication_changes_group_becomes_one_entry() -> None:
    resource = with_items(
        response(MINIMAL),
        medication_change(),
        medication_change("prednisolone 5 mg", "dose_increased", 0.5),
    )
    QuestionnaireResponse.model_validate(resource)
    mapped = report_from_questionnaire_response(resource)
    assert mapped["medication_changes"] == [
        {"name": "atorvastatin", "change": "started", "days_ago": 30},
        {"name": "prednisolone 5 mg", "change": "dose_increased", "days_ago": 0.5},
    ]
    assert validate_report(mapped)["medication_changes"] == mapped["medication_changes"]
    # No group: the contract's default, an empty list.
    without = validate_report(report_from_questionnaire_response(response(MINIMAL)))
    assert without["medication_changes"] == []


def test_medication_changes_problems_name_the_item_and_the_repetition() -> None:
    twice = medication_change()
    twice["item"].append(twice["item"][0])  # the name answered twice in one repetition
    resource = with_items(
        response(MINIMAL),
        medication_change(),
        medication_change(days_ago=None),
        medication_change(change="increased"),
        medication_change(**{"medication_changes.days_ago": [{"valueString": "30"}]}),
        twice,
    )
    refused = refusal(resource)
    assert refused.status == 422
    found = [(i["code"], i["expression"][0], i["diagnostics"]) for i in refused.issues]
    assert len(found) == 4 and set(found) == {
        (
            "required",
            "medication_changes.days_ago",
            "Item 'medication_changes.days_ago' (repetition 2 of 'medication_changes') "
            "is required.",
        ),
        (
            "code-invalid",
            "medication_changes.change",
            "Item 'medication_changes.change' (repetition 3 of 'medication_changes') takes a "
            f"code of {CODE_SYSTEM_BASE}change: started, dose_increased, stopped.",
        ),
        (
            "value",
            "medication_changes.days_ago",
            "Item 'medication_changes.days_ago' (repetition 4 of 'medication_changes') is of "
            "type decimal: answer with valueDecimal, not valueString.",
        ),
        (
            "duplicate",
            "medication_changes.name",
            "Item 'medication_changes.name' (repetition 5 of 'medication_changes') appears twice.",
        ),
    }


def test_medication_changes_items_outside_a_group_are_refused() -> None:
    flattened = response(
        {
            **MINIMAL,
            "medication_changes.name": [{"valueString": "atorvastatin"}],
            "medication_changes.days_ago": [{"valueDecimal": 30}],
        }
    )
    assert expressions(refusal(flattened)) == {
        "medication_changes.name": "structure",
        "medication_changes.days_ago": "structure",
    }
    answered_group = response({**MINIMAL, "medication_changes": [{"valueString": "statin"}]})
    assert expressions(refusal(answered_group)) == {"medication_changes": "structure"}


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


def test_v1_range_errors_in_medication_changes_point_at_the_item_and_repetition() -> None:
    mapped = report_from_questionnaire_response(
        with_items(
            response(MINIMAL),
            medication_change(),
            medication_change(name="x" * 201, days_ago=-1),
        )
    )
    with pytest.raises(Problem) as caught:
        validate_report(mapped)
    issues = issues_from_field_errors(caught.value.errors or [])
    OperationOutcome.model_validate(operation_outcome(issues))
    assert sorted((i["code"], i["expression"][0], i["diagnostics"]) for i in issues) == [
        (
            "value",
            "medication_changes.days_ago",
            "medication_changes.days_ago (repetition 2 of medication_changes): "
            "Must be 0 to 36500 days.",
        ),
        (
            "value",
            "medication_changes.name",
            "medication_changes.name (repetition 2 of medication_changes): "
            "Must be 1 to 200 characters.",
        ),
    ]
    too_many = report_from_questionnaire_response(
        with_items(response(MINIMAL), *[medication_change()] * 51)
    )
    with pytest.raises(Problem) as caught:
        validate_report(too_many)
    assert [
        (i["expression"], i["diagnostics"])
        for i in issues_from_field_errors(caught.value.errors or [])
    ] == [(["medication_changes"], "medication_changes: At most 50 medication changes.")]
    not_an_object = issues_from_field_errors(
        [{"field": "medication_changes.0", "message": "Not an object."}]
    )
    assert not_an_object[0]["expression"] == ["medication_changes"]
    assert not_an_object[0]["diagnostics"] == "medication_changes (repetition 1): Not an object."

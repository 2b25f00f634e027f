"""The contract (v1.1) as the schema enforces it: every field, type, range and code."""

from __future__ import annotations

from typing import Any

import pytest
from marshmallow import ValidationError

from shared.problems import field_errors
from shared.schemas.symptom_report import SymptomReportSchema
from shared.vocabulary import FINDING_CODES
from tests.factories import CONTRACT_EXAMPLE, MEDICATION_CHANGE, WITH_MEDICATION_CHANGES, report

schema = SymptomReportSchema()


def bad_fields(body: Any) -> set[str]:
    with pytest.raises(ValidationError) as info:
        schema.load(body)
    return {e["field"] for e in field_errors(info.value.messages)}


def test_the_contract_example_loads_unchanged() -> None:
    loaded = schema.load(report())
    # A v1 report stays valid under v1.1 and gets the new optional field's default.
    assert loaded == {**CONTRACT_EXAMPLE, "medication_changes": []}


def test_medication_changes_load_unchanged() -> None:
    loaded = schema.load(report(WITH_MEDICATION_CHANGES))
    assert loaded == WITH_MEDICATION_CHANGES


def test_defaults_are_filled_for_a_minimal_report() -> None:
    loaded = schema.load(
        {
            "patient": {"id": "p1", "age": 40},
            "complaints": ["cramps"],
            "onset_days": 1,
            "course": "unchanged",
        }
    )
    assert loaded["patient"] == {"id": "p1", "age": 40, "sex": "unknown", "pregnant": False}
    assert loaded["weakness_distribution"] == "none"
    assert loaded["improves_with_rest"] is None
    assert loaded["findings"] == {} and loaded["medications"] == [] and loaded["pain_level"] == 0
    assert loaded["medication_changes"] == []


def test_every_bad_field_is_named_at_once() -> None:
    body = report(
        patient={"id": "has space", "age": 15, "sex": "f", "nickname": "x"},
        complaints=["weakness", "itching"],
        onset_days="5",
        course="bad",
        pain_level=5.5,
        improves_with_rest="yes",
        findings={"fever": "yes", "not_a_code": True},
        medications=["x" * 201],
        glucose_mmol_l=0.1,
        surprise=True,
    )
    assert bad_fields(body) == {
        "patient.id",
        "patient.age",
        "patient.sex",
        "patient.nickname",
        "complaints.1",
        "onset_days",
        "course",
        "pain_level",
        "improves_with_rest",
        "findings.fever",
        "findings.not_a_code",
        "medications.0",
        "glucose_mmol_l",
        "surprise",
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("onset_days", -1),
        ("onset_days", 36501),
        ("onset_days", True),
        ("onset_days", None),
        ("pain_level", 11),
        ("pain_level", True),
        ("fatigue_level", -1),
        ("sudden_onset", 1),
        ("sudden_onset", "true"),
        ("daily_tasks_impaired", None),
        ("weakness_distribution", "left"),
        ("complaints", []),
        ("complaints", "weakness"),
        ("complaints", ["weakness", "weakness"]),
        ("resolved_hours_ago", -2),
        ("cramp_max_minutes", "10"),
        ("medications", ["a"] * 51),
        ("free_text", "x" * 4001),
        ("findings", ["twitching"]),
        ("glucose_mmol_l", 51),
        ("medication_changes", None),
        ("medication_changes", MEDICATION_CHANGE),
        ("medication_changes", [{**MEDICATION_CHANGE, "days_ago": 36501}]),
        ("medication_changes", [{**MEDICATION_CHANGE, "change": "dose_decreased"}]),
    ],
)
def test_out_of_contract_values_are_rejected(field: str, value: Any) -> None:
    assert any(name.split(".")[0] == field for name in bad_fields(report(**{field: value})))


def test_each_bad_medication_change_is_named_by_its_path() -> None:
    body = report(
        medication_changes=[
            MEDICATION_CHANGE,
            {"name": "x" * 201, "change": "increased", "days_ago": -1},
            {**MEDICATION_CHANGE, "days_ago": True, "dose": "20 mg"},
            {"name": "prednisolone", "change": "stopped", "days_ago": "3"},
            {"name": "", "change": "started"},
            "ramipril",
        ]
    )
    with pytest.raises(ValidationError) as info:
        schema.load(body)
    errors = {e["field"]: (e["pointer"], e["message"]) for e in field_errors(info.value.messages)}
    assert errors == {
        "medication_changes.1.name": (
            "/medication_changes/1/name",
            "Must be 1 to 200 characters.",
        ),
        "medication_changes.1.change": (
            "/medication_changes/1/change",
            "Must be one of: started, dose_increased, stopped.",
        ),
        "medication_changes.1.days_ago": (
            "/medication_changes/1/days_ago",
            "Must be 0 to 36500 days.",
        ),
        "medication_changes.2.days_ago": ("/medication_changes/2/days_ago", "Not a number."),
        "medication_changes.2.dose": ("/medication_changes/2/dose", "Unknown field."),
        "medication_changes.3.days_ago": ("/medication_changes/3/days_ago", "Not a number."),
        "medication_changes.4.name": ("/medication_changes/4/name", "Must be 1 to 200 characters."),
        "medication_changes.4.days_ago": (
            "/medication_changes/4/days_ago",
            "Missing data for required field.",
        ),
        "medication_changes.5": (
            "/medication_changes/5",
            "Not an object: give name, change and days_ago.",
        ),
    }


def test_at_most_50_medication_changes() -> None:
    assert schema.load(report(medication_changes=[MEDICATION_CHANGE] * 50))
    with pytest.raises(ValidationError) as info:
        schema.load(report(medication_changes=[MEDICATION_CHANGE] * 51))
    assert info.value.messages == {"medication_changes": ["At most 50 medication changes."]}


def test_children_are_not_triaged() -> None:
    body = report(patient={"id": "kid", "age": 12})
    with pytest.raises(ValidationError) as info:
        schema.load(body)
    assert "not validated for children" in str(info.value.messages)


def test_unknown_finding_lists_the_valid_codes() -> None:
    with pytest.raises(ValidationError) as info:
        schema.load(report(findings={"twitchy": True}))
    message = info.value.messages["findings"]["twitchy"][0]
    assert all(code in message for code in FINDING_CODES)


def test_required_fields_are_required() -> None:
    assert bad_fields({}) == {"patient", "complaints", "onset_days", "course"}


def test_null_optionals_are_accepted_where_the_contract_allows() -> None:
    loaded = schema.load(
        report(
            resolved_hours_ago=None,
            improves_with_rest=None,
            glucose_mmol_l=None,
            cramp_max_minutes=None,
            fatigue_level=None,
        )
    )
    assert loaded["improves_with_rest"] is None

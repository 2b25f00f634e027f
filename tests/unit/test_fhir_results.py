"""FHIR results, checked by parsing them back with `fhir.resources` (a client we did not write)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.detectedissue import DetectedIssue
from fhir.resources.R4B.riskassessment import RiskAssessment

from shared.fhir_results import (
    RISK_PROBABILITY_SYSTEM,
    ScoredAssessment,
    detected_issues,
    parse_detected_issue_id,
    result_bundle,
    risk_assessment,
)

ASSESSMENT_ID = "6f1c2b9e-3d0a-4a53-8f7e-0c1d2e3f4a5b"
BASE = "https://reports.example"
FLAGS = [
    {
        "id": "RF_STROKE_FAST",
        "title": "Stroke or TIA signs",
        "level": "emergency_ambulance",
        "because": ["face_drooping", "sudden_onset"],
        "source": "NHS stroke & TIA; NICE NG127 §1.6",
        "note": "Call 999 even if it has gone.",
    },
    {
        "id": "RF_PERSISTENT_NO_REST_RELIEF",
        "title": "Not improving with rest",
        "level": "consultation",
        "because": ["improves_with_rest=false"],
        "source": "NHS tiredness",
        "note": "",
    },
]


def scored(level: str = "emergency_ambulance", flags: Any = None) -> ScoredAssessment:
    return ScoredAssessment(
        assessment_id=ASSESSMENT_ID,
        patient_ref="MRN-0042",
        result_id="0a0b0c0d-0000-4000-8000-000000000001",
        triage_level=level,
        priority=91,
        ruleset_version="2026.11.1",
        # SQLite hands back naive datetimes: the builders must still give FHIR instants.
        scored_at=datetime(2026, 11, 20, 9, 30),
        result={
            "triage": level,
            "priority": 91,
            "red_flags": FLAGS if flags is None else flags,
            "ruleset_version": "2026.11.1",
        },
    )


@pytest.mark.parametrize(
    ("level", "risk"),
    [
        ("emergency_ambulance", "high"),
        ("emergency", "high"),
        ("consultation_24", "moderate"),
        ("consultation", "low"),
        ("self_care", "negligible"),
    ],
)
def test_risk_assessment_maps_the_level_to_risk_probability(level: str, risk: str) -> None:
    resource = RiskAssessment.model_validate(risk_assessment(scored(level), BASE))
    prediction = resource.prediction[0]
    coding = prediction.qualitativeRisk.coding[0]
    assert (coding.system, coding.code) == (RISK_PROBABILITY_SYSTEM, risk)
    assert prediction.outcome.coding[0].code == level
    assert prediction.probabilityDecimal is None  # levels, not probabilities


def test_risk_assessment_points_at_the_questionnaire_response_and_patient() -> None:
    resource = RiskAssessment.model_validate(risk_assessment(scored(), BASE))
    assert resource.id == ASSESSMENT_ID
    assert resource.status == "final"
    assert resource.subject.reference == "Patient/MRN-0042"
    assert [b.reference for b in resource.basis] == [f"QuestionnaireResponse/{ASSESSMENT_ID}"]
    assert resource.occurrenceDateTime == datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    assert "RF_STROKE_FAST" in resource.prediction[0].rationale


def test_an_amended_result_says_so() -> None:
    amended = ScoredAssessment(**{**scored().__dict__, "amended": True})
    assert risk_assessment(amended, BASE)["status"] == "amended"


def test_one_detected_issue_per_red_flag_with_severity_from_its_level() -> None:
    issues = [DetectedIssue.model_validate(i) for i in detected_issues(scored(), BASE)]
    assert [i.code.coding[0].code for i in issues] == [
        "RF_STROKE_FAST",
        "RF_PERSISTENT_NO_REST_RELIEF",
    ]
    assert [i.severity for i in issues] == ["high", "low"]
    stroke = issues[0]
    assert stroke.patient.reference == "Patient/MRN-0042"
    assert "NHS stroke & TIA" in stroke.detail and "face_drooping" in stroke.detail
    assert "Call 999 even if it has gone." in stroke.mitigation[0].action.text
    assert [e.text for e in stroke.evidence[0].code] == ["face_drooping", "sudden_onset"]
    implicated = {r.reference for r in stroke.implicated}
    assert f"QuestionnaireResponse/{ASSESSMENT_ID}" in implicated


def test_detected_issue_ids_are_valid_fhir_ids_that_read_back() -> None:
    for index, issue in enumerate(detected_issues(scored(), BASE)):
        assert len(issue["id"]) <= 64
        assert parse_detected_issue_id(issue["id"]) == (ASSESSMENT_ID, index)
    assert parse_detected_issue_id("not-ours") is None


def test_no_red_flags_no_detected_issues() -> None:
    assert detected_issues(scored("self_care", flags=[]), BASE) == []


def test_result_bundle_is_a_valid_collection() -> None:
    bundle = Bundle.model_validate(result_bundle(scored(), BASE))
    assert bundle.type == "collection"
    kinds = [entry.resource.get_resource_type() for entry in bundle.entry]
    assert kinds == ["RiskAssessment", "DetectedIssue", "DetectedIssue"]
    assert bundle.entry[0].fullUrl == f"{BASE}/fhir/RiskAssessment/{ASSESSMENT_ID}"


def test_times_have_a_zone_even_from_naive_database_values() -> None:
    resource = risk_assessment(scored(), BASE)
    assert resource["occurrenceDateTime"] == "2026-11-20T09:30:00Z"
    assert resource["meta"]["lastUpdated"] == "2026-11-20T09:30:00Z"

"""Scoring behaviour a nurse or clinician would notice: levels, safety screen, reasons, advice."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from engine_testing import VIGNETTES

from services.rules.engine_cli import evaluate
from shared.vocabulary import SAFETY_QUESTIONS, TRIAGE_LEVELS

ALL_NO = {q: False for q in SAFETY_QUESTIONS}


def report(**overrides: Any) -> dict[str, Any]:
    """A minimal valid report (only the required keys), with overrides."""
    base: dict[str, Any] = {
        "patient": {"id": "T-1", "age": 40},
        "complaints": ["muscle_pain"],
        "onset_days": 2,
        "course": "unchanged",
    }
    base.update(overrides)
    return base


def _vignettes(name: str) -> list[dict[str, Any]]:
    with (VIGNETTES / name).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.mark.parametrize(
    "name",
    [
        "vignettes-public.jsonl",
        "vignettes-team.jsonl",
        "vignettes-redteam.jsonl",
        "vignettes-content2.jsonl",
    ],
)
def test_vignette_accuracy_meets_the_bar(ruleset, name: str) -> None:
    vignettes = _vignettes(name)
    ev = evaluate(ruleset, vignettes)
    assert ev.total == len(vignettes)
    assert ev.exact / ev.total >= 0.90, ev.under + ev.over
    assert ev.bucket / ev.total >= 0.97, ev.under + ev.over
    assert ev.missed_emergencies == []


def test_team_vignettes_are_complete() -> None:
    vignettes = _vignettes("vignettes-team.jsonl")
    assert len(vignettes) >= 40
    for v in vignettes:
        assert v["rationale"] and v["source"] and v["expected_triage"] in TRIAGE_LEVELS


def test_result_has_the_contract_shape_and_is_json(ruleset) -> None:
    result = ruleset.score(report(findings={"dark_urine": True, "soreness": True}))
    for key in (
        "triage",
        "priority",
        "red_flags",
        "unanswered_safety_questions",
        "considerations",
        "advice",
        "ruleset_version",
        "not_understood",
        "medication_classes",
        "condition_classes",
    ):
        assert key in result
    assert result["triage"] == "emergency"
    assert isinstance(result["priority"], int) and 0 <= result["priority"] <= 100
    flag = result["red_flags"][0]
    assert flag["id"] == "RF_DARK_URINE_MUSCLE"
    assert {"id", "title", "level", "because", "source"} <= set(flag)
    assert "dark_urine" in flag["because"]
    json.dumps(result)


def test_same_input_same_output(ruleset) -> None:
    r = report(medications=["Lipitor 20mg", "Zyxorin"], findings={"twitching": True})
    assert ruleset.score(copy.deepcopy(r)) == ruleset.score(copy.deepcopy(r))


def test_medication_and_condition_free_text_maps_to_classes(ruleset) -> None:
    result = ruleset.score(
        report(
            medications=[
                "Lipitor 20mg",
                "atorvastatin",
                "simvastatin 40 mg nightly",
                "Zyxorin 5mg",
            ],
            conditions=["T2DM", "myasthenia", "Something Unusual"],
        )
    )
    assert result["medication_classes"] == {
        "statin": ["Lipitor 20mg", "atorvastatin", "simvastatin 40 mg nightly"]
    }
    assert set(result["condition_classes"]) == {"diabetes", "myasthenia_gravis"}
    assert result["not_understood"]["medications"] == ["Zyxorin 5mg"]
    assert result["not_understood"]["conditions"] == ["Something Unusual"]


def test_statin_reason_names_the_patients_own_words(ruleset) -> None:
    result = ruleset.score(report(medications=["Lipitor 20mg"], findings={"soreness": True}))
    assert result["triage"] == "consultation"  # NICE CKS: aches alone, routine with priority
    assert result["red_flags"][0]["id"] == "RF_STATIN_MUSCLE"
    assert "medication:statin (Lipitor 20mg)" in result["red_flags"][0]["because"]


def test_medicines_imply_conditions(ruleset) -> None:
    result = ruleset.score(
        report(
            medications=["gliclazide 80mg"],
            glucose_mmol_l=3.1,
            complaints=["weakness"],
            onset_days=0.05,
        )
    )
    assert "diabetes" in result["condition_classes"]
    assert result["triage"] == "emergency_ambulance"


def test_missing_optional_keys_use_contract_defaults(ruleset) -> None:
    result = ruleset.score(report())
    assert result["triage"] == "consultation"  # nothing fired, nothing asked
    assert result["unanswered_safety_questions"] == list(ruleset.general_screen)
    assert set(ruleset.general_screen) == set(SAFETY_QUESTIONS)
    assert result["not_understood"] == {
        "medications": [],
        "conditions": [],
        "findings": [],
        "fields": [],
    }


def test_a_report_the_engine_cannot_fully_read_still_scores(ruleset) -> None:
    result = ruleset.score(
        {
            "findings": {"twitchy": True, "dark_urine": "yes"},
            "course": "getting worse",
            "medications": "aspirin",
        }
    )
    assert result["triage"] in TRIAGE_LEVELS
    understood = result["not_understood"]
    assert "twitchy" in understood["findings"]
    assert "course" in understood["fields"] and "onset_days" in understood["fields"]
    assert "medications" in understood["fields"]


def test_unknown_safety_answers_block_self_care_and_are_listed_in_order(ruleset) -> None:
    doms = report(
        exercise_related=True,
        course="improving",
        onset_days=1,
        findings={"soreness": True, "recent_strenuous_exercise": True},
    )
    unasked = ruleset.score(doms)
    assert unasked["triage"] == "consultation"
    # The pattern's key questions first (most dangerous first), then the rest of the screen.
    key = ["dark_urine", "muscle_swelling", "pain_out_of_proportion"]
    rest = [q for q in ruleset.general_screen if q not in key]
    assert unasked["unanswered_safety_questions"] == key + rest
    assert rest[0] == "face_drooping"
    answered = copy.deepcopy(doms)
    answered["findings"].update(ALL_NO)
    result = ruleset.score(answered)
    assert result["triage"] == "self_care"
    assert result["unanswered_safety_questions"] == []
    assert "BP_DOMS" in result["benign_patterns"]
    assert any("has not improved after a few days" in a for a in result["advice"])
    # The whole general screen answered no stands in for the pattern's unasked key questions.
    assert result["safety_screen"] == {
        "BP_DOMS": "general_screen",
        "BP_MINOR_STRAIN": "general_screen",
    }


def test_no_rule_and_no_benign_pattern_defaults_to_consultation(ruleset) -> None:
    result = ruleset.score(report(findings=dict(ALL_NO)))
    assert result["triage"] == "consultation"
    assert result["red_flags"] == []


def test_fatigue_is_not_weakness(ruleset) -> None:
    tired = report(
        complaints=["fatigue", "weakness"],
        onset_days=2,
        course="worsening",
        weakness_distribution="none",
        findings=dict(ALL_NO),
    )
    assert ruleset.score(tired)["triage"] == "consultation"
    weak = copy.deepcopy(tired)
    weak["weakness_distribution"] = "generalized"
    assert ruleset.score(weak)["triage"] == "emergency"


def test_resolved_episode_is_read_only_by_stroke_and_hypo_rules(ruleset) -> None:
    tia = report(
        complaints=["weakness"],
        sudden_onset=True,
        weakness_distribution="one_side",
        onset_days=0.5,
        resolved_hours_ago=6,
    )
    assert ruleset.score(tia)["triage"] == "emergency_ambulance"
    tia["resolved_hours_ago"] = 96
    assert ruleset.score(tia)["triage"] == "consultation_24"
    over = report(findings={"cramps": True}, cramp_max_minutes=30, resolved_hours_ago=10)
    assert ruleset.score(over)["red_flags"] == []


def test_twitching_near_misses(ruleset) -> None:
    benign = report(
        complaints=["twitching"],
        onset_days=3,
        exercise_related=True,
        findings={**ALL_NO, "twitching": True, "recent_strenuous_exercise": True},
    )
    assert ruleset.score(benign)["triage"] == "self_care"
    weak = copy.deepcopy(benign)
    weak["weakness_distribution"] = "distal"
    weak["onset_days"] = 60
    weak["course"] = "worsening"
    result = ruleset.score(weak)
    assert result["triage"] == "consultation" and result["priority"] >= 45
    weak["findings"]["swallowing_difficulty"] = True
    assert ruleset.score(weak)["triage"] == "consultation_24"
    weak["findings"]["breathless_lying_flat"] = True
    assert ruleset.score(weak)["triage"] == "emergency"
    weak["findings"]["breathless_at_rest"] = True
    assert ruleset.score(weak)["triage"] == "emergency_ambulance"


def test_priority_orders_within_a_level_and_never_crosses_it(ruleset) -> None:
    bands = ruleset.priority_bands
    plain = ruleset.score(report(findings={"cramps_most_nights": True}))
    heavy = ruleset.score(
        report(
            findings={"cramps_most_nights": True, "twitching": True, "muscle_wasting": True},
            daily_tasks_impaired=True,
            onset_days=100,
            patient={"id": "x", "age": 80},
        )
    )
    assert plain["triage"] == heavy["triage"] == "consultation"
    assert (
        bands["consultation"][0]
        <= plain["priority"]
        < heavy["priority"]
        <= bands["consultation"][1]
    )


def test_considerations_are_possibilities_and_advice_matches_the_level(ruleset) -> None:
    result = ruleset.score(
        report(
            conditions=["anaemia"],
            medications=["furosemide"],
            complaints=["fatigue"],
            onset_days=30,
            findings=dict(ALL_NO),
        )
    )
    assert any("Anaemia may" in c for c in result["considerations"])
    assert result["advice"][0].startswith("Book an appointment")
    amb = ruleset.score(report(findings={"face_drooping": True}))
    assert amb["advice"][0].startswith("Call 999")


def test_explain_lists_every_rule_and_the_outcome(ruleset) -> None:
    lines = ruleset.explain(report(findings={"face_drooping": True}))
    text = "\n".join(lines)
    assert lines[0].startswith("Triage: emergency_ambulance")
    assert "RF_STROKE_FAST [emergency_ambulance, weight 50] FIRED" in text
    assert all(rule.id in text for rule in ruleset.rules)


def test_known_myasthenia_never_lowers_new_double_vision(ruleset) -> None:
    # Found by the "risk modifier never lowers the level" property (rule set 2026.11.4): the
    # rule for fatigable eye symptoms excepted known myasthenia unless it was worsening.
    eyes = report(
        complaints=["fatigue"],
        onset_days=0,
        course="improving",
        improves_with_rest=True,
        findings={"double_vision": True},
    )
    known = {**eyes, "conditions": ["myasthenia gravis"]}
    for case in (eyes, known):
        result = ruleset.score(case)
        assert result["triage"] == "consultation_24"
        assert "RF_FATIGABLE_OCULAR_BULBAR" in {flag["id"] for flag in result["red_flags"]}

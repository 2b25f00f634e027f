"""Clinical content 2 (rule set 2026.12.1): per-pattern safety screens, sepsis without a known
fever, mottled skin, tetanus, statins after NICE CKS and the v1.1 `medication_changes` field."""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest
from engine_testing import reports
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.vocabulary import FINDING_CODES, LEVEL_RANK, SAFETY_QUESTIONS

ALL_NO = dict.fromkeys(SAFETY_QUESTIONS, False)
PROFILE = settings(
    max_examples=int(os.environ.get("MYOTRIAGE_HYPOTHESIS_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def report(findings: dict[str, bool] | None = None, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "patient": {"id": "C2-1", "age": 34},
        "complaints": ["muscle_pain"],
        "onset_days": 2,
        "course": "unchanged",
        "findings": dict(findings or {}),
    }
    base.update(fields)
    return base


def doms(**findings: bool) -> dict[str, Any]:
    """Soreness the day after a first spin class, improving: the BP_DOMS story."""
    return report(
        {"soreness": True, "recent_strenuous_exercise": True, **findings},
        onset_days=1,
        course="improving",
        exercise_related=True,
    )


DOMS_KEYS_NO = {"dark_urine": False, "muscle_swelling": False, "pain_out_of_proportion": False}


def flag_ids(result: dict[str, Any]) -> list[str]:
    return [flag["id"] for flag in result["red_flags"]]


# -- rule 7: per-pattern safety screens -------------------------------------------------------


def test_a_patterns_key_questions_answered_no_stand_in_for_the_general_screen(ruleset) -> None:
    result = ruleset.score(doms(**DOMS_KEYS_NO))
    assert result["triage"] == "self_care"
    # Soreness after exercise also tells the minor-strain story; its key questions are a subset.
    assert result["benign_patterns"] == ["BP_DOMS", "BP_MINOR_STRAIN"]
    assert result["safety_screen"] == {
        "BP_DOMS": "key_questions",
        "BP_MINOR_STRAIN": "key_questions",
    }
    assert result["unanswered_safety_questions"] == []
    assert any("Delayed muscle soreness" in line for line in result["advice"])
    assert any("not improved after a few days" in line for line in result["advice"])


def test_one_key_question_unknown_is_asked_first_and_blocks_self_care(ruleset) -> None:
    result = ruleset.score(doms(dark_urine=False, muscle_swelling=False))
    assert result["triage"] == "consultation"
    assert result["safety_screen"] == {}
    unanswered = result["unanswered_safety_questions"]
    assert unanswered[0] == "pain_out_of_proportion"
    assert unanswered[1:] == [q for q in ruleset.general_screen if q != "dark_urine"]


def test_a_key_question_answered_yes_blocks_self_care_even_with_the_screen_complete(
    ruleset,
) -> None:
    swollen = doms(**{**ALL_NO, "muscle_swelling": True, "pain_out_of_proportion": False})
    result = ruleset.score(swollen)
    assert flag_ids(result) == []
    assert result["triage"] == "consultation"
    assert "muscle_swelling" in "\n".join(ruleset.explain(swollen))


def test_the_general_screen_answered_no_qualifies_when_key_questions_were_not_asked(
    ruleset,
) -> None:
    result = ruleset.score(doms(**ALL_NO))
    assert result["triage"] == "self_care"
    assert result["safety_screen"]["BP_DOMS"] == "general_screen"


def test_a_general_screen_yes_blocks_self_care_even_with_key_questions_answered_no(
    ruleset,
) -> None:
    result = ruleset.score(doms(**DOMS_KEYS_NO, bladder_bowel_change=True))
    assert result["triage"] != "self_care"


def test_key_questions_complete_but_a_rule_fires_takes_the_rules_level(ruleset) -> None:
    heavy = doms(**DOMS_KEYS_NO)
    heavy["weakness_distribution"] = "proximal"
    result = ruleset.score(heavy)
    assert result["triage"] == "emergency"  # RF_ACUTE_WEAKNESS_DAYS: weakness within days
    assert result["benign_patterns"] == [] and result["safety_screen"] == {}


def test_two_matching_patterns_each_qualify_by_their_own_screen(ruleset) -> None:
    both = doms(**DOMS_KEYS_NO, twitching=True)
    both["complaints"] = ["muscle_pain", "twitching"]
    result = ruleset.score(both)
    # The twitch's key questions were not asked: only the soreness patterns qualify.
    assert result["triage"] == "self_care"
    assert "BP_BENIGN_TWITCH" not in result["safety_screen"]
    assert result["safety_screen"]["BP_DOMS"] == "key_questions"
    both["findings"].update(muscle_wasting=False, weak_grip=False, twitching_multiple_sites=False)
    assert ruleset.score(both)["safety_screen"]["BP_BENIGN_TWITCH"] == "key_questions"
    # A "yes" to either pattern's key question blocks self-care for both.
    both["findings"]["twitching_multiple_sites"] = True
    assert ruleset.score(both)["triage"] == "consultation"


def test_the_new_patterns_settled_exercise_cramp_and_tremor_with_a_trigger(ruleset) -> None:
    cramp = report(
        {"cramps": True, "heat_exposure": True, "confusion": False, "dark_urine": False},
        complaints=["cramps"],
        onset_days=0.2,
        course="improving",
        exercise_related=True,
        cramp_max_minutes=3,
    )
    assert ruleset.score(cramp)["safety_screen"] == {"BP_EXERCISE_HEAT_CRAMP": "key_questions"}
    shaky = report(
        {
            "trembling": True,
            "caffeine_or_stimulants": True,
            "palpitations": False,
            "weight_loss": False,
        },
        complaints=["tremor"],
        onset_days=3,
    )
    assert ruleset.score(shaky)["safety_screen"] == {"BP_TREMOR_CLEAR_TRIGGER": "key_questions"}
    shaky["findings"]["palpitations"] = True
    assert ruleset.score(shaky)["triage"] == "consultation"


def test_a_postural_back_ache_needs_the_cauda_equina_questions(ruleset) -> None:
    back = report(
        {"back_pain": True, "poor_posture": True, "numbness_or_tingling": False, "fever": False},
        improves_with_rest=True,
        pain_level=2,
        onset_days=5,
    )
    result = ruleset.score(back)
    assert result["triage"] == "consultation"
    assert result["unanswered_safety_questions"][:2] == ["saddle_numbness", "bladder_bowel_change"]
    back["findings"].update(saddle_numbness=False, bladder_bowel_change=False)
    assert ruleset.score(back)["safety_screen"] == {"BP_POSTURAL_BACK_ACHE": "key_questions"}


def test_explain_says_which_pattern_matched_and_by_which_screen(ruleset) -> None:
    text = "\n".join(ruleset.explain(doms(**DOMS_KEYS_NO)))
    assert "benign pattern BP_DOMS matches" in text
    assert "qualifies by its key questions (all answered no)" in text
    assert "dark_urine=no, muscle_swelling=no, pain_out_of_proportion=no" in text
    blocked = "\n".join(ruleset.explain(doms(dark_urine=False)))
    assert "does not qualify for self_care" in blocked
    assert "ask next: muscle_swelling, pain_out_of_proportion, face_drooping" in blocked


# -- sepsis, shock, tetanus -------------------------------------------------------------------


def test_sepsis_in_an_older_person_needs_no_fever(ruleset) -> None:
    older = report({"confusion": True, "reduced_urine": True}, patient={"id": "C2-2", "age": 81})
    result = ruleset.score(older)
    assert result["triage"] == "emergency_ambulance"
    assert "RF_SEPSIS" in flag_ids(result)
    younger = copy.deepcopy(older)
    younger["patient"]["age"] = 40
    assert "RF_SEPSIS" not in flag_ids(ruleset.score(younger))  # still an emergency (confusion)
    assert ruleset.score(younger)["triage"] == "emergency"


@pytest.mark.parametrize(
    "findings",
    [
        {"recent_infection": True, "breathless_at_rest": True},
        {"shivering_severe": True, "confusion": True},
        {"fever": True, "reduced_urine": True},
        {"recent_infection": True, "shivering_severe": True, "fever": False},
    ],
)
def test_sepsis_from_any_infection_sign_with_a_high_risk_sign(ruleset, findings) -> None:
    result = ruleset.score(report(findings))
    assert result["triage"] == "emergency_ambulance"
    assert "RF_SEPSIS" in flag_ids(result)


def test_mottled_skin_alone_means_an_ambulance_and_improving_cannot_lower_it(ruleset) -> None:
    mottled = report({"mottled_skin": True}, course="improving", improves_with_rest=True)
    result = ruleset.score(mottled)
    assert result["triage"] == "emergency_ambulance"
    assert flag_ids(result)[0] in {"RF_SHOCK_SKIN", "RF_SEPSIS"}
    assert "RF_SHOCK_SKIN" in flag_ids(result)


def test_tetanus_a_contaminated_wound_with_spasms(ruleset) -> None:
    wound = report({"contaminated_wound": True, "spasms": True}, complaints=["cramps"])
    assert ruleset.score(wound)["triage"] == "emergency"
    assert flag_ids(ruleset.score(wound))[0] == "RF_TETANUS_SIGNS"
    wound["findings"]["swallowing_difficulty"] = True
    assert ruleset.score(wound)["triage"] == "emergency_ambulance"
    breathing = report({"contaminated_wound": True, "spasms": True, "breathless_on_exertion": True})
    assert ruleset.score(breathing)["triage"] == "emergency_ambulance"
    injury = report({"recent_injury_or_cast": True, "spasms": True})
    assert ruleset.score(injury)["triage"] == "emergency"
    stiff = report({"contaminated_wound": True}, complaints=["stiffness"])
    assert ruleset.score(stiff)["triage"] == "emergency"


def test_a_contaminated_wound_without_spasms_or_stiffness_is_24_hours(ruleset) -> None:
    result = ruleset.score(report({"contaminated_wound": True, "spasms": False}))
    assert result["triage"] == "consultation_24"
    assert flag_ids(result) == ["RF_CRAMP_PROLONGED"]


# -- statins and medicine changes (contract v1.1) ---------------------------------------------


def statin_report(findings: dict[str, bool] | None = None, **fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "medications": ["atorvastatin 20 mg"],
        "onset_days": 10,
        "pain_level": 4,
        **fields,
    }
    return report({"localized_pain": True, "dark_urine": False, **(findings or {})}, **values)


def test_statin_aches_alone_are_a_routine_appointment_with_high_priority(ruleset) -> None:
    result = ruleset.score(statin_report())
    assert result["triage"] == "consultation"
    assert flag_ids(result) == ["RF_STATIN_MUSCLE"]
    assert result["priority"] >= 40  # high priority inside the consultation band (20-54)


@pytest.mark.parametrize(
    ("fields", "findings", "level"),
    [
        ({"weakness_distribution": "proximal"}, {}, "consultation_24"),
        ({"pain_level": 7}, {}, "consultation_24"),
        ({}, {"dark_urine": True}, "emergency"),
        ({"exercise_related": True}, {}, "consultation"),  # explained by exercise: no statin flag
    ],
)
def test_statin_escalations(ruleset, fields, findings, level) -> None:
    result = ruleset.score(statin_report(findings, **fields))
    assert result["triage"] == level
    statin_flags = [f for f in result["red_flags"] if f["id"] == "RF_STATIN_MUSCLE"]
    if fields.get("exercise_related"):
        assert statin_flags == []
    else:
        assert statin_flags and statin_flags[0]["level"] == level


def cramps_on_a_statin(changes: list[dict[str, Any]] | None, **extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "complaints": ["cramps"],
        "medications": ["simvastatin 40mg"],
        "cramp_max_minutes": 2,
        "onset_days": 5,
    }
    if changes is not None:
        fields["medication_changes"] = changes
    fields.update(extra)
    return report({"cramps": True, "calf_swelling_one_side": False}, **fields)


def test_cramps_alone_on_a_long_standing_statin_no_longer_fire_the_statin_rule(ruleset) -> None:
    result = ruleset.score(cramps_on_a_statin(None))
    assert flag_ids(result) == []
    assert result["triage"] == "self_care"  # BP_OCCASIONAL_CRAMP by its key question


@pytest.mark.parametrize(
    "change",
    [
        {"name": "simvastatin 40mg", "change": "started", "days_ago": 30},
        {"name": "Zocor", "change": "dose_increased", "days_ago": 89},
        {"name": "clarithromycin 500 mg", "change": "started", "days_ago": 10},
        {"name": "Fucidin", "change": "started", "days_ago": 3},
    ],
)
def test_new_cramps_after_a_statin_change_or_an_interacting_medicine(ruleset, change) -> None:
    result = ruleset.score(cramps_on_a_statin([change]))
    assert result["triage"] == "consultation"
    assert flag_ids(result) == ["RF_STATIN_NEW_CRAMPS"]


@pytest.mark.parametrize(
    "change",
    [
        {"name": "simvastatin", "change": "started", "days_ago": 120},  # outside 90 days
        {"name": "clarithromycin", "change": "stopped", "days_ago": 10},
        {"name": "paracetamol", "change": "started", "days_ago": 10},  # no interaction
    ],
)
def test_changes_that_do_not_count(ruleset, change) -> None:
    assert "RF_STATIN_NEW_CRAMPS" not in flag_ids(ruleset.score(cramps_on_a_statin([change])))


def test_a_statin_started_only_in_medication_changes_counts_as_taken(ruleset) -> None:
    aches = report(
        {"localized_pain": True},
        medications=[],
        medication_changes=[{"name": "Lipitor", "change": "started", "days_ago": 21}],
        onset_days=7,
    )
    result = ruleset.score(aches)
    assert flag_ids(result) == ["RF_STATIN_MUSCLE"]
    assert result["medication_classes"] == {"statin": ["Lipitor"]}


def test_a_malformed_medicine_change_is_reported_not_guessed(ruleset) -> None:
    result = ruleset.score(
        cramps_on_a_statin(
            [{"name": "simvastatin", "change": "maybe", "days_ago": 5}, "atorvastatin"]
        )
    )
    assert "RF_STATIN_NEW_CRAMPS" not in flag_ids(result)
    assert result["not_understood"]["fields"] == ["medication_changes.0", "medication_changes.1"]
    assert ruleset.score(cramps_on_a_statin([], medication_changes="x"))["not_understood"][
        "fields"
    ] == ["medication_changes"]


def test_every_v1_report_without_the_new_field_scores_as_with_an_empty_one(ruleset) -> None:
    plain = cramps_on_a_statin(None)
    empty = cramps_on_a_statin([])
    assert ruleset.score(plain) == ruleset.score(empty)


# -- properties -------------------------------------------------------------------------------


def _emergency_level_findings(ruleset) -> set[str]:
    """Findings that on their own, in a bare report, give `emergency` or above."""
    found = set()
    for code in FINDING_CODES:
        if ruleset.score(report({code: True}))["triage"] in ("emergency", "emergency_ambulance"):
            found.add(code)
    return found


def test_the_emergency_level_findings_include_the_alarms(ruleset) -> None:
    assert {
        "face_drooping",
        "breathless_at_rest",
        "chest_pain",
        "confusion",
        "mottled_skin",
        "saddle_numbness",
        "head_lift_weakness",
        "ascending_weakness",
    } <= _emergency_level_findings(ruleset)


@PROFILE
@given(report=reports(), data=st.data())
def test_no_report_with_an_emergency_level_finding_ever_gets_self_care(
    ruleset, report, data
) -> None:
    finding = data.draw(st.sampled_from(sorted(_emergency_level_findings(ruleset))))
    report["findings"][finding] = True
    assert ruleset.score(report)["triage"] != "self_care"


@PROFILE
@given(report=reports())
def test_self_care_always_has_a_qualifying_screen_and_no_yes(ruleset, report) -> None:
    result = ruleset.score(report)
    if result["triage"] != "self_care":
        return
    findings = report["findings"]
    assert result["red_flags"] == []
    assert result["safety_screen"] and result["unanswered_safety_questions"] == []
    assert not any(findings.get(q) is True for q in SAFETY_QUESTIONS)
    patterns = {p.id: p for p in ruleset.benign_patterns}
    for pattern_id, screen in result["safety_screen"].items():
        keys = patterns[pattern_id].key_questions
        assert not any(findings.get(q) is True for q in keys)
        asked = keys if screen == "key_questions" else SAFETY_QUESTIONS
        assert all(findings.get(q) is False for q in asked)


@PROFILE
@given(
    report=reports(),
    change=st.fixed_dictionaries(
        {
            "name": st.sampled_from(["simvastatin", "clarithromycin", "Zyxorin", "paracetamol"]),
            "change": st.sampled_from(["started", "dose_increased", "stopped"]),
            "days_ago": st.integers(0, 400),
        }
    ),
)
def test_a_medicine_change_never_lowers_the_level(ruleset, report, change) -> None:
    before = LEVEL_RANK[ruleset.score(report)["triage"]]
    changed = copy.deepcopy(report)
    changed["medication_changes"] = [change]
    assert LEVEL_RANK[ruleset.score(changed)["triage"]] >= before

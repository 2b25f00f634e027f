"""Safety properties over generated reports (hypothesis)."""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import pytest
from engine_testing import reports
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.vocabulary import LEVEL_RANK, SAFETY_QUESTIONS, TRIAGE_LEVELS

# MYOTRIAGE_HYPOTHESIS_EXAMPLES=3000 searches longer (about two minutes for this file).
PROFILE = settings(
    max_examples=int(os.environ.get("MYOTRIAGE_HYPOTHESIS_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _rank(ruleset: Any, report: dict[str, Any]) -> int:
    return LEVEL_RANK[ruleset.score(report)["triage"]]


def test_red_flag_findings_include_every_safety_question_and_key_alarms(ruleset) -> None:
    assert set(SAFETY_QUESTIONS) <= ruleset.red_flag_findings
    assert {
        "head_lift_weakness",
        "unable_to_stand_or_walk",
        "calf_swelling_one_side",
        "muscle_wasting",
        "ascending_weakness",
        "mottled_skin",
    } <= ruleset.red_flag_findings


@PROFILE
@given(report=reports(), data=st.data())
def test_adding_a_red_flag_finding_never_lowers_the_level(ruleset, report, data) -> None:
    finding = data.draw(st.sampled_from(sorted(ruleset.red_flag_findings)))
    before = _rank(ruleset, report)
    added = copy.deepcopy(report)
    added["findings"][finding] = True
    assert _rank(ruleset, added) >= before


@PROFILE
@given(report=reports(), data=st.data(), to=st.sampled_from([False, None]))
def test_removing_a_red_flag_finding_never_raises_the_level(ruleset, report, data, to) -> None:
    finding = data.draw(st.sampled_from(sorted(ruleset.red_flag_findings)))
    report["findings"][finding] = True
    before = _rank(ruleset, report)
    removed = copy.deepcopy(report)
    if to is None:
        del removed["findings"][finding]
    else:
        removed["findings"][finding] = False
    assert _rank(ruleset, removed) <= before


@PROFILE
@given(report=reports())
def test_any_valid_report_scores_without_error(ruleset, report) -> None:
    result = ruleset.score(report)
    assert result["triage"] in TRIAGE_LEVELS
    low, high = ruleset.priority_bands[result["triage"]]
    assert low <= result["priority"] <= high
    assert json.loads(json.dumps(result)) == result
    unanswered = result["unanswered_safety_questions"]
    if result["triage"] == "self_care":
        assert unanswered == []
        return
    # Every unasked general-screen question is listed once; anything else listed is an unasked
    # key question of a benign pattern; the screen's own questions keep the screen's order.
    assert len(set(unanswered)) == len(unanswered)
    assert all(report["findings"].get(q) is None for q in unanswered)
    unasked_screen = [q for q in ruleset.general_screen if report["findings"].get(q) is None]
    key_questions = {q for p in ruleset.benign_patterns for q in p.key_questions}
    assert set(unasked_screen) <= set(unanswered) <= set(unasked_screen) | key_questions
    assert [q for q in unanswered if q not in key_questions] == [
        q for q in unasked_screen if q not in key_questions
    ]


@PROFILE
@given(report=reports(), data=st.data())
def test_an_unknown_safety_answer_allows_self_care_only_by_a_patterns_key_questions(
    ruleset, report, data
) -> None:
    question = data.draw(st.sampled_from(SAFETY_QUESTIONS))
    report["findings"].pop(question, None)
    result = ruleset.score(report)
    if result["triage"] == "self_care":
        # CLINICAL.md rule 7 (a): the general screen is incomplete, so every qualifying
        # pattern qualified by its own key questions, and the unknown one is none of them.
        assert set(result["safety_screen"].values()) == {"key_questions"}
        patterns = {p.id: p for p in ruleset.benign_patterns}
        for pattern_id in result["safety_screen"]:
            assert question not in patterns[pattern_id].key_questions


@PROFILE
@given(report=reports())
def test_self_care_only_without_fired_rules_and_with_no_safety_answer_yes(ruleset, report) -> None:
    result = ruleset.score(report)
    if result["triage"] == "self_care":
        assert result["red_flags"] == []
        assert not any(report["findings"].get(q) is True for q in SAFETY_QUESTIONS)
        assert result["benign_patterns"] == list(result["safety_screen"])
        assert any("not improved after a few days" in a for a in result["advice"])


@PROFILE
@given(report=reports())
def test_improving_never_lowers_a_no_downgrade_rule(ruleset, report) -> None:
    result = ruleset.score(report)
    guarded = {r.id: r.level for r in ruleset.rules if r.no_downgrade}
    floor = max(
        (LEVEL_RANK[guarded[f["id"]]] for f in result["red_flags"] if f["id"] in guarded), default=0
    )
    better = copy.deepcopy(report)
    better["course"] = "improving"
    better["improves_with_rest"] = True
    assert _rank(ruleset, better) >= floor


@PROFILE
@given(
    report=reports(), risk=st.sampled_from(["age", "pregnant", "diabetes", "immuno", "myasthenia"])
)
def test_a_risk_modifier_never_lowers_the_level(ruleset, report, risk) -> None:
    before = _rank(ruleset, report)
    risky = copy.deepcopy(report)
    if risk == "age":
        risky["patient"]["age"] = max(risky["patient"]["age"], 70)
    elif risk == "pregnant":
        risky["patient"]["pregnant"] = True
    elif risk == "diabetes":
        risky["conditions"].append("type 2 diabetes")
    elif risk == "immuno":
        risky["medications"].append("methotrexate")
    else:
        risky["conditions"].append("myasthenia gravis")
    assert _rank(ruleset, risky) >= before


@pytest.mark.parametrize("interpreter", ["tree", "qubit", "panzi"])
def test_compiled_and_interpreted_conditions_agree(ruleset, interpreter) -> None:
    interpreted = ruleset.with_interpreter(interpreter)

    @settings(max_examples=100, deadline=None)
    @given(report=reports())
    def check(report: dict[str, Any]) -> None:
        assert interpreted.score(report) == ruleset.score(report)

    check()

"""Pregnancy written only in the conditions list counts as pregnancy (CLINICAL.md rule 6)."""

from __future__ import annotations

from typing import Any

from services.rules.engine import load_ruleset
from shared.vocabulary import SAFETY_QUESTIONS

RULESET = load_ruleset()


def flu_like(conditions: list[str], pregnant: bool = False) -> dict[str, Any]:
    no = dict.fromkeys(SAFETY_QUESTIONS, False)
    no.update(mottled_skin=False, shivering_severe=False, reduced_urine=False)
    return {
        "patient": {"id": "p1", "age": 30, "sex": "female", "pregnant": pregnant},
        "complaints": ["muscle_pain", "fatigue"],
        "onset_days": 2,
        "course": "unchanged",
        "pain_level": 3,
        "findings": {**no, "fever": True, "soreness": True},
        "conditions": conditions,
    }


def test_flu_in_pregnancy_from_the_problem_list_is_high_risk() -> None:
    by_flag = RULESET.score(flu_like([], pregnant=True))
    by_condition = RULESET.score(flu_like(["24 weeks pregnant"]))
    assert by_flag["triage"] == by_condition["triage"] == "consultation_24"
    assert "RM_PREGNANCY" in by_condition["risk_modifiers"]


def test_uncomplicated_flu_without_pregnancy_stays_self_care() -> None:
    assert RULESET.score(flu_like([]))["triage"] == "self_care"

"""Valid symptom reports to start from (the contract's own example, and variations)."""

from __future__ import annotations

import copy
from typing import Any

from shared.vocabulary import SAFETY_QUESTIONS

CONTRACT_EXAMPLE: dict[str, Any] = {
    "patient": {"id": "MRN-0042", "age": 58, "sex": "female", "pregnant": False},
    "complaints": ["weakness", "twitching"],
    "onset_days": 120,
    "sudden_onset": False,
    "course": "worsening",
    "resolved_hours_ago": None,
    "exercise_related": False,
    "improves_with_rest": False,
    "weakness_distribution": "distal",
    "daily_tasks_impaired": True,
    "pain_level": 2,
    "fatigue_level": 6,
    "cramp_max_minutes": None,
    "findings": {
        "twitching": True,
        "muscle_wasting": True,
        "weak_grip": True,
        "breathless_at_rest": False,
        "swallowing_difficulty": False,
    },
    "medications": ["atorvastatin 20 mg"],
    "conditions": ["type 2 diabetes"],
    "glucose_mmol_l": None,
    "free_text": "Right hand getting weaker for 4 months, can't turn keys.",
}

# One entry of medication_changes (contract v1.1): a statin started a month ago.
MEDICATION_CHANGE: dict[str, Any] = {"name": "atorvastatin", "change": "started", "days_ago": 30}

# The contract example with the v1.1 field: an EHR that knows the medication history.
WITH_MEDICATION_CHANGES: dict[str, Any] = {
    **copy.deepcopy(CONTRACT_EXAMPLE),
    "medication_changes": [
        dict(MEDICATION_CHANGE),
        {"name": "simvastatin 40 mg", "change": "stopped", "days_ago": 31},
        {"name": "levothyroxine", "change": "dose_increased", "days_ago": 0.5},
    ],
}

ALL_SAFETY_NO = dict.fromkeys(SAFETY_QUESTIONS, False)

# A stroke: sudden one-sided weakness with a drooping face, 40 minutes ago.
STROKE: dict[str, Any] = {
    "patient": {"id": "MRN-STROKE", "age": 71, "sex": "male"},
    "complaints": ["weakness"],
    "onset_days": 0.03,
    "sudden_onset": True,
    "course": "unchanged",
    "weakness_distribution": "one_side",
    "findings": {**ALL_SAFETY_NO, "face_drooping": True},
}

# Sore thighs two days after a first bootcamp class, improving, urine normal.
DOMS: dict[str, Any] = {
    "patient": {"id": "MRN-DOMS", "age": 29},
    "complaints": ["muscle_pain"],
    "onset_days": 2,
    "course": "improving",
    "exercise_related": True,
    "improves_with_rest": True,
    "pain_level": 4,
    "findings": {**ALL_SAFETY_NO, "soreness": True, "recent_strenuous_exercise": True},
}


def report(base: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """A deep copy of `base` (the contract example by default) with top-level overrides."""
    body = copy.deepcopy(base if base is not None else CONTRACT_EXAMPLE)
    body.update(overrides)
    return body

"""Paths and a hypothesis generator of valid v1 reports, shared by the rule-engine tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from shared.vocabulary import COMPLAINTS, COURSES, FINDING_CODES, SEXES, WEAKNESS_DISTRIBUTIONS

REPO = Path(__file__).resolve().parents[3]
VIGNETTES = REPO / "tests" / "data" / "vignettes"
RULESET_DIR = REPO / "services" / "rules" / "ruleset"

# Free text seen in practice, including names the synonym table does not know.
MEDICATIONS = [
    "Lipitor 20mg",
    "atorvastatin",
    "simvastatin 40 mg nightly",
    "ciprofloxacin 500mg bd",
    "furosemide 40mg",
    "insulin glargine 20 units",
    "gliclazide",
    "prednisolone 5 mg",
    "Ritalin",
    "salbutamol inhaler",
    "FOLFOX",
    "fentanyl patch 25 micrograms",
    "ritonavir",
    "paracetamol",
    "Zyxorin",
    "herbal tea",
    "",
    "metformin 500mg",
    "clarithromycin",
]
CONDITIONS = [
    "T2DM",
    "type 1 diabetes",
    "myasthenia",
    "MND",
    "breast cancer",
    "anaemia",
    "hypothyroidism",
    "hep C",
    "HIV",
    "depression",
    "COPD",
    "benign fasciculation syndrome",
    "GBS",
    "something rare",
    "high cholesterol",
    "pregnancy",
]


def _report(draw: Any) -> dict[str, Any]:
    findings = draw(
        st.dictionaries(st.sampled_from(FINDING_CODES), st.booleans(), max_size=len(FINDING_CODES))
    )
    resolved = draw(st.one_of(st.none(), st.floats(min_value=0, max_value=500, allow_nan=False)))
    return {
        "patient": {
            "id": "P-1",
            "age": draw(st.integers(min_value=16, max_value=120)),
            "sex": draw(st.sampled_from(SEXES)),
            "pregnant": draw(st.booleans()),
        },
        "complaints": draw(
            st.lists(st.sampled_from(COMPLAINTS), min_size=1, max_size=4, unique=True)
        ),
        "onset_days": draw(st.one_of(st.integers(0, 400), st.floats(0, 36500, allow_nan=False))),
        "sudden_onset": draw(st.booleans()),
        "course": draw(st.sampled_from(COURSES)),
        "resolved_hours_ago": resolved,
        "exercise_related": draw(st.booleans()),
        "improves_with_rest": draw(st.sampled_from([None, True, False])),
        "weakness_distribution": draw(st.sampled_from(WEAKNESS_DISTRIBUTIONS)),
        "daily_tasks_impaired": draw(st.booleans()),
        "pain_level": draw(st.integers(0, 10)),
        "fatigue_level": draw(st.one_of(st.none(), st.integers(0, 10))),
        "cramp_max_minutes": draw(st.one_of(st.none(), st.floats(0, 120, allow_nan=False))),
        "findings": findings,
        "medications": draw(st.lists(st.sampled_from(MEDICATIONS), max_size=3)),
        "conditions": draw(st.lists(st.sampled_from(CONDITIONS), max_size=3)),
        "glucose_mmol_l": draw(st.one_of(st.none(), st.floats(0.5, 50, allow_nan=False))),
        "free_text": draw(st.text(max_size=20)),
    }


reports = st.composite(_report)

"""Patient-written text shown elsewhere is one clean line (shared/display_text.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from shared.display_text import display_text
from shared.fhir_results import ScoredAssessment, detected_issue


def test_controls_bidi_and_zero_width_characters_are_removed() -> None:
    assert display_text("Lipitor\u202e 20mg\u200b\x00\nnightly\ufeff") == "Lipitor 20mg nightly"
    assert display_text("x" * 500, limit=10) == "x" * 9 + "…"


@given(st.text())
def test_nothing_unsafe_survives(text: str) -> None:
    shown = display_text(text)
    assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in shown)
    assert not any(c in shown for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
    assert len(shown) <= 300


def test_a_detected_issue_never_carries_a_bidi_override() -> None:
    flag = {
        "id": "RF_STATIN_MUSCLE",
        "title": "Statin with muscle pain",
        "level": "consultation",
        "because": ["medication:statin (Lipitor\u202e gnp.exe)"],
        "source": "NICE CKS statins",
    }
    scored = ScoredAssessment(
        assessment_id="a-1",
        patient_ref="MRN-1",
        result_id="r-1",
        triage_level="consultation",
        priority=40,
        ruleset_version="2026.12.1",
        scored_at=datetime(2026, 12, 1, tzinfo=UTC),
        result={"red_flags": [flag]},
    )
    issue = detected_issue(scored, 0, "https://myotriage.example")
    assert "\u202e" not in str(issue)

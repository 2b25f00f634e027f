"""CDS Hooks cards from results shaped like the engine's (no database, no Flask)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from services.reporting.cds_cards import (
    PATIENT_VIEW_SERVICE_ID,
    card_summary,
    discovery_document,
    patient_view_card,
)

SCORED_AT = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)


def result(level: str, flags: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "triage": level,
        "priority": 80,
        "red_flags": flags or [],
        "unanswered_safety_questions": [],
        "considerations": ["Possible statin side effect (free text never shown)"],
        "advice": [],
        "ruleset_version": "2026.11.1",
        **extra,
    }


STROKE_FLAG = {
    "id": "RF_STROKE_FAST",
    "title": "Stroke or TIA signs (face, arm, speech)",
    "level": "emergency_ambulance",
    "because": ["face_drooping", "weakness_distribution=one_side"],
    "source": "NHS stroke & TIA; NICE NG127 §1.6",
    "note": "",
}
MND_FLAG = {
    "id": "RF_WEAKNESS_WITH_TWITCHING",
    "title": "Twitching with true weakness or wasting",
    "level": "consultation",
    "because": ["twitching", "muscle_wasting"],
    "source": "NICE NG127; NICE NG42",
    "note": "",
}


def card(level: str, flags: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return patient_view_card(
        assessment_id="a1b2",
        result_id="r-1",
        result=result(level, flags, **extra),
        scored_at=SCORED_AT,
        reporting_url="https://reports.example",
    )


@pytest.mark.parametrize(
    ("level", "indicator"),
    [
        ("emergency_ambulance", "critical"),
        ("emergency", "critical"),
        ("consultation_24", "warning"),
        ("consultation", "info"),
        ("self_care", "info"),
    ],
)
def test_indicator_follows_the_level(level: str, indicator: str) -> None:
    assert card(level)["indicator"] == indicator


def test_card_has_what_an_ehr_needs_to_show_it() -> None:
    shown = card("emergency_ambulance", [STROKE_FLAG])
    assert uuid.UUID(shown["uuid"])
    assert len(shown["summary"]) < 140
    assert "ambulance" in shown["summary"].lower()
    assert shown["source"]["label"] == "MyoTriage" and shown["source"]["url"]
    assert shown["links"] == [
        {
            "label": "Clinician summary",
            "url": "https://reports.example/v1/reports/assessments/a1b2",
            "type": "absolute",
        }
    ]
    assert "suggestions" not in shown  # so no selectionBehavior is needed


def test_detail_is_markdown_with_each_red_flag_its_reasons_and_source() -> None:
    detail = card("emergency_ambulance", [STROKE_FLAG, MND_FLAG])["detail"]
    assert "**Red flags**" in detail
    assert "Stroke or TIA signs" in detail and "Twitching with true weakness" in detail
    assert "NHS stroke & TIA; NICE NG127 §1.6" in detail
    assert "face\\_drooping" in detail  # markdown control characters are escaped
    assert "free text never shown" not in detail  # considerations stay in the summary page


def test_unanswered_safety_questions_become_the_nurses_next_questions() -> None:
    detail = card("consultation", unanswered_safety_questions=["face_drooping"])["detail"]
    assert "Has one side of your face drooped?" in detail


def test_same_result_same_card_uuid_other_result_other_uuid() -> None:
    first = card("consultation")["uuid"]
    assert card("consultation")["uuid"] == first
    other = patient_view_card(
        assessment_id="a1b2",
        result_id="r-2",
        result=result("consultation"),
        scored_at=SCORED_AT,
        reporting_url="https://reports.example",
    )
    assert other["uuid"] != first


def test_summary_is_cut_below_140_characters_for_long_titles() -> None:
    long_flag = {**MND_FLAG, "title": "A very long red flag title " * 10}
    summary = card_summary("consultation_24", [long_flag, MND_FLAG])
    assert len(summary) < 140
    assert summary.endswith("…")
    assert "2 red flags" in summary


def test_discovery_lists_the_patient_view_service() -> None:
    services = discovery_document(30)["services"]
    assert [(s["hook"], s["id"]) for s in services] == [("patient-view", PATIENT_VIEW_SERVICE_ID)]
    assert all(s["title"] and s["description"] for s in services)


def test_patient_words_in_a_card_carry_no_control_or_bidi_characters() -> None:
    sneaky = "medication:statin (Lipitor\u202e exe.gpj\u2066 *bold*\x07\n[link](javascript:x))"
    flag = {**STROKE_FLAG, "because": [sneaky]}
    card = patient_view_card(
        assessment_id="a-1",
        result_id="r-1",
        result=result("consultation", [flag]),
        scored_at=SCORED_AT,
        reporting_url="https://myotriage.example",
    )
    text = card["detail"]
    for char in ("\u202e", "\u2066", "\x07", "\n[link]"):
        assert char not in text
    # Markdown in the patient's words is shown literally, not rendered.
    assert "\\*bold\\*" in text and "\\[link\\]" in text

"""The clinician's summary, built from stored rows without a database."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.reporting.summaries import clinician_summary, medication_change_lines
from shared.models import Assessment
from tests.factories import WITH_MEDICATION_CHANGES, report


def summary_of(body: dict[str, Any]) -> dict[str, Any]:
    assessment = Assessment(
        id="a-1",
        status="queued",
        source="api",
        patient_ref=body["patient"]["id"],
        report=body,
        created_at=datetime(2026, 12, 1, 9, 0, tzinfo=UTC),
    )
    return clinician_summary(assessment, None, [assessment], [])


def test_the_summary_shows_medicine_changes_most_recent_first() -> None:
    summary = summary_of(report(WITH_MEDICATION_CHANGES))
    assert summary["medication_changes"] == [
        "levothyroxine: dose increased 12 hours ago",
        "atorvastatin: started 30 days ago",
        "simvastatin 40 mg: stopped 31 days ago",
    ]
    assert summary["medications"] == ["atorvastatin 20 mg"]


def test_a_report_without_medicine_changes_shows_none() -> None:
    assert summary_of(report(medication_changes=[]))["medication_changes"] == []
    # Stored before contract v1.1: the key is absent.
    assert summary_of(report())["medication_changes"] == []


def test_days_ago_reads_as_a_clinician_would_say_it() -> None:
    def line(days_ago: float) -> str:
        change = {"name": "x", "change": "stopped", "days_ago": days_ago}
        return medication_change_lines([change])[0]

    assert line(0) == "x: stopped less than an hour ago"
    assert line(1 / 24) == "x: stopped 1 hour ago"
    assert line(0.25) == "x: stopped 6 hours ago"
    assert line(1) == "x: stopped 1 day ago"
    assert line(2.5) == "x: stopped 2.5 days ago"
    assert line(30.0) == "x: stopped 30 days ago"
    assert line(36500) == "x: stopped 36500 days ago"


def test_every_question_the_engine_can_ask_next_has_words_for_the_nurse() -> None:
    from services.reporting.summaries import SAFETY_QUESTION_TEXT
    from services.rules.engine import load_ruleset

    ruleset = load_ruleset()
    asked = set(ruleset.general_screen) | {
        q for pattern in ruleset.benign_patterns for q in pattern.key_questions
    }
    assert asked <= set(SAFETY_QUESTION_TEXT)

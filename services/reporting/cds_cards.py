"""CDS Hooks cards from an already computed triage result. Pure: no Flask, no SQL, no I/O.

One card per patient-view: the patient's latest scored assessment (the caller picks it). The card
carries rule titles, codes and sources only, never the patient's own words.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from services.reporting.summaries import LEVEL_MEANING, SAFETY_QUESTION_TEXT
from shared.display_text import display_text

PATIENT_VIEW_SERVICE_ID = "myotriage-patient-view"
SUMMARY_LIMIT = 140  # CDS Hooks: summary "<140 characters"
# Card uuids are derived from the result, so the same result always shows the same card and
# feedback on it can be traced back to the result.
CARD_NAMESPACE = uuid.UUID("0b6f1f4e-8f0e-4c57-9a53-3c1f2f1e6a11")

INDICATOR = {
    "emergency_ambulance": "critical",
    "emergency": "critical",
    "consultation_24": "warning",
    "consultation": "info",
    "self_care": "info",
}
LEVEL_HEADLINE = {
    "emergency_ambulance": "EMERGENCY - call an ambulance now",
    "emergency": "EMERGENCY - emergency department now",
    "consultation_24": "Urgent - clinician within 24 h",
    "consultation": "Needs a GP appointment (within 2 weeks)",
    "self_care": "Self-care with safety-netting",
}


def discovery_document(lookback_days: int) -> dict[str, Any]:
    """The `GET /cds-services` answer."""
    return {
        "services": [
            {
                "hook": "patient-view",
                "id": PATIENT_VIEW_SERVICE_ID,
                "title": "MyoTriage muscle symptom triage",
                "description": (
                    "Shows the triage level, red flags and open safety questions from the "
                    "patient's latest MyoTriage assessment of muscle fatigue, weakness, "
                    f"twitching or cramps (last {lookback_days} days)."
                ),
                # We answer from our own stored results and need nothing from the EHR.
                "prefetch": {},
            }
        ]
    }


def card_uuid(result_id: str) -> str:
    """The stable uuid of the patient-view card for one result."""
    return str(uuid.uuid5(CARD_NAMESPACE, f"patient-view:{result_id}"))


def patient_view_card(
    *,
    assessment_id: str,
    result_id: str,
    result: dict[str, Any],
    scored_at: datetime,
    reporting_url: str,
) -> dict[str, Any]:
    """The card for one scored assessment: level as indicator, red flags and sources as detail."""
    level = result["triage"]
    flags = result.get("red_flags", [])
    summary_url = f"{reporting_url}/v1/reports/assessments/{assessment_id}"
    return {
        "uuid": card_uuid(result_id),
        "summary": card_summary(level, flags),
        "indicator": INDICATOR[level],
        "detail": card_detail(result, scored_at),
        "source": {
            "label": "MyoTriage",
            "url": reporting_url,
            "topic": {
                "system": "https://myotriage.example/fhir/CodeSystem/triage-level",
                "code": level,
                "display": LEVEL_HEADLINE[level],
            },
        },
        "links": [{"label": "Clinician summary", "url": summary_url, "type": "absolute"}],
    }


def card_summary(level: str, flags: list[dict[str, Any]]) -> str:
    """One line under 140 characters: the level, then how many red flags and the first one."""
    text = f"MyoTriage: {LEVEL_HEADLINE[level]}"
    if flags:
        count = len(flags)
        text += f" - {count} red flag{'s' if count > 1 else ''}: {flags[0]['title']}"
    if len(text) >= SUMMARY_LIMIT:
        text = text[: SUMMARY_LIMIT - 2].rstrip() + "…"
    return text


def card_detail(result: dict[str, Any], scored_at: datetime) -> str:
    """Markdown: the level and what it asks, each red flag with why and its source, questions."""
    level = result["triage"]
    lines = [
        f"**{LEVEL_HEADLINE[level]}.** {LEVEL_MEANING[level]}",
        "",
        f"Priority {result.get('priority', 0)} within the level; assessed "
        f"{scored_at.strftime('%Y-%m-%d %H:%M')} UTC under rule set "
        f"{result.get('ruleset_version', 'unknown')}.",
    ]
    flags = result.get("red_flags", [])
    if flags:
        lines += ["", "**Red flags**", ""]
        for flag in flags:
            # `because` can quote the patient's own words (medicine names): cleaned, then escaped.
            because = ", ".join(_md(display_text(b)) for b in flag.get("because", []))
            line = f"- **{_md(flag['title'])}** ({flag.get('level', level)})"
            if because:
                line += f": {because}"
            if flag.get("source"):
                line += f". *Source: {_md(flag['source'])}*"
            lines.append(line)
    questions = result.get("unanswered_safety_questions", [])
    if questions:
        lines += ["", "**Safety questions not yet answered**", ""]
        lines += [f"- {SAFETY_QUESTION_TEXT.get(code, code)}" for code in questions]
    lines += ["", "*Decision support from reported symptoms, not a diagnosis.*"]
    return "\n".join(lines)


def _md(text: str) -> str:
    # Rule text is ours, but keep markdown control characters literal all the same.
    for char in ("\\", "*", "_", "`", "[", "]"):
        text = text.replace(char, "\\" + char)
    return text

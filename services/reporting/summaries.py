"""Building the clinician's view of an assessment from stored rows (no Flask, no SQL)."""

from __future__ import annotations

from typing import Any

from shared.models import Assessment, TriageResult
from shared.vocabulary import MEDICATION_CHANGES, SAFETY_QUESTIONS

# What each level asks of the clinician (CLINICAL.md "Triage levels").
LEVEL_MEANING = {
    "emergency_ambulance": "Call an ambulance (999/112) now.",
    "emergency": "Go to an emergency department now; do not drive.",
    "consultation_24": "Speak to a clinician within 24 hours.",
    "consultation": "Book a doctor's appointment (days, at most 2 weeks); priority orders them.",
    "self_care": "Self-care, with explicit advice on when to seek help.",
}

# The nurse's next question for each unanswered safety question.
SAFETY_QUESTION_TEXT = {
    "breathless_at_rest": "Are you short of breath while resting?",
    "breathless_lying_flat": "Are you short of breath when lying flat?",
    "swallowing_difficulty": "Do you have any difficulty swallowing?",
    "speech_difficulty": "Has your speech changed or become slurred?",
    "face_drooping": "Has one side of your face drooped?",
    "dark_urine": "Is your urine dark, like tea or cola?",
    "chest_pain": "Do you have any chest pain?",
    "saddle_numbness": "Is there numbness between your legs or around your bottom?",
    "bladder_bowel_change": "Any new problem controlling your bladder or bowel?",
    "confusion": "Has anyone noticed you being confused or unusually drowsy?",
    # Key questions of the benign patterns (rule set 2026.12.1, CLINICAL.md rule 7 a).
    "muscle_swelling": "Is the sore muscle swollen?",
    "pain_out_of_proportion": "Is the pain far worse than the exercise or injury explains?",
    "muscle_wasting": "Has any muscle become thinner or wasted?",
    "weak_grip": "Is your grip weaker than usual (jars, keys)?",
    "twitching_multiple_sites": "Is the twitching in more than one place?",
    "calf_swelling_one_side": "Is one calf swollen?",
    "warm_red_skin": "Is the skin over the painful area warm or red?",
    "breathless_on_exertion": "Do you get more short of breath than usual on exertion?",
    "fever": "Do you have a fever, or feel hot and shivery?",
    "numbness_or_tingling": "Any numbness or pins and needles?",
    "palpitations": "Have you noticed a racing, pounding or irregular heartbeat?",
    "weight_loss": "Have you lost weight without trying?",
    "mottled_skin": "Is your skin, lips or tongue blue, grey, pale or blotchy?",
}
assert set(SAFETY_QUESTIONS) <= set(SAFETY_QUESTION_TEXT)

# How each medication_changes[].change reads in a sentence.
MEDICATION_CHANGE_TEXT = {
    "started": "started",
    "dose_increased": "dose increased",
    "stopped": "stopped",
}
assert set(MEDICATION_CHANGE_TEXT) == set(MEDICATION_CHANGES)


def _days_ago(days: float) -> str:
    """`days_ago` as a clinician would say it: "3 hours ago", "1 day ago", "2.5 days ago"."""
    if days < 1:
        hours = round(days * 24)
        if hours < 1:
            return "less than an hour ago"
        return "1 hour ago" if hours == 1 else f"{hours} hours ago"
    return "1 day ago" if days == 1 else f"{days:g} days ago"


def medication_change_lines(changes: list[dict[str, Any]]) -> list[str]:
    """Recent medicine changes, most recent first: "atorvastatin: started 30 days ago"."""
    ordered = sorted(changes, key=lambda change: change["days_ago"])
    return [
        f"{change['name']}: {MEDICATION_CHANGE_TEXT[change['change']]} "
        f"{_days_ago(change['days_ago'])}"
        for change in ordered
    ]


def clinician_summary(
    assessment: Assessment,
    result: TriageResult | None,
    history: list[Assessment],
    older_results: list[TriageResult],
) -> dict[str, Any]:
    """One page of facts for a clinician: what was reported, the triage, and why."""
    report = assessment.report
    triage: dict[str, Any] | None = None
    if result is not None:
        body = result.result
        triage = {
            "level": result.triage_level,
            "meaning": LEVEL_MEANING[result.triage_level],
            "priority": result.priority,
            "red_flags": body.get("red_flags", []),
            "next_questions": [
                {"code": code, "question": SAFETY_QUESTION_TEXT.get(code, code)}
                for code in body.get("unanswered_safety_questions", [])
            ],
            "considerations": body.get("considerations", []),
            "advice": body.get("advice", []),
            "not_understood": body.get("not_understood", {}),
            "medication_classes": body.get("medication_classes", []),
            "condition_classes": body.get("condition_classes", []),
            "ruleset_version": result.ruleset_version,
            "scored_at": result.created_at.isoformat(),
        }
    return {
        "assessment_id": assessment.id,
        "status": assessment.status,
        "source": assessment.source,
        "received_at": assessment.created_at.isoformat(),
        "patient": report["patient"],
        "presentation": {
            key: report.get(key)
            for key in (
                "complaints",
                "onset_days",
                "sudden_onset",
                "course",
                "resolved_hours_ago",
                "exercise_related",
                "improves_with_rest",
                "weakness_distribution",
                "daily_tasks_impaired",
                "pain_level",
                "fatigue_level",
                "cramp_max_minutes",
                "glucose_mmol_l",
            )
        },
        "findings_present": sorted(k for k, v in report.get("findings", {}).items() if v),
        "findings_absent": sorted(k for k, v in report.get("findings", {}).items() if not v),
        "medications": report.get("medications", []),
        # Reports stored before contract v1.1 have no medication_changes.
        "medication_changes": medication_change_lines(report.get("medication_changes", [])),
        "conditions": report.get("conditions", []),
        "patient_words": report.get("free_text"),
        "triage": triage,
        "earlier_rulesets": [
            {"ruleset_version": r.ruleset_version, "level": r.triage_level, "priority": r.priority}
            for r in older_results
        ],
        "history": [
            {"assessment_id": a.id, "received_at": a.created_at.isoformat(), "status": a.status}
            for a in history
            if a.id != assessment.id
        ],
        "disclaimer": (
            "Decision support, not a diagnosis: considerations are possibilities to review."
        ),
    }


def queue_item(assessment: Assessment, result: TriageResult, reporting_url: str) -> dict[str, Any]:
    """One row of the triage queue."""
    return {
        "assessment_id": assessment.id,
        "patient_id": assessment.patient_ref,
        "age": assessment.report["patient"]["age"],
        "triage": result.triage_level,
        "priority": result.priority,
        "red_flags": [flag["title"] for flag in result.result.get("red_flags", [])],
        "next_questions": result.result.get("unanswered_safety_questions", []),
        "received_at": assessment.created_at.isoformat(),
        "scored_at": result.created_at.isoformat(),
        "summary_url": f"{reporting_url}/v1/reports/assessments/{assessment.id}",
    }

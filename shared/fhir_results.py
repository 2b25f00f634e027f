"""A triage result as FHIR R4 resources: one `RiskAssessment`, one `DetectedIssue` per red flag.

Pure: stored values in, FHIR JSON out (built through the `fhir.resources` R4B models, so what we
send validates). No Flask, no SQL. Only codes, rule titles, sources and ids go in: never the
patient's own words.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.detectedissue import DetectedIssue
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.riskassessment import RiskAssessment

from shared.display_text import display_text

FHIR_MEDIA_TYPE = "application/fhir+json"
RISK_PROBABILITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/risk-probability"
TRIAGE_LEVEL_SYSTEM = "https://myotriage.example/fhir/CodeSystem/triage-level"
RED_FLAG_SYSTEM = "https://myotriage.example/fhir/CodeSystem/red-flag"
ASSESSMENT_ID_SYSTEM = "https://myotriage.example/fhir/sid/assessment"

# The level as a qualitative risk (risk-probability codes). "certain" is never claimed: this is
# triage from reported symptoms, not a diagnosis. Both emergency levels are "high"; the exact
# level is in prediction.outcome with our own code system.
QUALITATIVE_RISK = {
    "emergency_ambulance": ("high", "High likelihood"),
    "emergency": ("high", "High likelihood"),
    "consultation_24": ("moderate", "Moderate likelihood"),
    "consultation": ("low", "Low likelihood"),
    "self_care": ("negligible", "Negligible likelihood"),
}
# DetectedIssue.severity (high | moderate | low) from a red flag's own level.
ISSUE_SEVERITY = {
    "emergency_ambulance": "high",
    "emergency": "high",
    "consultation_24": "moderate",
    "consultation": "low",
    "self_care": "low",
}
LEVEL_DISPLAY = {
    "emergency_ambulance": "Emergency: call an ambulance",
    "emergency": "Emergency department now",
    "consultation_24": "Clinician within 24 hours",
    "consultation": "Doctor's appointment within 2 weeks",
    "self_care": "Self-care with safety-netting",
}
# What each level asks of the clinician (kept in step with summaries.LEVEL_MEANING).
LEVEL_ACTION = {
    "emergency_ambulance": "Call an ambulance (999/112) now.",
    "emergency": "Go to an emergency department now; do not drive.",
    "consultation_24": "Speak to a clinician within 24 hours.",
    "consultation": "Book a doctor's appointment (days, at most 2 weeks).",
    "self_care": "Self-care, with explicit advice on when to seek help.",
}
DISCLAIMER = "Decision support from reported symptoms, not a diagnosis."


@dataclass(frozen=True)
class ScoredAssessment:
    """What the FHIR builders need from an assessment and its current result (stored values)."""

    assessment_id: str
    patient_ref: str
    result_id: str
    triage_level: str
    priority: int
    ruleset_version: str
    scored_at: datetime
    result: dict[str, Any]
    # True when earlier results exist (re-scored under a newer rule set).
    amended: bool = False

    @classmethod
    def from_rows(cls, assessment: Any, result: Any, *, amended: bool = False) -> ScoredAssessment:
        """From an `Assessment` row and its `TriageResult` row."""
        return cls(
            assessment_id=assessment.id,
            patient_ref=assessment.patient_ref,
            result_id=result.id,
            triage_level=result.triage_level,
            priority=result.priority,
            ruleset_version=result.ruleset_version,
            scored_at=result.created_at,
            result=result.result,
            amended=amended,
        )


def risk_assessment(scored: ScoredAssessment, base_url: str) -> dict[str, Any]:
    """The result as a validated FHIR `RiskAssessment` (id = the assessment id)."""
    level = scored.triage_level
    risk_code, risk_display = QUALITATIVE_RISK[level]
    flags = scored.result.get("red_flags", [])
    rationale = (
        "Red flags: " + "; ".join(f"{f['title']} ({f['id']})" for f in flags)
        if flags
        else "No red flag fired."
    )
    resource = {
        "resourceType": "RiskAssessment",
        "id": scored.assessment_id,
        "meta": {"versionId": scored.result_id, "lastUpdated": _instant(scored.scored_at)},
        "identifier": [{"system": ASSESSMENT_ID_SYSTEM, "value": scored.assessment_id}],
        "status": "amended" if scored.amended else "final",
        "method": {
            "coding": [
                {
                    "system": "https://myotriage.example/fhir/CodeSystem/ruleset",
                    "code": scored.ruleset_version,
                    "display": f"MyoTriage rule set {scored.ruleset_version}",
                }
            ],
            "text": f"MyoTriage rule set {scored.ruleset_version}",
        },
        "subject": {"reference": f"Patient/{scored.patient_ref}"},
        "occurrenceDateTime": _instant(scored.scored_at),
        "basis": [{"reference": f"QuestionnaireResponse/{scored.assessment_id}"}],
        "prediction": [
            {
                "outcome": {
                    "coding": [
                        {
                            "system": TRIAGE_LEVEL_SYSTEM,
                            "code": level,
                            "display": LEVEL_DISPLAY[level],
                        }
                    ],
                    "text": LEVEL_DISPLAY[level],
                },
                "qualitativeRisk": {
                    "coding": [
                        {
                            "system": RISK_PROBABILITY_SYSTEM,
                            "code": risk_code,
                            "display": risk_display,
                        }
                    ]
                },
                # probabilityDecimal is deliberately absent: rules give levels, not probabilities.
                "rationale": rationale,
            }
        ],
        "mitigation": LEVEL_ACTION[level],
        "note": [{"text": f"Priority {scored.priority} within the level. {DISCLAIMER}"}],
    }
    return _validated(RiskAssessment, resource)


def detected_issues(scored: ScoredAssessment, base_url: str) -> list[dict[str, Any]]:
    """One validated FHIR `DetectedIssue` per fired red flag, in the result's order."""
    return [
        detected_issue(scored, index, base_url)
        for index in range(len(scored.result.get("red_flags", [])))
    ]


def detected_issue(scored: ScoredAssessment, index: int, base_url: str) -> dict[str, Any]:
    """The `index`-th red flag of the result as a `DetectedIssue` (id `<assessment>-<n>`)."""
    flag = scored.result["red_flags"][index]
    level = flag.get("level", scored.triage_level)
    # `because` can quote the patient's own words (medicine names): one clean line each.
    because = [display_text(item) for item in flag.get("because", [])]
    source = flag.get("source") or "MyoTriage rule set"
    detail = f"{flag['title']}."
    if because:
        detail += f" Because: {', '.join(because)}."
    detail += f" Source: {source}."
    mitigation_text = LEVEL_ACTION.get(level, LEVEL_ACTION[scored.triage_level])
    if flag.get("note"):
        mitigation_text += f" {flag['note']}"
    resource: dict[str, Any] = {
        "resourceType": "DetectedIssue",
        "id": detected_issue_id(scored.assessment_id, index),
        "meta": {"versionId": scored.result_id, "lastUpdated": _instant(scored.scored_at)},
        "identifier": [{"system": RED_FLAG_SYSTEM, "value": flag["id"]}],
        "status": "final",
        "code": {
            "coding": [{"system": RED_FLAG_SYSTEM, "code": flag["id"], "display": flag["title"]}],
            "text": flag["title"],
        },
        "severity": ISSUE_SEVERITY.get(level, "low"),
        "patient": {"reference": f"Patient/{scored.patient_ref}"},
        "identifiedDateTime": _instant(scored.scored_at),
        "implicated": [
            {"reference": f"QuestionnaireResponse/{scored.assessment_id}"},
            {"reference": f"RiskAssessment/{scored.assessment_id}"},
        ],
        "detail": detail,
        "mitigation": [
            {
                "action": {
                    "coding": [
                        {
                            "system": TRIAGE_LEVEL_SYSTEM,
                            "code": level,
                            "display": LEVEL_DISPLAY.get(level, level),
                        }
                    ],
                    "text": mitigation_text,
                },
                "date": _instant(scored.scored_at),
            }
        ],
    }
    if because:
        resource["evidence"] = [{"code": [{"text": item} for item in because]}]
    return _validated(DetectedIssue, resource)


def detected_issue_id(assessment_id: str, index: int) -> str:
    """`<assessment id>-<n>`: a valid FHIR id (≤ 64 of [A-Za-z0-9-.]) that can be read back."""
    return f"{assessment_id}-{index}"


def parse_detected_issue_id(resource_id: str) -> tuple[str, int] | None:
    """The (assessment id, flag index) of a DetectedIssue id, or None if it is not one of ours."""
    assessment_id, sep, index = resource_id.rpartition("-")
    # isdigit() alone admits '²', which int() refuses; a FHIR id is at most 64 characters.
    digits = index.isascii() and index.isdigit() and len(index) <= 27
    if not sep or not digits or len(assessment_id) != 36:
        return None
    return assessment_id, int(index)


def searchset(resources: list[dict[str, Any]], base_url: str, self_url: str) -> dict[str, Any]:
    """A validated `searchset` Bundle of `resources`, each with its absolute fullUrl."""
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "link": [{"relation": "self", "url": self_url}],
        "entry": [
            {
                "fullUrl": f"{base_url}/fhir/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }
    return _validated(Bundle, bundle)


def collection(resources: list[dict[str, Any]], base_url: str) -> dict[str, Any]:
    """A `collection` Bundle (the FHIR part of a callback payload)."""
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": f"{base_url}/fhir/{r['resourceType']}/{r['id']}", "resource": r}
            for r in resources
        ],
    }
    return _validated(Bundle, bundle)


def result_bundle(scored: ScoredAssessment, base_url: str) -> dict[str, Any]:
    """The RiskAssessment and its DetectedIssues as one collection Bundle."""
    return collection(
        [risk_assessment(scored, base_url), *detected_issues(scored, base_url)], base_url
    )


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    """An `OperationOutcome` with one issue (FHIR's error body)."""
    return _validated(
        OperationOutcome,
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
        },
    )


def _validated(model: Any, resource: dict[str, Any]) -> dict[str, Any]:
    # Round-trip through the R4B model: a wrong element name or type fails here, in our tests,
    # rather than in an EHR's validator.
    parsed = model.model_validate(resource)
    return parsed.model_dump(mode="json", exclude_none=True)  # type: ignore[no-any-return]


def _instant(moment: datetime) -> str:
    # FHIR instants need a zone; SQLite hands back naive datetimes that we stored as UTC.
    text = moment.isoformat()
    return text if moment.tzinfo is not None else text + "+00:00"

"""From a v1 symptom report to the flat dictionary of facts that rule conditions read.

The report is read defensively: the API validates it first, but the engine must still score a
report with optional keys missing (the contract defaults apply) and say what it could not read
instead of failing. Findings keep three values (True = yes, False = no, None = not asked), because
the rule of absence makes "unknown" different from "no".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

from shared.vocabulary import (
    COMPLAINTS,
    COURSES,
    FINDING_CODES,
    SEXES,
    WEAKNESS_DISTRIBUTIONS,
)

FactKind = Literal["bool", "tristate", "number", "nullable_number", "enum", "list"]


@dataclass(frozen=True)
class FactType:
    """The type of one fact, so that conditions can be checked when the rule set loads.

    `guard` names a boolean fact whose truth guarantees that this nullable number is set; a
    comparison on a nullable number must sit behind such a guard (or an explicit `!== null`).
    """

    kind: FactKind
    values: frozenset[str] = frozenset()
    guard: str | None = None
    finding: bool = False


# The report fields every condition may read, besides the findings and the derived facts.
REPORT_FACTS: Final[dict[str, FactType]] = {
    "age": FactType("number"),
    "sex": FactType("enum", frozenset(SEXES)),
    "pregnant": FactType("bool"),
    "complaints": FactType("list", frozenset(COMPLAINTS)),
    "onset_days": FactType("number"),
    "sudden_onset": FactType("bool"),
    "course": FactType("enum", frozenset(COURSES)),
    "resolved": FactType("bool"),
    "resolved_hours_ago": FactType("nullable_number", guard="resolved"),
    "exercise_related": FactType("bool"),
    "improves_with_rest": FactType("tristate"),
    "weakness_distribution": FactType("enum", frozenset(WEAKNESS_DISTRIBUTIONS)),
    "daily_tasks_impaired": FactType("bool"),
    "pain_level": FactType("number"),
    "fatigue_level": FactType("nullable_number"),
    "cramp_max_minutes": FactType("nullable_number"),
    "glucose_mmol_l": FactType("nullable_number"),
}

# Contract defaults (SYMPTOM_REPORT.md) for optional keys.
_BOOL_DEFAULTS: Final = {
    "sudden_onset": False,
    "exercise_related": False,
    "daily_tasks_impaired": False,
}
_NULLABLE_NUMBERS: Final = ("fatigue_level", "cramp_max_minutes", "glucose_mmol_l")

# Required fields that a report might still lack when it reaches the engine directly (batch
# tools, tests). Each is assumed in the direction that cannot under-triage, and reported.
_MISSING_ONSET_DAYS: Final = 0.0  # "just started" keeps every acute rule in play
_MISSING_COURSE: Final = "worsening"
_MISSING_AGE: Final = 65  # counts the age risk modifier rather than missing it

_FINDING_SET: Final = frozenset(FINDING_CODES)
_NUMBER_TYPES: Final = frozenset({int, float})  # exact: a bool is not a number here
# Every finding starts unknown (rule of absence); copying a template is cheaper than rebuilding.
_TEMPLATE: Final[dict[str, Any]] = dict.fromkeys(FINDING_CODES)
_SEX_VALUES: Final = REPORT_FACTS["sex"].values
_COMPLAINT_VALUES: Final = REPORT_FACTS["complaints"].values
_COURSE_VALUES: Final = REPORT_FACTS["course"].values
_DISTRIBUTION_VALUES: Final = REPORT_FACTS["weakness_distribution"].values


@dataclass
class ReportReading:
    """What the engine could not read from a report, kept for the clinician."""

    fields: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)


def _number(value: Any) -> float | int | None:
    # Exact types: bool is an int in Python, but a boolean where a number belongs is not a
    # number; NaN is not a number either.
    kind = type(value)
    if (kind is int or kind is float) and value == value:
        return value  # type: ignore[no-any-return]
    return None


def base_facts(report: dict[str, Any]) -> tuple[dict[str, Any], ReportReading]:
    """Return the report's own facts (defaults applied) and what could not be read.

    Medication and condition classes are added by the caller (see `synonyms`), derived facts by
    the rule set.
    """
    facts = _well_formed_facts(report)
    if facts is not None:
        return facts, ReportReading()
    return _careful_facts(report)


def _well_formed_facts(report: dict[str, Any]) -> dict[str, Any] | None:
    """The facts of a report that follows the contract exactly, or None to read it carefully.

    Almost every report has passed the API's validation, so this path only checks and copies;
    at the first value `_careful_facts` would default or record, it gives up, which keeps the
    two paths' facts identical (the tests compare them). Keys are set in the same order.
    """
    try:
        facts: dict[str, Any] = _TEMPLATE.copy()
        findings = report.get("findings")
        if type(findings) is dict:
            facts.update(findings)
            if len(facts) != len(_TEMPLATE):  # a code that is not a finding code
                return None
            for value in findings.values():
                if value is not True and value is not False and value is not None:
                    return None
        elif findings is not None:
            return None

        patient = report.get("patient")
        if type(patient) is not dict:
            return None
        age = patient.get("age")
        sex = patient.get("sex", "unknown")
        pregnant = patient.get("pregnant", False)
        if pregnant is None:
            pregnant = False
        # Numbers are checked as `_number` checks them, inline: exact int or float, not NaN.
        if (
            type(age) not in _NUMBER_TYPES
            or age != age
            or sex not in _SEX_VALUES
            or not (pregnant is True or pregnant is False)
        ):
            return None
        facts["age"] = age
        facts["sex"] = sex
        facts["pregnant"] = pregnant

        complaints = report.get("complaints")
        if not (
            type(complaints) is list
            and _COMPLAINT_VALUES.issuperset(complaints)
            and len(set(complaints)) == len(complaints)  # duplicates: the careful path drops them
        ):
            return None
        facts["complaints"] = list(complaints)

        onset: Any = report.get("onset_days")
        course = report.get("course")
        if type(onset) not in _NUMBER_TYPES or not onset >= 0 or course not in _COURSE_VALUES:
            return None
        facts["onset_days"] = onset
        facts["course"] = course

        for name, default in _BOOL_DEFAULTS.items():
            value = report.get(name, default)
            if value is None:
                value = default
            elif value is not True and value is not False:
                return None
            facts[name] = value

        rest = report.get("improves_with_rest")
        if rest is not None and rest is not True and rest is not False:
            return None
        facts["improves_with_rest"] = rest

        resolved: Any = report.get("resolved_hours_ago")
        if resolved is not None and (type(resolved) not in _NUMBER_TYPES or not resolved >= 0):
            return None
        facts["resolved_hours_ago"] = resolved
        facts["resolved"] = resolved is not None

        distribution = report.get("weakness_distribution", "none")
        if distribution is None:
            distribution = "none"
        elif distribution not in _DISTRIBUTION_VALUES:
            return None
        facts["weakness_distribution"] = distribution

        pain = report.get("pain_level", 0)
        if pain is None:
            pain = 0
        elif type(pain) not in _NUMBER_TYPES or pain != pain:
            return None
        facts["pain_level"] = pain

        for name in _NULLABLE_NUMBERS:
            value = report.get(name)
            if value is not None and (type(value) not in _NUMBER_TYPES or value != value):
                return None
            facts[name] = value
    except TypeError:
        # An unhashable value where a code belongs: let the careful path meet it.
        return None
    return facts


def _careful_facts(report: dict[str, Any]) -> tuple[dict[str, Any], ReportReading]:
    """Read any report, applying defaults and recording what could not be read."""
    reading = ReportReading()
    facts: dict[str, Any] = _TEMPLATE.copy()

    findings = report.get("findings")
    if type(findings) is dict:
        for code, value in findings.items():
            if (value is True or value is False) and code in _FINDING_SET:
                facts[code] = value
            elif code not in _FINDING_SET:
                reading.findings.append(str(code))
            elif value is not None:
                reading.findings.append(f"{code}={value!r}")
    elif findings is not None:
        reading.fields.append("findings")

    patient = report.get("patient")
    if not isinstance(patient, dict):
        patient = {}
    age = _number(patient.get("age"))
    if age is None:
        reading.fields.append("patient.age")
        age = _MISSING_AGE
    facts["age"] = age
    sex = patient.get("sex", "unknown")
    if sex not in _SEX_VALUES:
        reading.fields.append("patient.sex")
        sex = "unknown"
    facts["sex"] = sex
    pregnant = patient.get("pregnant", False)
    if pregnant is None:
        pregnant = False
    elif not isinstance(pregnant, bool):
        reading.fields.append("patient.pregnant")
        pregnant = False
    facts["pregnant"] = pregnant

    complaints = report.get("complaints")
    known_complaints: list[str] = []
    if isinstance(complaints, list):
        for complaint in complaints:
            if complaint in _COMPLAINT_VALUES:
                if complaint not in known_complaints:
                    known_complaints.append(complaint)
            else:
                reading.fields.append(f"complaints:{complaint}")
    else:
        reading.fields.append("complaints")
    facts["complaints"] = known_complaints

    onset = _number(report.get("onset_days"))
    if onset is None or onset < 0:
        reading.fields.append("onset_days")
        onset = _MISSING_ONSET_DAYS
    facts["onset_days"] = onset

    course = report.get("course")
    if course not in _COURSE_VALUES:
        reading.fields.append("course")
        course = _MISSING_COURSE
    facts["course"] = course

    for name, default in _BOOL_DEFAULTS.items():
        value = report.get(name, default)
        if value is not True and value is not False:
            if value is not None:
                reading.fields.append(name)
            value = default
        facts[name] = value

    rest = report.get("improves_with_rest")
    if rest is not None and not isinstance(rest, bool):
        reading.fields.append("improves_with_rest")
        rest = None
    facts["improves_with_rest"] = rest

    resolved = report.get("resolved_hours_ago")
    resolved_number = _number(resolved)
    if resolved is not None and (resolved_number is None or resolved_number < 0):
        reading.fields.append("resolved_hours_ago")
        resolved_number = None
    facts["resolved_hours_ago"] = resolved_number
    facts["resolved"] = resolved_number is not None

    distribution = report.get("weakness_distribution", "none")
    if distribution is None:
        distribution = "none"
    elif distribution not in _DISTRIBUTION_VALUES:
        # An unreadable distribution may still be true weakness: count it as generalized
        # weakness rather than as none, and say so.
        reading.fields.append("weakness_distribution")
        distribution = "generalized"
    facts["weakness_distribution"] = distribution

    pain = report.get("pain_level", 0)
    pain_number = _number(pain) if pain is not None else 0
    if pain_number is None:
        reading.fields.append("pain_level")
        pain_number = 0
    facts["pain_level"] = pain_number

    for name in _NULLABLE_NUMBERS:
        raw = report.get(name)
        value = _number(raw)
        if raw is not None and value is None:
            reading.fields.append(name)
        facts[name] = value
    return facts, reading

"""The symptom report contract as JSON Schema, compiled: intake's fast path for valid reports.

`SymptomReportSchema` (marshmallow) is the contract's reference: it names every bad field, and
its answer is final. But it costs more than anything else intake does per request, and almost
every report is valid. So intake first runs this compiled JSON Schema (fastjsonschema turns it
into straight-line Python): a valid report is accepted with the contract's defaults filled in,
exactly as marshmallow would fill them; for anything else `fast_load` returns None and the
caller asks marshmallow, which reports every problem. A differential test
(tests/unit/test_report_json_schema.py) holds the two to the same answers on valid, invalid and
randomly mutated reports.

JSON Schema cannot say "a finite number that fits in a double", which StrictNumber requires,
and its "integer" admits 3.0, which StrictInteger reads as 3; `fast_load` sees to both. The
schema is also published at `GET /v1/schemas/symptom-report` for clients that want to check
reports before sending them.

Patterns are ECMA-262, where `$` without the multiline flag is the end of input. fastjsonschema
compiles them for Python's `re` with every unescaped `$` rewritten to `\\Z`, so "MRN-1\\n" fails
the patient id pattern here as it does in marshmallow (FullMatch) and in a client's validator.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Final

import fastjsonschema

from shared.schemas.fields import PLAIN_TEXT_PATTERN
from shared.schemas.symptom_report import PATIENT_ID_PATTERN
from shared.vocabulary import (
    COMPLAINTS,
    COURSES,
    FINDING_CODES,
    MEDICATION_CHANGES,
    SEXES,
    WEAKNESS_DISTRIBUTIONS,
)


def _nullable(kind: str, **rules: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], "default": None, **rules}


def _text_list(max_items: int, max_chars: int) -> dict[str, Any]:
    return {
        "type": "array",
        "maxItems": max_items,
        "items": {
            "type": "string",
            "minLength": 1,
            "maxLength": max_chars,
            "pattern": PLAIN_TEXT_PATTERN,
        },
        "default": [],
    }


SYMPTOM_REPORT_JSON_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "$id": "https://myotriage.example/schemas/symptom-report-v1.json",
    "title": "MyoTriage symptom report, v1.1",
    "type": "object",
    "additionalProperties": False,
    "required": ["patient", "complaints", "onset_days", "course"],
    "properties": {
        "patient": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "age"],
            "properties": {
                "id": {"type": "string", "pattern": PATIENT_ID_PATTERN},
                "age": {"type": "integer", "minimum": 16, "maximum": 120},
                "sex": {"type": "string", "enum": list(SEXES), "default": "unknown"},
                "pregnant": {"type": "boolean", "default": False},
            },
        },
        "complaints": {
            "type": "array",
            "minItems": 1,
            "maxItems": len(COMPLAINTS),
            "uniqueItems": True,
            "items": {"type": "string", "enum": list(COMPLAINTS)},
        },
        "onset_days": {"type": "number", "minimum": 0, "maximum": 36500},
        "sudden_onset": {"type": "boolean", "default": False},
        "course": {"type": "string", "enum": list(COURSES)},
        "resolved_hours_ago": _nullable("number", minimum=0),
        "exercise_related": {"type": "boolean", "default": False},
        "improves_with_rest": _nullable("boolean"),
        "weakness_distribution": {
            "type": "string",
            "enum": list(WEAKNESS_DISTRIBUTIONS),
            "default": "none",
        },
        "daily_tasks_impaired": {"type": "boolean", "default": False},
        "pain_level": {"type": "integer", "minimum": 0, "maximum": 10, "default": 0},
        "fatigue_level": _nullable("integer", minimum=0, maximum=10),
        "cramp_max_minutes": _nullable("number", minimum=0, maximum=1440),
        "findings": {
            "type": "object",
            "propertyNames": {"enum": list(FINDING_CODES)},
            "additionalProperties": {"type": "boolean"},
            "default": {},
        },
        "medications": _text_list(50, 200),
        "conditions": _text_list(50, 200),
        "medication_changes": {
            "type": "array",
            "maxItems": 50,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "change", "days_ago"],
                "properties": {
                    "name": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 200,
                        "pattern": PLAIN_TEXT_PATTERN,
                    },
                    "change": {"type": "string", "enum": list(MEDICATION_CHANGES)},
                    "days_ago": {"type": "number", "minimum": 0, "maximum": 36500},
                },
            },
            "default": [],
        },
        "glucose_mmol_l": _nullable("number", minimum=0.5, maximum=50),
        "free_text": _nullable("string", maxLength=4000, pattern=PLAIN_TEXT_PATTERN),
    },
}

# The fields whose numbers must also be finite and fit in a double (StrictNumber's rule).
_NUMBER_FIELDS: Final = (
    "onset_days",
    "resolved_hours_ago",
    "cramp_max_minutes",
    "glucose_mmol_l",
)
_LARGEST: Final = sys.float_info.max

_validate: Callable[[Any], Any] = fastjsonschema.compile(SYMPTOM_REPORT_JSON_SCHEMA)


def fast_load(body: dict[str, Any]) -> dict[str, Any] | None:
    """A copy of `body` with the contract's defaults filled in if it is a valid v1 report.

    None means "not certainly valid": ask `SymptomReportSchema`, whose errors are the answer.
    """
    # The validator fills defaults in place: into copies of the two objects that get them.
    copy = dict(body)
    patient = copy.get("patient")
    if type(patient) is dict:
        copy["patient"] = dict(patient)
    try:
        report: dict[str, Any] = _validate(copy)
    except fastjsonschema.JsonSchemaException:
        return None
    for holder, name in (
        (report["patient"], "age"),
        (report, "pain_level"),
        (report, "fatigue_level"),
    ):
        value = holder[name]
        if type(value) is float and value.is_integer():  # 3.0: the integer 3, as StrictInteger
            holder[name] = int(value)
        elif value is not None and type(value) is not int:
            return None
    for name in _NUMBER_FIELDS:
        value = report[name]
        # NaN fails every comparison; infinities and ints beyond a double fail the bounds.
        if value is not None and not -_LARGEST <= value <= _LARGEST:
            return None
    for change in report["medication_changes"]:
        if not -_LARGEST <= change["days_ago"] <= _LARGEST:
            return None
    return report

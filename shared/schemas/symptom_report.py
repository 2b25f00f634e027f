"""The symptom report contract (docs/SYMPTOM_REPORT.md, v1.1) as marshmallow schemas.

Field names, types and ranges are fixed by the contract: outside clients and evaluation suites
post exactly this JSON. Unknown fields and unknown finding codes are rejected, every bad field
is reported at once, and loading fills the contract's defaults so the engine sees one shape.
"""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from shared.schemas.fields import (
    JSON_SCHEMA_METADATA,
    FullMatch,
    StrictBoolean,
    StrictInteger,
    StrictNumber,
    StrictString,
)
from shared.vocabulary import (
    COMPLAINTS,
    COURSES,
    FINDING_CODES,
    MEDICATION_CHANGES,
    SEXES,
    TRIAGE_LEVELS,
    WEAKNESS_DISTRIBUTIONS,
)

# Published in the JSON Schema and the FHIR Questionnaire, where `$` is the end of input. In
# Python `$` also matches before a final newline: match it with FullMatch, never re.match.
PATIENT_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
_FINDING_SET = frozenset(FINDING_CODES)


def _one_of(choices: tuple[str, ...]) -> validate.OneOf:
    return validate.OneOf(choices, error="Must be one of: {choices}.")


class PatientSchema(Schema):
    class Meta:
        unknown = RAISE

    id = StrictString(
        required=True,
        validate=FullMatch(
            PATIENT_ID_PATTERN, error="1 to 64 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'."
        ),
        metadata={"description": "The caller's patient identifier (MRN, screening id)."},
    )
    age = StrictInteger(
        required=True,
        validate=validate.Range(
            min=16, max=120, error="Must be 16 to 120: MyoTriage is not validated for children."
        ),
        metadata={"description": "Age in years; adults only."},
    )
    sex = StrictString(load_default="unknown", validate=_one_of(SEXES))
    pregnant = StrictBoolean(load_default=False)


class FindingsField(fields.Dict):
    """Finding code → true/false. Missing means not asked; an unknown code lists the valid ones."""

    def __init__(self, **kwargs: Any) -> None:
        # The OpenAPI lists the codes: an unknown one is refused, so it is no additional property.
        codes = {code: {"type": "boolean"} for code in FINDING_CODES}
        metadata = {
            JSON_SCHEMA_METADATA: {"properties": codes, "additionalProperties": False},
            **kwargs.pop("metadata", {}),
        }
        super().__init__(keys=fields.String(), values=StrictBoolean(), metadata=metadata, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, dict):
            raise ValidationError("Not an object of finding code → true/false.")
        errors: dict[str, list[str]] = {}
        for code, answer in value.items():
            if code not in _FINDING_SET:
                errors[code] = [f"Unknown finding code. Valid codes: {', '.join(FINDING_CODES)}."]
            elif not isinstance(answer, bool):
                errors[code] = ["Not a boolean: use true or false."]
        if errors:
            raise ValidationError(errors)
        return dict(value)


def _text_list(max_items: int, max_chars: int) -> fields.List:
    return fields.List(
        StrictString(validate=validate.Length(min=1, max=max_chars)),
        load_default=list,
        validate=validate.Length(max=max_items),
    )


class MedicationChangeSchema(Schema):
    """One recent change to a medicine (contract v1.1): what, which way, how many days ago."""

    class Meta:
        unknown = RAISE

    error_messages = {"type": "Not an object: give name, change and days_ago."}

    name = StrictString(
        required=True,
        validate=validate.Length(min=1, max=200, error="Must be 1 to 200 characters."),
        metadata={"description": "The medicine as the patient or EHR wrote it."},
    )
    change = StrictString(required=True, validate=_one_of(MEDICATION_CHANGES))
    days_ago = StrictNumber(
        required=True,
        validate=validate.Range(min=0, max=36500, error="Must be 0 to 36500 days."),
        metadata={"description": "Days since the change; fractions for hours."},
    )


class SymptomReportSchema(Schema):
    """A symptom report, v1.1 (v1 plus the optional medication_changes)."""

    class Meta:
        unknown = RAISE
        ordered = True

    patient = fields.Nested(PatientSchema, required=True)
    complaints = fields.List(
        StrictString(validate=_one_of(COMPLAINTS)),
        required=True,
        validate=validate.Length(min=1, max=len(COMPLAINTS), error="Give 1 to {max} complaints."),
        metadata={"uniqueItems": True},
    )
    onset_days = StrictNumber(
        required=True,
        validate=validate.Range(min=0, max=36500),
        metadata={"description": "Days since it started; fractions for hours (0.25 = 6 h)."},
    )
    sudden_onset = StrictBoolean(load_default=False)
    course = StrictString(required=True, validate=_one_of(COURSES))
    resolved_hours_ago = StrictNumber(
        load_default=None, allow_none=True, validate=validate.Range(min=0)
    )
    exercise_related = StrictBoolean(load_default=False)
    improves_with_rest = StrictBoolean(load_default=None, allow_none=True)
    weakness_distribution = StrictString(
        load_default="none", validate=_one_of(WEAKNESS_DISTRIBUTIONS)
    )
    daily_tasks_impaired = StrictBoolean(load_default=False)
    pain_level = StrictInteger(load_default=0, validate=validate.Range(min=0, max=10))
    fatigue_level = StrictInteger(
        load_default=None, allow_none=True, validate=validate.Range(min=0, max=10)
    )
    cramp_max_minutes = StrictNumber(
        load_default=None, allow_none=True, validate=validate.Range(min=0, max=1440)
    )
    findings = FindingsField(load_default=dict)
    medications = _text_list(50, 200)
    conditions = _text_list(50, 200)
    medication_changes = fields.List(
        fields.Nested(MedicationChangeSchema),
        load_default=list,
        validate=validate.Length(max=50, error="At most {max} medication changes."),
        metadata={"description": "Recent changes to medicines, when known (added in v1.1)."},
    )
    glucose_mmol_l = StrictNumber(
        load_default=None, allow_none=True, validate=validate.Range(min=0.5, max=50)
    )
    free_text = StrictString(load_default=None, allow_none=True, validate=validate.Length(max=4000))

    @validates_schema
    def _complaints_unique(self, data: dict[str, Any], **kwargs: Any) -> None:
        complaints = data.get("complaints") or []
        if len(set(complaints)) != len(complaints):
            raise ValidationError("Each complaint may appear once.", "complaints")


# ---- What comes back -------------------------------------------------------------------------


class RedFlagOut(Schema):
    id = fields.String(required=True)
    title = fields.String(required=True)
    level = fields.String(required=True, validate=_one_of(TRIAGE_LEVELS))
    because = fields.List(fields.String(), required=True)
    source = fields.String(required=True)
    note = fields.String(allow_none=True)
    # red_flag, combination or safety_screen; aliases are older ids some callers use.
    kind = fields.String()
    aliases = fields.List(fields.String())


class TriageResultOut(Schema):
    """The engine's result, in the contract's shape (plus optional additions)."""

    triage = fields.String(required=True, validate=_one_of(TRIAGE_LEVELS))
    priority = fields.Integer(required=True)
    red_flags = fields.List(fields.Nested(RedFlagOut), required=True)
    unanswered_safety_questions = fields.List(fields.String(), required=True)
    considerations = fields.List(fields.String(), required=True)
    advice = fields.List(fields.String(), required=True)
    ruleset_version = fields.String(required=True)
    # Additions beyond the contract's example: what the engine matched and what it could not read.
    benign_patterns = fields.List(fields.String())
    # For self_care: how each benign pattern qualified, "key_questions" or "general_screen".
    safety_screen = fields.Dict(keys=fields.String(), values=fields.String())
    risk_modifiers = fields.List(fields.String())
    medication_classes = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))
    condition_classes = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))
    not_understood = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))

"""The v1 symptom report as a FHIR R4 Questionnaire, QuestionnaireResponse ↔ v1 mapping, and
OperationOutcome builders. Pure: no Flask, no database.

The Questionnaire is generated from the v1 marshmallow schema and shared/vocabulary.py, so a
field or finding added there appears here without anyone editing this file. Every item's
`linkId` is the contract's own name: `onset_days`, `patient.age`, `findings.weak_grip`; an
error the v1 schema reports for field `patient.age` therefore points at linkId `patient.age`.
A list of objects (`medication_changes`, contract v1.1) is a repeating group: one group item
per entry, its fields as child items (`medication_changes.days_ago`); an error for entry 2's
`days_ago` (field `medication_changes.1.days_ago`) points at linkId `medication_changes.days_ago`
and names repetition 2.

Two levels of refusal, as the FHIR REST spec draws them:
- 400: not a valid QuestionnaireResponse at all (fhir.resources refuses it, or a value[x] has
  the wrong JSON type, e.g. `"valueBoolean": "yes"`, or an unknown status code). fhir.resources
  coerces some of these silently, so the JSON types are checked here as well.
- 422: a valid resource that does not fit this Questionnaire (unknown linkId, an answer of the
  wrong type for the item, a missing required item, status not completed/amended), or whose
  answers break the v1 contract's ranges.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Final

from marshmallow import fields, validate
from pydantic import ValidationError as PydanticValidationError

from shared.schemas.fields import StrictBoolean, StrictInteger, StrictNumber, StrictString
from shared.schemas.symptom_report import FindingsField, SymptomReportSchema
from shared.vocabulary import FINDING_CODES

QUESTIONNAIRE_ID: Final = "myotriage-symptom-report-v1"
QUESTIONNAIRE_URL: Final = f"https://myotriage.example/fhir/Questionnaire/{QUESTIONNAIRE_ID}"
QUESTIONNAIRE_VERSION: Final = "1.1.0"  # contract v1.1
CODE_SYSTEM_BASE: Final = "https://myotriage.example/fhir/CodeSystem/"
SNOMED: Final = "http://snomed.info/sct"
FHIR_MEDIA_TYPE: Final = "application/fhir+json"
# The FHIR value set for QuestionnaireResponse.status; anything else is not FHIR at all.
FHIR_QR_STATUSES: Final = frozenset(
    {"in-progress", "completed", "amended", "entered-in-error", "stopped"}
)
ACCEPTED_STATUSES: Final = frozenset({"completed", "amended"})

# SNOMED CT codes from INTEROP.md (cross-references from the Human Phenotype Ontology; confirm
# before clinical use). Only where the item asks about that very concept; "muscle fatigue" has
# no verified code, so fatigue_level carries plain fatigue plus the question text.
_MUSCLE_WEAKNESS = ("26544005", "Muscle weakness")
_FASCICULATION = ("82470000", "Fasciculation")
_MUSCLE_CRAMP = ("55300003", "Muscle cramp")
_DYSPNEA = ("267036007", "Dyspnea")
ITEM_SNOMED: Final[Mapping[str, tuple[str, str]]] = {
    "fatigue_level": ("84229001", "Fatigue"),
    "weakness_distribution": _MUSCLE_WEAKNESS,
    "cramp_max_minutes": _MUSCLE_CRAMP,
    "findings.weak_grip": _MUSCLE_WEAKNESS,
    "findings.head_lift_weakness": _MUSCLE_WEAKNESS,
    "findings.fatigable_weakness": _MUSCLE_WEAKNESS,
    "findings.ascending_weakness": _MUSCLE_WEAKNESS,
    "findings.twitching": _FASCICULATION,
    "findings.twitching_multiple_sites": _FASCICULATION,
    "findings.cramps": _MUSCLE_CRAMP,
    "findings.cramps_at_night": _MUSCLE_CRAMP,
    "findings.cramps_most_nights": _MUSCLE_CRAMP,
    "findings.soreness": ("68962001", "Myalgia"),
    "findings.breathless_on_exertion": _DYSPNEA,
    "findings.breathless_at_rest": _DYSPNEA,
    "findings.breathless_lying_flat": ("62744007", "Orthopnea"),
    "findings.swallowing_difficulty": ("40739000", "Dysphagia"),
    "findings.speech_difficulty": ("8011004", "Dysarthria"),
    "findings.double_vision": ("24982008", "Diplopia"),
    "findings.droopy_eyelids": ("11934000", "Ptosis of eyelid"),
    "findings.dark_urine": ("48165008", "Myoglobinuria"),
}

QUESTION_TEXT: Final[Mapping[str, str]] = {
    "patient": "About the patient",
    "patient.id": "Patient identifier (MRN or screening id); may be left out when the "
    "response's subject identifies the patient",
    "patient.age": "Age in years",
    "patient.sex": "Sex",
    "patient.pregnant": "Currently pregnant?",
    "complaints": "Which muscle symptoms brought the patient here? (one or more)",
    "onset_days": "How many days ago did it start? (fractions for hours: 0.25 = 6 hours)",
    "sudden_onset": "Did it come on within minutes?",
    "course": "Since it started, has it been improving, unchanged, worsening or rapidly worsening?",
    "resolved_hours_ago": "If the symptoms have completely gone: how many hours ago?",
    "exercise_related": "Did it begin during or after physical exertion?",
    "improves_with_rest": "Does it get better with rest? (leave unanswered if not known)",
    "weakness_distribution": "Where is there true loss of strength?",
    "daily_tasks_impaired": "Is the patient unable to do ordinary daily activities (dressing, "
    "stairs, work) because of the symptoms?",
    "pain_level": "Worst pain now, from 0 (none) to 10 (worst imaginable)",
    "fatigue_level": "Muscle fatigue now, from 0 (none) to 10 (worst imaginable)",
    "cramp_max_minutes": "Longest single cramp, in minutes",
    "findings": "Findings. Answer only what was asked: an unanswered item means not asked / "
    "unknown, while No means the patient said no.",
    "medications": "Current medications as written (one per answer)",
    "conditions": "Known conditions or diagnoses (one per answer)",
    "medication_changes": "Recent changes to medicines, when known (one group per change)",
    "medication_changes.name": "Medicine, as written",
    "medication_changes.change": "What changed: started, dose increased or stopped?",
    "medication_changes.days_ago": "How many days ago? (fractions for hours: 0.25 = 6 hours)",
    "glucose_mmol_l": "Latest finger-prick glucose, in mmol/L",
    "free_text": "In the patient's own words (shown to clinicians, never used for triage)",
}

# The contract's clarifications of finding codes (SYMPTOM_REPORT.md, "Finding codes").
FINDING_NOTES: Final[Mapping[str, str]] = {
    "head_lift_weakness": "cannot lift head off the pillow",
    "fatigable_weakness": "worse with repeated use, recovers with rest",
    "ascending_weakness": "began in the feet and is rising",
    "stiffness_morning": "more than 45 min, shoulders/hips",
    "recurring_with_exercise": "the same symptoms come back with each bout of exercise and "
    "settle with rest",
    "pain_out_of_proportion": "far worse than the exertion or injury explains",
    "tight_swollen_compartment": "tense swelling, pain on stretching, after injury or a cast",
    "numbness_both_sides": "both feet or both hands",
    "saddle_numbness": "between the legs",
    "walking_brings_on_leg_symptoms": "leg pain, heaviness or tingling on walking, eased by "
    "sitting or bending forward",
    "dark_urine": "tea or cola coloured",
    "reduced_urine": "little or none in a day",
    "recent_infection": "within 6 weeks",
    "long_lie": "on the floor for hours",
    "home_canned_food": "eaten within 3 days",
    "caffeine_or_stimulants": "a lot of coffee, energy drinks",
    "poor_posture": "long sitting, slouching, awkward work position",
}

OPTION_DISPLAY: Final[Mapping[str, str]] = {
    "focal": "One limb or one hand",
    "one_side": "Arm and/or leg and/or face on one side",
    "both_legs": "Both legs",
    "proximal": "Shoulders and hips (stairs, chairs, combing hair)",
    "distal": "Hands and feet",
    "generalized": "Everywhere",
    "none": "No true loss of strength",
}

# FHIR item type → the one value[x] an answer to it may carry.
ANSWER_KEY: Final[Mapping[str, str]] = {
    "boolean": "valueBoolean",
    "integer": "valueInteger",
    "decimal": "valueDecimal",
    "string": "valueString",
    "text": "valueString",
    "choice": "valueCoding",
}
# Strings this long or longer are offered as a multi-line text box.
_TEXT_ITEM_MIN_LENGTH = 1000


@dataclass(frozen=True)
class ItemSpec:
    """One Questionnaire item and where its answer goes in the v1 report."""

    link_id: str
    item_type: str
    path: tuple[str, ...]
    required: bool = False
    repeats: bool = False
    options: tuple[str, ...] = ()
    children: tuple[ItemSpec, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    regex: str | None = None
    max_occurs: int | None = None

    @property
    def answer_key(self) -> str:
        return ANSWER_KEY[self.item_type]

    @property
    def code_system(self) -> str:
        return CODE_SYSTEM_BASE + self.path[-1].replace("_", "-")


class QuestionnaireResponseRefused(Exception):
    """A QuestionnaireResponse that cannot become a v1 report; `issues` name every problem."""

    def __init__(self, status: int, issues: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(issues)} issue(s)")
        self.status = status
        self.issues = issues


# ---- The Questionnaire, generated from the schema ---------------------------------------------


def _validator(field: fields.Field, kind: type) -> Any:
    return next((v for v in field.validators if isinstance(v, kind)), None)


def _item_spec(name: str, field: fields.Field, path: tuple[str, ...]) -> ItemSpec:
    link_id = ".".join(path)
    occurs = _validator(field, validate.Length) if isinstance(field, fields.List) else None
    max_occurs = occurs.max if occurs is not None else None
    if isinstance(field, fields.Nested):
        nested = field.schema
        children = tuple(
            _item_spec(child, sub, (*path, child)) for child, sub in nested.fields.items()
        )
        return ItemSpec(link_id, "group", path, required=field.required, children=children)
    if isinstance(field, fields.List) and isinstance(field.inner, fields.Nested):
        # A list of objects: a repeating group, one repetition per entry.
        nested = field.inner.schema
        children = tuple(
            _item_spec(child, sub, (*path, child)) for child, sub in nested.fields.items()
        )
        return ItemSpec(
            link_id,
            "group",
            path,
            required=field.required,
            repeats=True,
            children=children,
            max_occurs=max_occurs,
        )
    if isinstance(field, FindingsField):
        children = tuple(
            ItemSpec(f"{link_id}.{code}", "boolean", (*path, code)) for code in FINDING_CODES
        )
        return ItemSpec(link_id, "group", path, children=children)
    repeats = isinstance(field, fields.List)
    scalar: fields.Field = field.inner if isinstance(field, fields.List) else field
    one_of = _validator(scalar, validate.OneOf)
    value_range = _validator(scalar, validate.Range)
    length = _validator(scalar, validate.Length)
    regexp = _validator(scalar, validate.Regexp)
    if one_of is not None:
        item_type = "choice"
    elif isinstance(scalar, StrictBoolean):
        item_type = "boolean"
    elif isinstance(scalar, StrictInteger):
        item_type = "integer"
    elif isinstance(scalar, StrictNumber):
        item_type = "decimal"
    elif isinstance(scalar, StrictString):
        long_text = length is not None and (length.max or 0) >= _TEXT_ITEM_MIN_LENGTH
        item_type = "text" if long_text else "string"
    else:  # pragma: no cover - a new field kind must be given an item type here
        raise TypeError(f"no FHIR item type for schema field {link_id}")
    # The patient can be named by the response's subject instead of this item.
    required = field.required and link_id != "patient.id"
    return ItemSpec(
        link_id,
        item_type,
        path,
        required=required,
        repeats=repeats,
        options=tuple(one_of.choices) if one_of is not None else (),
        minimum=value_range.min if value_range is not None else None,
        maximum=value_range.max if value_range is not None else None,
        max_length=length.max if length is not None else None,
        regex=regexp.regex.pattern if regexp is not None else None,
        max_occurs=max_occurs,
    )


@cache
def item_specs() -> tuple[ItemSpec, ...]:
    """The Questionnaire's top-level items, in the contract's order."""
    schema = SymptomReportSchema()
    return tuple(_item_spec(name, field, (name,)) for name, field in schema.fields.items())


@cache
def specs_by_link_id() -> dict[str, ItemSpec]:
    """Every item (groups and their children) by linkId."""
    out: dict[str, ItemSpec] = {}

    def walk(specs: tuple[ItemSpec, ...]) -> None:
        for spec in specs:
            out[spec.link_id] = spec
            walk(spec.children)

    walk(item_specs())
    return out


@cache
def repeating_group_of() -> dict[str, ItemSpec]:
    """The items inside a repeating group (by linkId) → that group. Their answers belong to one
    repetition of the group, so they are collected, required and reported per repetition."""
    return {
        child.link_id: spec
        for spec in specs_by_link_id().values()
        if spec.item_type == "group" and spec.repeats
        for child in spec.children
    }


def _question_text(spec: ItemSpec) -> str:
    if spec.link_id in QUESTION_TEXT:
        return QUESTION_TEXT[spec.link_id]
    if spec.path[0] == "findings":
        code = spec.path[-1]
        text = code.replace("_", " ").capitalize()
        note = FINDING_NOTES.get(code)
        return f"{text} ({note})?" if note else f"{text}?"
    return spec.path[-1].replace("_", " ").capitalize()


def option_display(option: str) -> str:
    """How an answer option reads to a person."""
    return OPTION_DISPLAY.get(option, option.replace("_", " ").capitalize())


def _extension_value(spec: ItemSpec, value: float) -> dict[str, Any]:
    key = "valueInteger" if spec.item_type == "integer" else "valueDecimal"
    return {key: int(value) if spec.item_type == "integer" else value}


def _questionnaire_item(spec: ItemSpec) -> dict[str, Any]:
    item: dict[str, Any] = {"linkId": spec.link_id}
    if spec.link_id in ITEM_SNOMED:
        code, display = ITEM_SNOMED[spec.link_id]
        item["code"] = [{"system": SNOMED, "code": code, "display": display}]
    item["text"] = _question_text(spec)
    item["type"] = spec.item_type
    if spec.required:
        item["required"] = True
    if spec.repeats:
        item["repeats"] = True
    extensions: list[dict[str, Any]] = []
    if spec.minimum is not None:
        extensions.append(
            {
                "url": "http://hl7.org/fhir/StructureDefinition/minValue",
                **_extension_value(spec, spec.minimum),
            }
        )
    if spec.maximum is not None:
        extensions.append(
            {
                "url": "http://hl7.org/fhir/StructureDefinition/maxValue",
                **_extension_value(spec, spec.maximum),
            }
        )
    if spec.regex is not None:
        extensions.append(
            {"url": "http://hl7.org/fhir/StructureDefinition/regex", "valueString": spec.regex}
        )
    if spec.max_occurs is not None:
        extensions.append(
            {
                "url": "http://hl7.org/fhir/StructureDefinition/questionnaire-maxOccurs",
                "valueInteger": spec.max_occurs,
            }
        )
    if extensions:
        item["extension"] = extensions
    if spec.max_length is not None and spec.item_type in ("string", "text"):
        item["maxLength"] = spec.max_length
    if spec.options:
        item["answerOption"] = [
            {
                "valueCoding": {
                    "system": spec.code_system,
                    "code": option,
                    "display": option_display(option),
                }
            }
            for option in spec.options
        ]
    if spec.children:
        item["item"] = [_questionnaire_item(child) for child in spec.children]
    return item


@cache
def _questionnaire() -> dict[str, Any]:
    return {
        "resourceType": "Questionnaire",
        "id": QUESTIONNAIRE_ID,
        "url": QUESTIONNAIRE_URL,
        "version": QUESTIONNAIRE_VERSION,
        "name": "MyoTriageSymptomReportV1",
        "title": "MyoTriage symptom report (v1): muscle fatigue, weakness, twitching or cramps",
        "status": "active",
        "subjectType": ["Patient"],
        "publisher": "MyoTriage",
        "description": "The questions of the MyoTriage v1 symptom report. Each linkId is the "
        "v1 contract's field name; findings are findings.<code>. An unanswered finding means "
        "not asked / unknown, never no.",
        "item": [_questionnaire_item(spec) for spec in item_specs()],
    }


def questionnaire() -> dict[str, Any]:
    """The intake questions as a FHIR R4 Questionnaire resource (JSON)."""
    return copy.deepcopy(_questionnaire())


# ---- QuestionnaireResponse → v1 report --------------------------------------------------------


def issue(
    code: str,
    diagnostics: str,
    expression: str | None = None,
    severity: str = "error",
) -> dict[str, Any]:
    """One OperationOutcome issue."""
    out: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        out["expression"] = [expression]
    return out


def operation_outcome(issues: list[dict[str, Any]]) -> dict[str, Any]:
    """An OperationOutcome resource holding `issues`."""
    return {"resourceType": "OperationOutcome", "issue": issues}


def report_from_questionnaire_response(resource: Any) -> dict[str, Any]:
    """Map a QuestionnaireResponse for our Questionnaire to a v1 report (not yet range-checked:
    `accept_assessment` does that with the v1 schema). Raises QuestionnaireResponseRefused."""
    _check_fhir_validity(resource)
    issues: list[dict[str, Any]] = []
    _check_header(resource, issues)
    answers, repetitions = _collect_answers(resource.get("item") or [], issues)
    report: dict[str, Any] = {}
    for link_id, answer_list in answers.items():
        spec = specs_by_link_id()[link_id]
        values = _answer_values(spec, answer_list, issues)
        if values is None:
            continue
        _place(report, spec.path, values if spec.repeats else values[0])
    for link_id, group_repetitions in repetitions.items():
        spec = specs_by_link_id()[link_id]
        entries = [
            _group_entry(spec, number, repetition, issues)
            for number, repetition in enumerate(group_repetitions, start=1)
        ]
        _place(report, spec.path, entries)
    _fill_patient_id(resource, report, issues)
    in_repeating_group = repeating_group_of()
    for spec in specs_by_link_id().values():
        # An item answered wrongly has its own issue already; "required" is for the unanswered.
        # Items of a repeating group are required in each repetition (see `_group_entry`).
        if (
            spec.required
            and spec.item_type != "group"
            and spec.link_id not in answers
            and spec.link_id not in in_repeating_group
        ):
            issues.append(issue("required", f"Item '{spec.link_id}' is required.", spec.link_id))
    if issues:
        raise QuestionnaireResponseRefused(422, issues)
    return report


def _check_fhir_validity(resource: Any) -> None:
    """400 for what is not a valid R4 QuestionnaireResponse at all."""
    from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse

    if not isinstance(resource, dict):
        raise QuestionnaireResponseRefused(
            400, [issue("structure", "The body must be a JSON object (a FHIR resource).")]
        )
    if resource.get("resourceType") != "QuestionnaireResponse":
        raise QuestionnaireResponseRefused(
            400,
            [
                issue(
                    "structure",
                    "Expected resourceType 'QuestionnaireResponse'.",
                    "resourceType",
                )
            ],
        )
    issues: list[dict[str, Any]] = []
    try:
        QuestionnaireResponse.model_validate(resource)
    except PydanticValidationError as exc:
        for error in exc.errors(include_input=False, include_url=False):
            issues.append(issue("structure", error["msg"], _element_path(error["loc"])))
    except (TypeError, ValueError) as exc:
        issues.append(issue("structure", f"Not a valid QuestionnaireResponse: {exc}"))
    # fhir.resources coerces or ignores these; a FHIR server must not.
    status = resource.get("status")
    # A str first: `{} in frozenset` raises (unhashable) rather than answering no.
    if not isinstance(status, str) or status not in FHIR_QR_STATUSES:
        issues.append(
            issue(
                "code-invalid",
                f"Unknown status code; FHIR allows {', '.join(sorted(FHIR_QR_STATUSES))}.",
                "QuestionnaireResponse.status",
            )
        )
    for link_id, answer in _raw_answers(resource.get("item")):
        problem = _json_type_problem(answer)
        if problem:
            issues.append(issue("structure", problem, link_id))
    if issues:
        raise QuestionnaireResponseRefused(400, issues)


def _element_path(loc: tuple[Any, ...]) -> str:
    path = "QuestionnaireResponse"
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part != "resource_type":
            path += f".{part}"
        else:
            path += ".resourceType"
    return path


def _raw_answers(items: Any) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """(linkId, answer) for every answer at any depth of a raw item list."""
    if not isinstance(items, list):
        return
    for item in items:
        if not isinstance(item, dict):
            continue
        link_id = item.get("linkId") if isinstance(item.get("linkId"), str) else None
        answers = item.get("answer")
        for answer in answers if isinstance(answers, list) else []:
            if isinstance(answer, dict):
                yield link_id, answer
                yield from _raw_answers(answer.get("item"))
        yield from _raw_answers(item.get("item"))


_JSON_TYPES: Final[Mapping[str, tuple[type, ...]]] = {
    "valueBoolean": (bool,),
    "valueInteger": (int,),
    "valueDecimal": (int, float),
    "valueString": (str,),
    "valueDate": (str,),
    "valueDateTime": (str,),
    "valueTime": (str,),
    "valueUri": (str,),
    "valueCoding": (dict,),
    "valueQuantity": (dict,),
    "valueReference": (dict,),
    "valueAttachment": (dict,),
}


def _json_type_problem(answer: dict[str, Any]) -> str | None:
    for key, value in answer.items():
        kinds = _JSON_TYPES.get(key)
        if kinds is None:
            continue
        wrong_bool = isinstance(value, bool) and bool not in kinds
        if wrong_bool or not isinstance(value, kinds):
            return f"{key} must be a JSON {_json_type_name(kinds)}."
    return None


def _json_type_name(kinds: tuple[type, ...]) -> str:
    if kinds == (bool,):
        return "true or false"
    if kinds == (int,):
        return "integer"
    if kinds == (int, float):
        return "number"
    return "string" if kinds == (str,) else "object"


def _check_header(resource: dict[str, Any], issues: list[dict[str, Any]]) -> None:
    canonical = resource.get("questionnaire")
    if not canonical:
        issues.append(
            issue(
                "required",
                f"questionnaire must be '{QUESTIONNAIRE_URL}'.",
                "QuestionnaireResponse.questionnaire",
            )
        )
    elif canonical.split("|", 1)[0] != QUESTIONNAIRE_URL:
        issues.append(
            issue(
                "not-supported",
                f"This endpoint takes answers to '{QUESTIONNAIRE_URL}' only.",
                "QuestionnaireResponse.questionnaire",
            )
        )
    status = resource.get("status")
    if status not in ACCEPTED_STATUSES:
        issues.append(
            issue(
                "business-rule",
                f"Only a completed or amended response can be triaged (status is '{status}').",
                "QuestionnaireResponse.status",
            )
        )


# linkId → its answers; and for each repeating group, one such mapping per repetition.
_Answers = dict[str, list[dict[str, Any]]]


def _collect_answers(
    items: list[dict[str, Any]], issues: list[dict[str, Any]]
) -> tuple[_Answers, dict[str, list[_Answers]]]:
    """linkId → its answers, from items at any depth (groups may be nested or flattened), and
    the repetitions of each repeating group. A repeating group cannot be flattened: which
    repetition an answer belongs to is known only from the group item it sits in."""
    known = specs_by_link_id()
    in_repeating_group = repeating_group_of()
    out: _Answers = {}
    repetitions: dict[str, list[_Answers]] = {}
    seen: set[str] = set()

    def walk(level: list[dict[str, Any]], within: tuple[str, int, _Answers] | None) -> None:
        """`within`: the repeating group's linkId, the repetition's number and its answers."""
        for item in level:
            link_id = item["linkId"]
            spec = known.get(link_id)
            answers = item.get("answer") or []
            group = in_repeating_group.get(link_id)
            repeating = spec is not None and spec.item_type == "group" and spec.repeats
            if spec is None:
                issues.append(
                    issue(
                        "not-found",
                        f"No item with linkId '{link_id}' in {QUESTIONNAIRE_URL}.",
                        link_id,
                    )
                )
            elif link_id in seen:  # repeating groups and their items are never "seen"
                issues.append(issue("duplicate", f"Item '{link_id}' appears twice.", link_id))
            elif spec.item_type == "group" and answers:
                issues.append(
                    issue("structure", f"'{link_id}' is a group: answer its items.", link_id)
                )
            elif repeating:
                group_repetitions = repetitions.setdefault(link_id, [])
                group_repetitions.append({})
                walk(
                    item.get("item") or [], (link_id, len(group_repetitions), group_repetitions[-1])
                )
                continue
            elif group is not None and (within is None or within[0] != group.link_id):
                issues.append(
                    issue(
                        "structure",
                        f"Item '{link_id}' belongs inside a '{group.link_id}' group item "
                        "(one group item per repetition).",
                        link_id,
                    )
                )
            elif group is not None and within is not None:
                _, number, repetition = within
                if link_id in repetition:
                    label = _label(link_id, group.link_id, number)
                    issues.append(issue("duplicate", f"Item {label} appears twice.", link_id))
                else:
                    repetition[link_id] = answers
            elif answers:
                out[link_id] = answers
            if group is None and not repeating:
                seen.add(link_id)
            walk(item.get("item") or [], within)
            for answer in answers:
                walk(answer.get("item") or [], within)

    walk(items, None)
    return out, repetitions


def _label(
    link_id: str, group: str | None = None, repetition: int | None = None, quote: str = "'"
) -> str:
    """How an issue names an item: 'pain_level'; in a repeating group
    'medication_changes.days_ago' (repetition 2 of 'medication_changes')."""
    name = f"{quote}{link_id}{quote}"
    if group is None or repetition is None:
        return name
    if link_id == group:
        return f"{name} (repetition {repetition})"
    return f"{name} (repetition {repetition} of {quote}{group}{quote})"


def _group_entry(
    spec: ItemSpec, number: int, repetition: _Answers, issues: list[dict[str, Any]]
) -> dict[str, Any]:
    """One repetition of a repeating group as an entry of its list in the report."""
    entry: dict[str, Any] = {}
    for child in spec.children:
        answers = repetition.get(child.link_id)
        if not answers:
            if child.required:
                label = _label(child.link_id, spec.link_id, number)
                issues.append(issue("required", f"Item {label} is required.", child.link_id))
            continue
        values = _answer_values(child, answers, issues, _label(child.link_id, spec.link_id, number))
        if values is not None:
            entry[child.path[-1]] = values if child.repeats else values[0]
    return entry


def _answer_values(
    spec: ItemSpec,
    answers: list[dict[str, Any]],
    issues: list[dict[str, Any]],
    label: str | None = None,
) -> list[Any] | None:
    label = label or _label(spec.link_id)
    if len(answers) > 1 and not spec.repeats:
        issues.append(
            issue(
                "structure",
                f"Item {label} takes one answer; got {len(answers)}.",
                spec.link_id,
            )
        )
        return None
    values: list[Any] = []
    for answer in answers:
        given = [key for key in answer if key.startswith("value")]
        if given != [spec.answer_key]:
            issues.append(
                issue(
                    "value",
                    f"Item {label} is of type {spec.item_type}: answer with "
                    f"{spec.answer_key}, not {', '.join(given) or 'nothing'}.",
                    spec.link_id,
                )
            )
            return None
        value = answer[spec.answer_key]
        if spec.item_type == "choice":
            value = _choice_code(spec, value, issues, label)
            if value is None:
                return None
        values.append(value)
    return values


def _choice_code(
    spec: ItemSpec, coding: dict[str, Any], issues: list[dict[str, Any]], label: str
) -> str | None:
    system, code = coding.get("system"), coding.get("code")
    if system not in (None, spec.code_system) or code not in spec.options:
        issues.append(
            issue(
                "code-invalid",
                f"Item {label} takes a code of {spec.code_system}: {', '.join(spec.options)}.",
                spec.link_id,
            )
        )
        return None
    return str(code)


def _place(report: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    target = report
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value


def _absent(report: dict[str, Any], path: tuple[str, ...]) -> bool:
    target: Any = report
    for key in path:
        if not isinstance(target, dict) or key not in target:
            return True
        target = target[key]
    return False


def _fill_patient_id(
    resource: dict[str, Any], report: dict[str, Any], issues: list[dict[str, Any]]
) -> None:
    """patient.id from the item if answered, else subject.identifier.value, else the id in
    subject.reference ('Patient/<id>')."""
    if not _absent(report, ("patient", "id")):
        return
    subject = resource.get("subject") or {}
    identifier = (subject.get("identifier") or {}).get("value")
    reference = subject.get("reference")
    if identifier:
        _place(report, ("patient", "id"), identifier)
    elif reference:
        kind, _, logical_id = str(reference).rpartition("/")
        if kind.rsplit("/", 1)[-1] != "Patient" or not logical_id:
            issues.append(
                issue(
                    "value",
                    "subject.reference must be 'Patient/<id>'.",
                    "QuestionnaireResponse.subject",
                )
            )
            return
        _place(report, ("patient", "id"), logical_id)
    else:
        issues.append(
            issue(
                "required",
                "Name the patient: subject (identifier or Patient reference) or item 'patient.id'.",
                "patient.id",
            )
        )


# ---- v1 schema errors → OperationOutcome ------------------------------------------------------


def _item_for_field(field: str | None) -> tuple[str | None, str | None, int | None]:
    """(linkId, repeating group, repetition number) of a v1 schema error field:
    `complaints.0` → (`complaints`, None, None); `medication_changes.1.days_ago` →
    (`medication_changes.days_ago`, `medication_changes`, 2)."""
    if not field:
        return None, None, None
    known = specs_by_link_id()
    names: list[str] = []
    group: str | None = None
    repetition: int | None = None
    # List indexes are not part of any linkId; an index into a repeating group's list is the
    # repetition (counted from 1, as a person reading the response counts).
    for part in field.split("."):
        if not part.isdigit():
            names.append(part)
            continue
        spec = known.get(".".join(names))
        if group is None and spec is not None and spec.item_type == "group" and spec.repeats:
            group, repetition = spec.link_id, int(part) + 1
    for end in range(len(names), 0, -1):
        candidate = ".".join(names[:end])
        if candidate in known:
            return candidate, group, repetition
    return field, None, None


def link_id_for_field(field: str | None) -> str | None:
    """The item a v1 schema error field belongs to: `complaints.0` → `complaints`,
    `medication_changes.0.days_ago` → `medication_changes.days_ago`."""
    return _item_for_field(field)[0]


def issues_from_field_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The v1 problem's `errors` ({field, pointer, message}) as OperationOutcome issues."""
    out = []
    for error in errors:
        message = str(error.get("message") or "Invalid value.")
        link_id, group, repetition = _item_for_field(error.get("field"))
        code = "required" if message.startswith("Missing data") else "value"
        name = _label(link_id, group, repetition, quote="") if link_id else None
        diagnostics = f"{name}: {message}" if name else message
        out.append(issue(code, diagnostics, link_id))
    return out


_STATUS_ISSUE_CODE: Final[Mapping[int, str]] = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    409: "conflict",
    413: "too-long",
    415: "not-supported",
    422: "processing",
    429: "throttled",
}


def outcome_for_error(
    status: int, title: str, detail: str | None, errors: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Any error (an HTTP status with its title and detail) as an OperationOutcome."""
    if errors:
        return operation_outcome(issues_from_field_errors(errors))
    code = _STATUS_ISSUE_CODE.get(status, "exception" if status >= 500 else "invalid")
    return operation_outcome([issue(code, detail or title)])


# ---- v1 report → QuestionnaireResponse --------------------------------------------------------


def _answers_for(spec: ItemSpec, value: Any) -> list[dict[str, Any]]:
    values = value if spec.repeats else [value]
    if spec.item_type == "choice":
        return [
            {"valueCoding": {"system": spec.code_system, "code": v, "display": option_display(v)}}
            for v in values
        ]
    return [{spec.answer_key: v} for v in values]


def _response_items(spec: ItemSpec, container: Any) -> list[dict[str, Any]]:
    """The response items for `spec`, read from `container` (the report, or the part of it that
    holds spec's field): none if unanswered, one per entry for a repeating group."""
    key = spec.path[-1]
    if not isinstance(container, dict) or key not in container:
        return []
    value = container[key]
    if spec.item_type == "group":
        out = []
        for group_value in value if spec.repeats else [value]:
            answered = [
                item for child in spec.children for item in _response_items(child, group_value)
            ]
            if answered:
                out.append({"linkId": spec.link_id, "item": answered})
        return out
    if value is None or (spec.repeats and not value):
        return []
    return [{"linkId": spec.link_id, "answer": _answers_for(spec, value)}]


def questionnaire_response_from_report(
    report: dict[str, Any], *, response_id: str, authored: datetime | None = None
) -> dict[str, Any]:
    """A QuestionnaireResponse for a v1 report that did not come in as FHIR.

    Unanswered findings stay unanswered (not asked), exactly as in the report."""
    resource: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "id": response_id,
        "questionnaire": QUESTIONNAIRE_URL,
        "status": "completed",
        "subject": {"identifier": {"value": report["patient"]["id"]}},
    }
    if authored is not None:
        resource["authored"] = authored.isoformat()
    resource["item"] = [item for spec in item_specs() for item in _response_items(spec, report)]
    return resource


def patient_identifier_system(resource: Any) -> str:
    """The identifier system of a QuestionnaireResponse's subject (`subject.identifier.system`),
    when the patient was named that way; "" otherwise. With the tenant and the identifier it
    names the patient: equal MRNs from two systems are two patients."""
    subject = resource.get("subject") if isinstance(resource, dict) else None
    identifier = subject.get("identifier") if isinstance(subject, dict) else None
    system = identifier.get("system") if isinstance(identifier, dict) else None
    # A system is a URI: anything unprintable (NUL, controls) is no system at all.
    return system[:255] if isinstance(system, str) and system.isprintable() else ""

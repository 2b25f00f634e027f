"""The compiled JSON Schema fast path gives marshmallow's answers: same reports accepted, same
defaults filled, nothing accepted that the reference refuses."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from shared.schemas.report_json_schema import SYMPTOM_REPORT_JSON_SCHEMA, fast_load
from shared.schemas.symptom_report import SymptomReportSchema
from shared.vocabulary import MEDICATION_CHANGES
from tests.factories import MEDICATION_CHANGE, report
from tests.unit.engine.engine_testing import reports

_reference = SymptomReportSchema()

# JSON values a caller might put anywhere, including the awkward ones.
_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.integers(min_value=-5, max_value=200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1, max_value=2000),
    st.text(max_size=5),
    st.sampled_from(["", "none", "worsening", "cramps", "female", "twitching", "A-1", "x" * 70]),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=5,
)
_top_keys = [*SYMPTOM_REPORT_JSON_SCHEMA["properties"], "unknown_field"]
_patient_keys = ["id", "age", "sex", "pregnant", "weight"]
_medication_change_keys = ["name", "change", "days_ago", "dose"]

# Valid medication_changes entries (contract v1.1), edges included.
_medication_changes = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.one_of(
                # Printable text: control and bidi formatting characters are refused.
                st.text(
                    st.characters(exclude_categories=("Cc", "Cf", "Cs")), min_size=1, max_size=20
                ),
                st.sampled_from(["x", "x" * 200, "Lipitor 20 mg", "Ézétimibe"]),
            ),
            "change": st.sampled_from(MEDICATION_CHANGES),
            "days_ago": st.one_of(
                st.integers(min_value=0, max_value=36500),
                st.floats(min_value=0, max_value=36500),
                st.sampled_from([0, 0.0, 36500, 36500.0]),
            ),
        }
    ),
    max_size=4,
)


def _answers(body: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    fast = fast_load(copy.deepcopy(body))
    try:
        reference = _reference.load(copy.deepcopy(body))
    except ValidationError:
        reference = None
    return fast, reference


def _assert_same(body: dict[str, Any]) -> None:
    fast, reference = _answers(body)
    if fast is not None:
        assert reference is not None, "the fast path accepted what the contract refuses"
        assert fast == reference
    else:
        assert reference is None, "a valid report missed the fast path"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(reports())
def test_generated_reports_load_identically(body: dict[str, Any]) -> None:
    _assert_same(body)


def test_the_contracts_examples_take_the_fast_path() -> None:
    for example in (report(), report(patient={"id": "P-2", "age": 70}), report(findings={})):
        fast, reference = _answers(example)
        assert reference is not None and fast == reference


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(reports(), st.sets(st.sampled_from(_top_keys), max_size=3))
def test_reports_missing_fields_get_the_same_defaults_or_the_same_refusal(
    body: dict[str, Any], dropped: set[str]
) -> None:
    for key in dropped:
        body.pop(key, None)
    _assert_same(body)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(
    reports(),
    st.lists(st.tuples(st.sampled_from(_top_keys), _json_values), min_size=1, max_size=2),
    st.lists(st.tuples(st.sampled_from(_patient_keys), _json_values), max_size=2),
    st.dictionaries(st.sampled_from(["twitching", "no_such_code", "fever"]), _json_values),
)
def test_mutated_reports_get_the_same_answer(
    body: dict[str, Any],
    changes: list[tuple[str, Any]],
    patient_changes: list[tuple[str, Any]],
    findings: dict[str, Any],
) -> None:
    for key, value in changes:
        body[key] = value
    if isinstance(body.get("patient"), dict):
        body["patient"].update(patient_changes)
    if isinstance(body.get("findings"), dict):
        body["findings"].update(findings)
    _assert_same(body)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(reports(), _medication_changes)
def test_reports_with_medication_changes_load_identically(
    body: dict[str, Any], changes: list[dict[str, Any]]
) -> None:
    body["medication_changes"] = changes
    _assert_same(body)
    # The generator's reports are not all valid (an empty medication name), but these entries
    # are: on a report without other faults both take them as they are.
    fast, reference = _answers(report(medication_changes=changes))
    assert reference is not None and fast == reference
    assert fast["medication_changes"] == changes


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(
    reports(),
    _medication_changes.filter(bool),
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=3),
            st.sampled_from(["set", "drop", "replace"]),
            st.sampled_from(_medication_change_keys),
            _json_values,
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_mutated_medication_changes_get_the_same_answer(
    body: dict[str, Any],
    changes: list[Any],
    mutations: list[tuple[int, str, str, Any]],
) -> None:
    for index, action, key, value in mutations:
        at = index % len(changes)
        if action == "replace":  # the entry itself becomes some other JSON value
            changes[at] = value
        elif not isinstance(changes[at], dict):
            continue
        elif action == "drop":
            changes[at].pop(key, None)
        else:
            changes[at][key] = value
    body["medication_changes"] = changes
    _assert_same(body)


def _changes(**entry: Any) -> list[dict[str, Any]]:
    return [{**MEDICATION_CHANGE, **entry}]


@pytest.mark.parametrize(
    "changes",
    [
        [],
        _changes(),
        _changes(change="dose_increased", days_ago=0),
        _changes(change="stopped", days_ago=36500),
        _changes(days_ago=0.25),
        _changes(name="x" * 200),
        [MEDICATION_CHANGE] * 50,
    ],
    ids=[
        "empty",
        "started",
        "dose-increased-today",
        "stopped-100-years",
        "hours",
        "long-name",
        "50",
    ],
)
def test_valid_medication_changes_are_accepted_by_both(changes: list[dict[str, Any]]) -> None:
    fast, reference = _answers(report(medication_changes=changes))
    assert reference is not None and fast == reference
    assert reference["medication_changes"] == changes


@pytest.mark.parametrize(
    "changes",
    [
        _changes(change="increased"),
        _changes(change=None),
        _changes(days_ago=-1),
        _changes(days_ago=-0.01),
        _changes(days_ago=36500.5),
        _changes(days_ago=36501),
        _changes(days_ago=True),
        _changes(days_ago="30"),
        _changes(days_ago=None),
        _changes(days_ago=float("nan")),
        _changes(days_ago=float("inf")),
        _changes(days_ago=10**400),
        _changes(name="x" * 201),
        _changes(name=""),
        _changes(name=5),
        [MEDICATION_CHANGE] * 51,
        _changes(dose="20 mg"),
        [{"name": "atorvastatin", "change": "started"}],
        ["atorvastatin"],
        [None],
        [[MEDICATION_CHANGE]],
        MEDICATION_CHANGE,
        None,
        "atorvastatin started",
    ],
    ids=[
        "wrong-change",
        "null-change",
        "days-negative",
        "days-slightly-negative",
        "days-fraction-too-big",
        "days-too-big",
        "days-boolean",
        "days-string",
        "days-null",
        "days-nan",
        "days-infinite",
        "days-huge-integer",
        "name-too-long",
        "name-empty",
        "name-not-a-string",
        "51-entries",
        "extra-key",
        "missing-key",
        "entry-a-string",
        "entry-null",
        "entry-a-list",
        "an-object-not-a-list",
        "null",
        "a-string",
    ],
)
def test_invalid_medication_changes_are_refused_by_both(changes: Any) -> None:
    assert _answers(report(medication_changes=changes)) == (None, None)


@pytest.mark.parametrize(
    "field,value",
    [
        ("onset_days", float("nan")),
        ("onset_days", float("inf")),
        ("resolved_hours_ago", float("inf")),
        ("resolved_hours_ago", 10**400),
        ("glucose_mmol_l", float("nan")),
        ("cramp_max_minutes", float("nan")),
        ("pain_level", 3.5),
        ("pain_level", True),
        ("complaints", ["cramps", "cramps"]),
        ("findings", {"twitching": 1}),
        ("medications", [""]),
        ("free_text", "x" * 4001),
    ],
)
def test_edge_values_are_refused_by_both(field: str, value: Any) -> None:
    body = report()
    body[field] = value
    assert _answers(body) == (None, None)


def test_a_whole_number_written_with_a_fraction_is_that_integer_for_both() -> None:
    # JSON Schema's "integer" (the OpenAPI's and the published schema's) admits 42.0.
    body = report()
    body["patient"] = {**body["patient"], "age": 42.0}
    body["pain_level"] = 3.0
    body["fatigue_level"] = 6.0
    fast, reference = _answers(body)
    assert fast is not None and fast == reference
    assert (fast["patient"]["age"], fast["pain_level"], fast["fatigue_level"]) == (42, 3, 6)
    assert all(type(v) is int for v in (reference["patient"]["age"], reference["pain_level"]))


def test_a_huge_integer_from_the_wire_is_a_field_error_not_a_crash() -> None:
    body = json.loads(
        json.dumps(report()).replace('"onset_days": 120', '"onset_days": 1' + "0" * 400)
    )
    with pytest.raises(ValidationError) as refused:
        _reference.load(body)
    assert refused.value.messages == {"onset_days": ["Not a number."]}


def test_fast_path_leaves_the_callers_body_as_it_was() -> None:
    body = {k: v for k, v in report().items() if k not in ("sex", "findings")}
    body["patient"] = {"id": "P-1", "age": 40}
    before = copy.deepcopy(body)
    loaded = fast_load(body)
    assert loaded is not None and loaded["patient"]["sex"] == "unknown"
    assert body == before


# ---- Hostile identifiers and text: both refuse, whichever regex dialect reads the pattern ------

# Python's `$` also matches before a final "\n": marshmallow's re.match once let "MRN-1\n" in
# while the fast path (fastjsonschema rewrites `$` to `\Z`) refused it.
_HOSTILE_PATIENT_IDS = [
    "MRN-1\n",
    "MRN-1\n\n",
    "MRN-1\r\n",
    "MRN-1\r",
    "\nMRN-1",
    "MRN-1\u2028",  # line separator
    "MRN-1\u2029",  # paragraph separator
    "MRN-1\u0085",  # next line
    "MRN-1\x00",
    "MRN-1\t",
    "M" * 65,
    " ",
    " " * 10,
    "",
    "MRN 1",
    "MRN-\uff11",  # a fullwidth digit
    "MRN-\u202e1",  # right-to-left override
    "\u00e9",
]


@pytest.mark.parametrize("patient_id", _HOSTILE_PATIENT_IDS)
def test_hostile_patient_ids_are_refused_by_both(patient_id: str) -> None:
    body = report()
    body["patient"] = {**body["patient"], "id": patient_id}
    assert _answers(body) == (None, None)
    with pytest.raises(ValidationError) as refused:
        _reference.load(body)
    assert list(refused.value.messages) == ["patient"]
    assert list(refused.value.messages["patient"]) == ["id"]  # type: ignore[call-overload]


@pytest.mark.parametrize("patient_id", ["M", "M" * 64, "MRN-0042", "a.b_c:d-9", "0"])
def test_patient_ids_at_the_edges_are_accepted_by_both(patient_id: str) -> None:
    body = report()
    body["patient"] = {**body["patient"], "id": patient_id}
    fast, reference = _answers(body)
    assert reference is not None and fast == reference


_CONTROL_AND_BIDI = [
    "\x00",
    "\x07",
    "\x0b",
    "\x0c",
    "\x1b[2J",
    "\x7f",
    "\x85",
    "\x9b",
    "\u202a",  # left-to-right embedding
    "\u202e",  # right-to-left override
    "\u2066",  # left-to-right isolate
    "\u2069",  # pop directional isolate
]
_TEXT_FIELDS = {
    "free_text": lambda text: text,
    "medications": lambda text: [text],
    "conditions": lambda text: [text],
    "medication_changes": lambda text: [{**MEDICATION_CHANGE, "name": text}],
}


@pytest.mark.parametrize("character", _CONTROL_AND_BIDI)
@pytest.mark.parametrize("field", list(_TEXT_FIELDS))
def test_control_and_bidi_characters_in_text_are_refused_by_both(
    field: str, character: str
) -> None:
    body = report()
    body[field] = _TEXT_FIELDS[field](f"weak {character}grip")
    assert _answers(body) == (None, None)


@pytest.mark.parametrize(
    "text",
    [
        "worse on stairs\nand at night",
        "tab\tseparated",
        "windows\r\nline",
        "line\u2028separator",
        "\u05d7\u05d5\u05dc\u05e9\u05d4 \u200f",  # Hebrew with a right-to-left mark
        "\U0001f4aa cramps",
        "[{" * 50,
    ],
)
@pytest.mark.parametrize("field", list(_TEXT_FIELDS))
def test_ordinary_text_is_accepted_by_both(field: str, text: str) -> None:
    body = report()
    body[field] = _TEXT_FIELDS[field](text)
    fast, reference = _answers(body)
    assert reference is not None and fast == reference


def test_published_patterns_read_the_same_in_ecma_262() -> None:
    """`\\Z`, `\\A` and inline flags are Python-only; in a client's ECMA-262 validator `\\Z`
    is the letter Z. The patterns keep to syntax both dialects read alike."""
    patterns = re.findall(r'"pattern": ("(?:[^"\\]|\\.)*")', json.dumps(SYMPTOM_REPORT_JSON_SCHEMA))
    assert patterns
    for pattern in map(json.loads, patterns):
        assert pattern.startswith("^") and pattern.endswith("$")
        assert not re.search(r"\\[AZz]|\(\?", pattern), pattern

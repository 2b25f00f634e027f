"""The compiled JSON Schema fast path gives marshmallow's answers: same reports accepted, same
defaults filled, nothing accepted that the reference refuses."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from shared.schemas.report_json_schema import SYMPTOM_REPORT_JSON_SCHEMA, fast_load
from shared.schemas.symptom_report import SymptomReportSchema
from tests.factories import report
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


@pytest.mark.parametrize(
    "field,value",
    [
        ("onset_days", float("nan")),
        ("onset_days", float("inf")),
        ("resolved_hours_ago", float("inf")),
        ("resolved_hours_ago", 10**400),
        ("glucose_mmol_l", float("nan")),
        ("cramp_max_minutes", float("nan")),
        ("pain_level", 3.0),
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

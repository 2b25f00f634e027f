"""The condition language: JsonLogic semantics on the checked subset, and its load-time checks."""

from __future__ import annotations

from typing import Any

import pytest

from services.rules.engine.condition import Compiler, ConditionError, evaluate
from services.rules.engine.facts import FactType

CATALOGUE = {
    "a": FactType("bool"),
    "f": FactType("tristate", finding=True),
    "n": FactType("number"),
    "g": FactType("nullable_number"),
    "course": FactType("enum", frozenset({"improving", "worsening"})),
    "classes": FactType("list", frozenset({"statin", "diuretic"})),
}


def run(logic: Any, facts: dict[str, Any]) -> bool:
    compiled = Compiler(CATALOGUE).compile(logic)
    result = bool(compiled.test(facts))
    assert result == bool(evaluate(logic, facts))  # the un-compiled path agrees
    from json_logic import jsonLogic
    from json_logic.apply import apply

    assert result == bool(jsonLogic(logic, facts)) == bool(apply(logic, facts))
    return result


BASE = {"a": True, "f": None, "n": 5, "g": None, "course": "worsening", "classes": ["statin"]}


@pytest.mark.parametrize(
    ("logic", "expected"),
    [
        ({"var": "a"}, True),
        ({"var": "f"}, False),  # unknown is not yes
        ({"!": {"var": "f"}}, True),
        ({"===": [{"var": "f"}, False]}, False),  # unknown is not "no" either
        ({"===": [{"var": "f"}, None]}, True),
        ({"!==": [{"var": "f"}, None]}, False),
        ({"and": [{"var": "a"}, {"<": [{"var": "n"}, 7]}]}, True),
        ({"or": [{"var": "f"}, {">=": [{"var": "n"}, 6]}]}, False),
        ({"<=": [1, {"var": "n"}, 5]}, True),
        ({"<": [1, {"var": "n"}, 5]}, False),
        ({"in": ["statin", {"var": "classes"}]}, True),
        ({"in": ["diuretic", {"var": "classes"}]}, False),
        ({"in": [{"var": "course"}, ["worsening"]]}, True),
        ({"!!": {"var": "a"}}, True),
        ({"and": [{"!==": [{"var": "g"}, None]}, {"<": [{"var": "g"}, 4]}]}, False),
        (True, True),
    ],
)
def test_semantics_match_jsonlogic(logic: Any, expected: bool) -> None:
    assert run(logic, BASE) is expected


@pytest.mark.parametrize(
    ("logic", "problem"),
    [
        ({"==": [{"var": "f"}, False]}, "not supported (use === / !=="),
        ({"var": "missing"}, "unknown fact 'missing'"),
        ({"var": "n"}, "is a number, not a yes/no fact"),
        ({"<": [{"var": "g"}, 4]}, "'g' may be null"),
        ({"===": [{"var": "course"}, "better"]}, "not a valid value of 'course'"),
        ({"in": ["statins", {"var": "classes"}]}, "not a known value of 'classes'"),
        ({"and": []}, "needs at least one operand"),
        ({"<": [{"var": "n"}, "7"]}, "compares numbers"),
        ({"===": [{"var": "a"}, {"var": "a"}]}, "compares one fact with one literal"),
        ({"var": "a", "and": []}, "expected one JsonLogic operation"),
        ("a", "expected one JsonLogic operation"),
    ],
)
def test_bad_conditions_are_rejected(logic: Any, problem: str) -> None:
    with pytest.raises(ConditionError, match=None) as raised:
        Compiler(CATALOGUE).compile(logic)
    assert problem in str(raised.value)


def test_polarity_tracks_negation() -> None:
    compiled = Compiler(CATALOGUE).compile({"and": [{"var": "a"}, {"!": {"var": "f"}}]})
    assert compiled.polarity == {("a", 1), ("f", -1)}

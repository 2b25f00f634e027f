"""The optimised scoring returns exactly what the plain scoring returned (reference_scoring.py).

Compared as JSON text, so key order counts too: vignettes, generated reports (the benchmark's),
hypothesis reports, and reports with malformed values that take the careful reading path.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest
from engine_testing import VIGNETTES, reports
from hypothesis import HealthCheck, given, settings
from reference_scoring import reference_score

from bench.engine_bench import generate_reports
from services.rules.engine.facts import _careful_facts, _well_formed_facts, base_facts
from shared.vocabulary import FINDING_CODES


def _outcome(score: Any, report: dict[str, Any]) -> str:
    """The result as JSON text, or the exception a scorer raised (either must match)."""
    try:
        return json.dumps(score(copy.deepcopy(report)))
    except Exception as exc:  # the reference and the engine must fail alike
        return f"{type(exc).__name__}: {exc}"


def _assert_same(ruleset: Any, report: dict[str, Any]) -> None:
    expected = _outcome(lambda r: reference_score(ruleset, r), report)
    assert _outcome(ruleset.score, report) == expected, report


def _vignette_reports() -> list[dict[str, Any]]:
    found = []
    for path in sorted(VIGNETTES.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                vignette = json.loads(line)
                found.append(vignette.get("report", vignette))
    return found


def _malformed(count: int, seed: int) -> list[dict[str, Any]]:
    """Generated reports with one to four values broken, missing or unusual."""
    rng = random.Random(seed)
    junk: list[Any] = [None, "x", 1, 1.0, float("nan"), -3, True, False, [], {}, "none", "unknown"]
    keys = [
        "patient", "complaints", "onset_days", "course", "sudden_onset", "exercise_related",
        "improves_with_rest", "resolved_hours_ago", "weakness_distribution", "pain_level",
        "fatigue_level", "cramp_max_minutes", "glucose_mmol_l", "findings", "medications",
        "conditions",
    ]  # fmt: skip
    broken = []
    for report in generate_reports(count, seed):
        for _ in range(rng.randint(1, 4)):
            key = rng.choice([*keys, "age", "sex", "pregnant", "finding", "duplicate", "drop"])
            value = rng.choice(junk)
            if key in ("age", "sex", "pregnant"):
                if isinstance(report.get("patient"), dict):
                    report["patient"][key] = value
            elif key == "finding" and isinstance(report.get("findings"), dict):
                code = rng.choice([*FINDING_CODES, "not_a_code", "age", "true_weakness"])
                report["findings"][code] = rng.choice([None, 1, 0, "yes", True, False])
            elif key == "duplicate" and isinstance(report.get("complaints"), list):
                report["complaints"] = [*report["complaints"], *report["complaints"][:1]]
            elif key == "drop":
                report.pop(rng.choice(keys), None)
            elif key in ("medications", "conditions"):
                report[key] = rng.choice([value, ["Lipitor 20mg", 5, None], ["", "T2DM", "T2DM"]])
            elif key in keys:
                report[key] = value
        broken.append(report)
    return broken


def test_vignettes_score_as_before(ruleset) -> None:
    found = _vignette_reports()
    assert len(found) >= 40
    for report in found:
        _assert_same(ruleset, report)


def test_generated_reports_score_as_before(ruleset) -> None:
    for report in generate_reports(2000, seed=11):
        _assert_same(ruleset, report)


def test_malformed_reports_score_as_before(ruleset) -> None:
    for report in _malformed(600, seed=5):
        _assert_same(ruleset, report)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(report=reports())
def test_hypothesis_reports_score_as_before(ruleset, report) -> None:
    _assert_same(ruleset, report)


@pytest.mark.parametrize("source", ["generated", "malformed"])
def test_the_well_formed_path_reads_what_the_careful_path_reads(source: str) -> None:
    batch = generate_reports(1000, seed=3) if source == "generated" else _malformed(1000, seed=9)
    taken = 0
    for report in batch:
        try:
            careful = _careful_facts(copy.deepcopy(report))
        except TypeError:  # an unhashable code: both paths leave it to the careful reader
            continue
        fast = _well_formed_facts(copy.deepcopy(report))
        if fast is not None:
            taken += 1
            facts, reading = careful
            assert (reading.fields, reading.findings) == ([], [])
            assert list(fast.items()) == list(facts.items())  # same values, same key order
        facts, reading = base_facts(copy.deepcopy(report))
        assert list(facts.items()) == list(careful[0].items())
        assert (reading.fields, reading.findings) == (careful[1].fields, careful[1].findings)
    if source == "generated":
        assert taken == len(batch)  # the contract's shape always takes the fast path
    else:
        assert 0 < taken < len(batch)

"""Command line for the rule engine: evaluate against vignettes, explain one report.

    python -m services.rules.engine_cli evaluate FILE.jsonl [FILE.jsonl ...] [--min-exact 0.9]
    python -m services.rules.engine_cli explain REPORT.json

`evaluate` prints exact-level accuracy (acceptable_alternatives count as correct), 3-bucket
accuracy (CLINICAL.md), under- and over-triage counts, every emergency scored below `emergency`,
the self-care rate on benign cases (gold `self_care`) and on benign, fully screened ones (gold
`self_care` with no other level acceptable: the author judged the screen complete), and a
confusion matrix. It exits 1 when a threshold is missed or any emergency is under-triaged.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.rules.engine import RuleSet, RuleSetError, load_ruleset
from shared.vocabulary import LEVEL_BUCKET, LEVEL_RANK, TRIAGE_LEVELS

_SHORT = {
    "emergency_ambulance": "amb",
    "emergency": "emerg",
    "consultation_24": "c24",
    "consultation": "cons",
    "self_care": "self",
}


@dataclass
class Evaluation:
    """Counts from scoring a set of vignettes."""

    total: int = 0
    exact: int = 0
    exact_strict: int = 0
    bucket: int = 0
    under: list[str] = field(default_factory=list)
    over: list[str] = field(default_factory=list)
    missed_emergencies: list[str] = field(default_factory=list)
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)
    flags_expected: int = 0
    flags_found: int = 0
    benign: int = 0
    benign_self_care: int = 0
    screened_benign: int = 0
    screened_benign_self_care: int = 0
    benign_missed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _read_vignettes(path: Path) -> list[dict[str, Any]]:
    vignettes = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    vignettes.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise SystemExit(f"{path}:{number}: not JSON: {exc}") from exc
    return vignettes


def evaluate(ruleset: RuleSet, vignettes: list[dict[str, Any]]) -> Evaluation:
    """Score every vignette and count agreement with its gold level."""
    result = Evaluation()
    for vignette in vignettes:
        vid = str(vignette.get("id", "?"))
        expected = vignette.get("expected_triage")
        if expected not in LEVEL_RANK:
            result.errors.append(f"{vid}: expected_triage {expected!r} is not a level")
            continue
        accepted = {expected, *vignette.get("acceptable_alternatives", [])}
        scored = ruleset.score(vignette["report"])
        got = scored["triage"]
        result.total += 1
        result.confusion[(expected, got)] += 1
        result.exact_strict += got == expected
        if got in accepted:
            result.exact += 1
        elif LEVEL_RANK[got] < LEVEL_RANK[expected]:
            result.under.append(f"{vid}: expected {expected}, got {got}")
        else:
            result.over.append(f"{vid}: expected {expected}, got {got}")
        if LEVEL_BUCKET[got] in {LEVEL_BUCKET[level] for level in accepted}:
            result.bucket += 1
        if LEVEL_BUCKET[expected] == "emergent" and LEVEL_RANK[got] < LEVEL_RANK["emergency"]:
            result.missed_emergencies.append(f"{vid}: expected {expected}, got {got}")
        if expected == "self_care":
            result.benign += 1
            result.benign_self_care += got == "self_care"
            if accepted == {"self_care"}:
                result.screened_benign += 1
                result.screened_benign_self_care += got == "self_care"
                if got != "self_care":
                    result.benign_missed.append(f"{vid}: got {got}")
        fired = set()
        for flag in scored["red_flags"]:
            fired.add(flag["id"])
            fired.update(flag.get("aliases", []))
        expected_flags = vignette.get("expected_red_flags", [])
        result.flags_expected += len(expected_flags)
        result.flags_found += sum(1 for f in expected_flags if f in fired)
    return result


def _percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "n/a"


def print_evaluation(name: str, ev: Evaluation) -> None:
    """Print the figures and the confusion matrix (rows: expected, columns: engine)."""
    print(f"== {name}: {ev.total} vignettes")
    print(
        "exact level (acceptable alternatives count): "
        f"{ev.exact}/{ev.total} = {_percent(ev.exact, ev.total)}"
    )
    print(
        "exact level (gold only):                     "
        f"{ev.exact_strict}/{ev.total} = {_percent(ev.exact_strict, ev.total)}"
    )
    print(
        "3-bucket (emergent / non-emergent / self-care): "
        f"{ev.bucket}/{ev.total} = {_percent(ev.bucket, ev.total)}"
    )
    print(f"under-triaged: {len(ev.under)}   over-triaged: {len(ev.over)}")
    for line in ev.under:
        print(f"  UNDER {line}")
    for line in ev.over:
        print(f"  OVER  {line}")
    print(f"emergencies scored below emergency: {len(ev.missed_emergencies)}")
    for line in ev.missed_emergencies:
        print(f"  MISSED {line}")
    if ev.flags_expected:
        print(f"expected red flags found (by id or alias): {ev.flags_found}/{ev.flags_expected}")
    print(
        "self-care on benign cases (gold self_care): "
        f"{ev.benign_self_care}/{ev.benign} = {_percent(ev.benign_self_care, ev.benign)}"
    )
    print(
        "self-care on benign, fully screened cases (no other level acceptable): "
        f"{ev.screened_benign_self_care}/{ev.screened_benign} = "
        f"{_percent(ev.screened_benign_self_care, ev.screened_benign)}"
    )
    for line in ev.benign_missed:
        print(f"  NOT SELF-CARE {line}")
    for line in ev.errors:
        print(f"  ERROR {line}")
    header = "expected \\ engine".ljust(20) + "".join(
        _SHORT[level].rjust(7) for level in TRIAGE_LEVELS
    )
    print(header)
    for expected in TRIAGE_LEVELS:
        row = expected.ljust(20) + "".join(
            str(ev.confusion[(expected, got)]).rjust(7) for got in TRIAGE_LEVELS
        )
        print(row)


def _evaluate_command(args: argparse.Namespace, ruleset: RuleSet) -> int:
    failed = False
    combined = Evaluation()
    for path in args.files:
        ev = evaluate(ruleset, _read_vignettes(Path(path)))
        print_evaluation(path, ev)
        print()
        for name in (
            "total",
            "exact",
            "exact_strict",
            "bucket",
            "flags_expected",
            "flags_found",
            "benign",
            "benign_self_care",
            "screened_benign",
            "screened_benign_self_care",
        ):
            setattr(combined, name, getattr(combined, name) + getattr(ev, name))
        combined.benign_missed += ev.benign_missed
        combined.under += ev.under
        combined.over += ev.over
        combined.missed_emergencies += ev.missed_emergencies
        combined.confusion.update(ev.confusion)
        combined.errors += ev.errors
    if len(args.files) > 1:
        print_evaluation("all files", combined)
        print()
    if combined.total == 0:
        print("no vignettes")
        return 1
    if args.min_exact is not None and combined.exact / combined.total < args.min_exact:
        print(f"FAIL: exact accuracy below {args.min_exact:.0%}")
        failed = True
    if args.min_bucket is not None and combined.bucket / combined.total < args.min_bucket:
        print(f"FAIL: 3-bucket accuracy below {args.min_bucket:.0%}")
        failed = True
    if (
        args.min_self_care is not None
        and combined.screened_benign
        and combined.screened_benign_self_care / combined.screened_benign < args.min_self_care
    ):
        print(f"FAIL: self-care on benign, fully screened cases below {args.min_self_care:.0%}")
        failed = True
    if combined.missed_emergencies and not args.allow_missed_emergencies:
        print("FAIL: emergencies scored below emergency")
        failed = True
    if combined.errors:
        failed = True
    print(f"rule set {ruleset.version}: {'FAIL' if failed else 'ok'}")
    return 1 if failed else 0


def _explain_command(args: argparse.Namespace, ruleset: RuleSet) -> int:
    text = Path(args.report).read_text(encoding="utf-8") if args.report != "-" else sys.stdin.read()
    data = json.loads(text)
    # Accept a bare report or a vignette ({"report": {...}}).
    report = (
        data["report"] if isinstance(data, dict) and isinstance(data.get("report"), dict) else data
    )
    for line in ruleset.explain(report):
        print(line)
    if args.json:
        print()
        print(json.dumps(ruleset.score(report), indent=2, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 evaluation failed, 2 rule set invalid)."""
    parser = argparse.ArgumentParser(prog="engine_cli", description="MyoTriage rule engine tools")
    parser.add_argument("--ruleset", help="rule-set directory (default: services/rules/ruleset)")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="score vignettes (JSONL) and print accuracy figures")
    ev.add_argument("files", nargs="+")
    ev.add_argument("--min-exact", type=float, help="fail below this exact accuracy (0-1)")
    ev.add_argument("--min-bucket", type=float, help="fail below this 3-bucket accuracy (0-1)")
    ev.add_argument(
        "--min-self-care",
        type=float,
        help="fail below this self-care rate on benign, fully screened cases (0-1)",
    )
    ev.add_argument(
        "--allow-missed-emergencies",
        action="store_true",
        help="do not fail when an emergency is scored below emergency",
    )
    ex = sub.add_parser("explain", help="print the level and why, rule by rule, for one report")
    ex.add_argument("report", help="REPORT.json (a v1 report or a vignette), or - for stdin")
    ex.add_argument("--json", action="store_true", help="also print the result dict")
    args = parser.parse_args(argv)
    try:
        ruleset = load_ruleset(args.ruleset)
    except RuleSetError as exc:
        print(f"rule set invalid: {exc}", file=sys.stderr)
        return 2
    if args.command == "evaluate":
        return _evaluate_command(args, ruleset)
    return _explain_command(args, ruleset)


if __name__ == "__main__":
    raise SystemExit(main())

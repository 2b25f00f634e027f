"""Benchmark: the compiled rule engine against a JsonLogic interpreter of the same conditions.

    python bench/engine_bench.py [--n 100000] [--interpreter qubit|panzi|tree] [--seed 7]
                                 [--repeat 3]

Generates N valid v1 reports (seeded, so every run scores the same ones), pins the process to one
core, scores all of them with the compiled closures and then with the interpreter, checks that the
two agree, and prints reports/s for each and the ratio. Both paths score the same reports with the
same fact reading and result building; only the evaluation of the conditions differs.

A measurement, not a test: figures vary run to run, and on a shared machine other processes take
the core from it. `--repeat` times each path several times (each on a freshly loaded rule set, so
that every run starts with the same cold caches) and prints medians; the load average and the CPU
time per report (which other processes inflate much less than the wall clock) are printed too.
Compare ratios from the same run.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.rules.engine import RuleSet, load_ruleset
from shared.vocabulary import (
    COMPLAINTS,
    COURSES,
    FINDING_CODES,
    SAFETY_QUESTIONS,
    SEXES,
    TRIAGE_LEVELS,
    WEAKNESS_DISTRIBUTIONS,
)

MEDICATIONS = [
    "Lipitor 20mg",
    "atorvastatin",
    "simvastatin 40 mg nightly",
    "ciprofloxacin 500mg",
    "furosemide 40mg",
    "insulin glargine",
    "gliclazide 80mg",
    "prednisolone 5mg",
    "Ritalin",
    "salbutamol inhaler",
    "capecitabine",
    "fentanyl patch",
    "ritonavir",
    "paracetamol",
    "metformin 500mg",
    "amlodipine 5mg",
    "levothyroxine 50 micrograms",
    "omeprazole 20mg",
    "Zyxorin",
    "herbal remedy",
]
CONDITIONS = [
    "T2DM",
    "type 1 diabetes",
    "myasthenia",
    "hypertension",
    "asthma",
    "COPD",
    "anaemia",
    "hypothyroidism",
    "depression",
    "breast cancer",
    "high cholesterol",
    "HIV",
    "arthritis",
    "something rare",
]


def generate_reports(n: int, seed: int) -> list[dict[str, Any]]:
    """N valid reports in the v1 contract's shape, varied enough to fire every kind of rule."""
    rng = random.Random(seed)
    reports = []
    for i in range(n):
        findings: dict[str, bool] = {}
        for code in FINDING_CODES:
            if rng.random() < 0.10:
                findings[code] = rng.random() < 0.4
        if rng.random() < 0.6:  # most reports answer the safety screen
            for question in SAFETY_QUESTIONS:
                findings.setdefault(question, rng.random() < 0.03)
        resolved = rng.choice([None] * 9 + [rng.uniform(0, 200)])
        reports.append(
            {
                "patient": {
                    "id": f"B-{i}",
                    "age": rng.randint(16, 95),
                    "sex": rng.choice(SEXES),
                    "pregnant": rng.random() < 0.05,
                },
                "complaints": rng.sample(COMPLAINTS, rng.randint(1, 3)),
                "onset_days": rng.choice(
                    [rng.uniform(0, 2), rng.randint(1, 30), rng.randint(30, 400)]
                ),
                "sudden_onset": rng.random() < 0.1,
                "course": rng.choice(COURSES),
                "resolved_hours_ago": resolved,
                "exercise_related": rng.random() < 0.3,
                "improves_with_rest": rng.choice([None, True, False]),
                "weakness_distribution": rng.choice(["none"] * 6 + list(WEAKNESS_DISTRIBUTIONS)),
                "daily_tasks_impaired": rng.random() < 0.3,
                "pain_level": rng.randint(0, 10),
                "fatigue_level": rng.choice([None, rng.randint(0, 10)]),
                "cramp_max_minutes": rng.choice([None, None, rng.uniform(0, 30)]),
                "findings": findings,
                "medications": rng.sample(MEDICATIONS, rng.choice([0, 0, 1, 1, 2, 3])),
                "conditions": rng.sample(CONDITIONS, rng.choice([0, 0, 1, 2])),
                "glucose_mmol_l": rng.choice([None] * 5 + [round(rng.uniform(2, 15), 1)]),
                "free_text": "generated",
            }
        )
    return reports


def _summary(result: dict[str, Any]) -> tuple[Any, ...]:
    return result["triage"], result["priority"], tuple(f["id"] for f in result["red_flags"])


def timed_run(
    ruleset: RuleSet, reports: list[dict[str, Any]]
) -> tuple[float, float, list[tuple[Any, ...]]]:
    """Score every report; return elapsed seconds, CPU seconds and a summary of each result."""
    score = ruleset.score
    summaries: list[tuple[Any, ...]] = []
    append = summaries.append
    start, start_cpu = time.perf_counter(), time.process_time()
    for report in reports:
        append(_summary(score(report)))
    return time.perf_counter() - start, time.process_time() - start_cpu, summaries


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def _pin_to_one_core() -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity)"
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return f"pinned to core {core}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures; exit 1 if the two evaluators disagree."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="reports to score (default 100000)")
    parser.add_argument(
        "--interpreter",
        choices=["qubit", "panzi", "tree"],
        default="qubit",
        help="baseline: json-logic-qubit (default), panzi-json-logic, or the engine's tree walker",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="timed runs of each path, each on a freshly loaded rule set; medians are printed",
    )
    parser.add_argument(
        "--full-check",
        type=int,
        default=2000,
        help="reports whose whole result dicts are compared (default 2000)",
    )
    args = parser.parse_args(argv)

    pinned = _pin_to_one_core()
    reports = generate_reports(args.n, args.seed)
    load_before = _load()
    runs: list[tuple[float, float, float, float]] = []  # wall and CPU seconds of each path
    mismatches = 0
    for _ in range(max(1, args.repeat)):
        compiled = load_ruleset()
        interpreted = compiled.with_interpreter(args.interpreter)
        for report in reports[:500]:  # warm caches and code paths for both
            compiled.score(report)
            interpreted.score(report)
        compiled_s, compiled_cpu, compiled_out = timed_run(compiled, reports)
        interpreted_s, interpreted_cpu, interpreted_out = timed_run(interpreted, reports)
        runs.append((compiled_s, compiled_cpu, interpreted_s, interpreted_cpu))
        mismatches += sum(1 for a, b in zip(compiled_out, interpreted_out, strict=True) if a != b)

    full = [r for r in reports[: args.full_check] if compiled.score(r) != interpreted.score(r)]
    compiled_s, compiled_cpu, interpreted_s, interpreted_cpu = (
        statistics.median(run[i] for run in runs) for i in range(4)
    )
    compiled_rate = len(reports) / compiled_s
    interpreted_rate = len(reports) / interpreted_s
    ratio = statistics.median(run[2] / run[0] for run in runs)  # each run's own ratio
    levels = Counter(summary[0] for summary in compiled_out)
    n = len(reports)

    print(
        f"rule set {compiled.version}: {len(compiled.rules)} rules, "
        f"{len(compiled.derived)} derived facts, "
        f"{len(compiled.considerations)} considerations; python {sys.version.split()[0]}; {pinned}"
    )
    print(
        f"reports: {len(reports)} generated (seed {args.seed}); levels: "
        + ", ".join(f"{level} {levels[level]}" for level in TRIAGE_LEVELS)
    )
    median = f"median of {len(runs)} runs, " if len(runs) > 1 else ""
    print(
        f"compiled closures:      {compiled_rate:>10,.0f} reports/s  ({median}{compiled_s:.2f} s, "
        f"{1e6 * compiled_s / n:.1f} us/report; CPU {1e6 * compiled_cpu / n:.1f} us/report)"
    )
    print(
        f"interpreter ({args.interpreter:>5}):    {interpreted_rate:>10,.0f} reports/s  "
        f"({median}{interpreted_s:.2f} s, {1e6 * interpreted_s / n:.1f} us/report; "
        f"CPU {1e6 * interpreted_cpu / n:.1f} us/report)"
    )
    if len(runs) > 1:
        print("compiled runs (reports/s): " + ", ".join(f"{n / run[0]:,.0f}" for run in runs))
    print(f"ratio compiled / interpreter: {ratio:.1f}x")
    print(f"load average (1, 5, 15 min): {load_before} before, {_load()} after")
    print(
        f"agreement: {n * len(runs) - mismatches}/{n * len(runs)} summaries identical; "
        f"{args.full_check - len(full)}/{min(args.full_check, n)} full results identical"
    )
    return 0 if mismatches == 0 and not full else 1


if __name__ == "__main__":
    raise SystemExit(main())

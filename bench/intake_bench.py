"""Intake throughput against the bare-Flask ceiling, and end-to-end time from POST to scored.

    .venv/bin/python bench/intake_bench.py [--seconds 10] [--rounds 3] [--rate 100]
                                           [--e2e-seconds 10] [--intake-threads 8] [--bounds]

Needs `wrk` (apt-get install wrk). Uses DATABASE_URL if set (PostgreSQL), else SQLite in a temp
dir; always a private redis-server. Every app runs under gunicorn with 4 workers: the bare-Flask
ceiling with sync workers (bench/bare_flask.py, the client's reference ceiling), and again with
intake's
threads; intake as the run command and compose run it (16 threads, so that concurrent reports
share a commit). The ratio is taken against the faster bare run. wrk uses 2 threads and 32
connections on the same cores. `--bounds` adds, in the same rounds, intake with its database
write removed (bench/intake_without_write.py): the most any write-path change could give.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests
from sqlalchemy import func, select

from bench.stack import BenchStack, percentile, run_wrk
from services.local_stack import INTAKE_THREADS
from shared.models import Assessment
from tests.factories import report


def throughput(
    stack: BenchStack, seconds: int, rounds: int, threads: int, bounds: bool = False
) -> tuple[dict[str, dict[str, float]], str]:
    """wrk against the bare ceiling (sync x4, as the reference ceiling was measured, and with
    intake's own worker settings when they differ) and against intake, alternating round by
    round."""
    urls = {"bare": stack.gunicorn("bare", "bench.bare_flask:app")}
    if threads > 1:
        urls["bare_threads"] = stack.gunicorn(
            "bare-threads", "bench.bare_flask:app", threads=threads
        )
    urls["intake"] = stack.gunicorn("intake", "services.intake.wsgi:app", threads=threads)
    if bounds:
        urls["intake_no_write"] = stack.gunicorn(
            "intake-no-write", "bench.intake_without_write:app", threads=threads
        )
    body = json.dumps(report())
    auth = {"Content-Type": "application/json", "Authorization": f"Bearer {stack.api_key}"}
    for url in urls.values():  # warm-up
        run_wrk(url + "/v1/assessments", body, auth, 2)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
    for _ in range(rounds):  # alternate, so drift hits all alike
        for name, url in urls.items():
            samples[name].append(run_wrk(url + "/v1/assessments", body, auth, seconds))
    for name, runs in samples.items():
        errors = sum(r["non_2xx"] for r in runs)
        if errors:
            raise SystemExit(f"{name}: {errors} non-2xx responses during the benchmark")
    return {
        name: {key: statistics.median(r[key] for r in runs) for key in ("rps", "p50_ms", "p99_ms")}
        for name, runs in samples.items()
    }, urls["intake"]


def end_to_end(stack: BenchStack, intake: str, rate: float, seconds: float) -> dict[str, float]:
    """POST at a steady `rate`; e2e = scored_at - created_at as stored (same clock)."""
    stack.worker(concurrency=2)
    stack.relay()
    # The throughput phase left thousands of queued reports: let the worker drain them first,
    # so the measurement sees a steady state, not a backlog.
    drain_deadline = time.monotonic() + 600
    while time.monotonic() < drain_deadline:
        with stack.sessions() as db:
            pending = db.scalar(
                select(func.count()).select_from(Assessment).where(Assessment.status != "scored")
            )
        if pending == 0:
            break
        time.sleep(0.5)
    session = requests.Session()
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    ids: list[str] = []
    post_ms: list[float] = []
    lock = threading.Lock()
    interval = 1.0 / rate
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < seconds:
        due = start + n * interval
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t0 = time.perf_counter()
        response = session.post(f"{intake}/v1/assessments", json=report(), headers=headers)
        response.raise_for_status()
        with lock:
            post_ms.append((time.perf_counter() - t0) * 1000)
            ids.append(response.json()["id"])
        n += 1
    achieved_rate = len(ids) / (time.perf_counter() - start)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with stack.sessions() as db:
            rows = db.execute(
                select(Assessment.created_at, Assessment.scored_at).where(Assessment.id.in_(ids))
            ).all()
        if all(r.scored_at is not None for r in rows) and len(rows) == len(ids):
            break
        time.sleep(0.5)
    e2e = [(r.scored_at - r.created_at).total_seconds() * 1000 for r in rows if r.scored_at]
    return {
        "rate": rate,
        "count": len(ids),
        "scored": len(e2e),
        "achieved_rate": achieved_rate,
        "post_p50_ms": percentile(post_ms, 50),
        "post_p99_ms": percentile(post_ms, 99),
        "e2e_p50_ms": percentile(e2e, 50),
        "e2e_p99_ms": percentile(e2e, 99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--e2e-seconds", type=float, default=10.0)
    parser.add_argument(
        "--intake-threads",
        type=int,
        default=int(INTAKE_THREADS),
        help=f"gunicorn threads per intake worker (default {INTAKE_THREADS}, as the run command "
        "and compose run it); the ceiling runs sync x4 and, with threads, the same settings too",
    )
    parser.add_argument(
        "--bounds",
        action="store_true",
        help="also measure intake with its database write removed (a bound, in the same rounds)",
    )
    args = parser.parse_args()
    stack = BenchStack()
    try:
        figures, intake = throughput(
            stack, args.seconds, args.rounds, args.intake_threads, args.bounds
        )
        e2e = end_to_end(stack, intake, args.rate, args.e2e_seconds)
    finally:
        stack.close()
    db = "postgresql" if stack.database_url.startswith("postgresql") else "sqlite"
    ours = figures["intake"]
    # The ceiling is the faster of the two bare runs: intake must not look better by choosing
    # a worker type that the bare endpoint was not given.
    ceiling = max((row for name, row in figures.items() if name.startswith("bare")), key=_rps)
    print(
        f"database: {db}; gunicorn x4 (intake {args.intake_threads} thread(s) per worker); "
        f"wrk -t2 -c32; {args.rounds} x {args.seconds} s; medians"
    )
    print(f"{'endpoint':<36}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    labels = {
        "bare": "bare Flask, sync x4",
        "bare_threads": f"bare Flask, x4 with {args.intake_threads} threads",
        "intake": "intake POST /v1/assessments",
        "intake_no_write": "  bound: intake, write removed",
    }
    for name, row in figures.items():
        print(f"{labels[name]:<36}{row['rps']:>10.0f}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}")
    print(
        f"ratio intake / ceiling (the faster bare run): {ours['rps'] / ceiling['rps']:.2f} "
        "(target >= 0.50)"
    )
    if "intake_no_write" in figures:
        bound = figures["intake_no_write"]["rps"] / ceiling["rps"]
        print(f"bound: intake with its database write removed / ceiling: {bound:.2f}")
    print(
        f"end to end at {e2e['rate']:.0f}/s for {args.e2e_seconds:.0f} s "
        f"({e2e['count']} reports, {e2e['scored']} scored, "
        f"achieved {e2e['achieved_rate']:.0f}/s): "
        f"POST p50 {e2e['post_p50_ms']:.1f} ms p99 {e2e['post_p99_ms']:.1f} ms; "
        f"POST->scored p50 {e2e['e2e_p50_ms']:.1f} ms p99 {e2e['e2e_p99_ms']:.1f} ms "
        "(target p99 < 250)"
    )


def _rps(row: dict[str, float]) -> float:
    return row["rps"]


if __name__ == "__main__":
    main()

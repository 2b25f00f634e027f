"""Scoring throughput: a backlog drained by the real relay and worker, grouped against per report.

    .venv/bin/python bench/scoring_bench.py [--reports 2000] [--rounds 3] [--group-size 200]
                                            [--concurrency 2] [--lone 20]

Queues `--reports` reports straight into the database in one transaction (the rows intake
writes: a `queued` assessment and its outbox row each), then times how long the relay and a
worker (`--concurrency` processes) take to score them all. Each round does it twice, once with
the relay publishing one task per report (`MYOTRIAGE_SCORING_GROUP_SIZE=1`, the path before
groups: the baseline) and once with groups of up to `--group-size`, alternating so drift hits
both alike; it prints reports/s for each and the ratio. `--lone` reports sent one at a time to
an idle system give the latency of a lone report (scored_at - created_at) in each mode.

Uses DATABASE_URL if set (PostgreSQL), else SQLite in a temp dir; always a private redis-server.
No callback subscriptions: this measures scoring, not deliveries.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select

from bench.stack import BenchStack, percentile
from shared.models import Assessment
from tests.factories import DOMS, STROKE, report
from tests.support import ServiceProcess, queue_reports, relay_process, wait_until


def patient(n: int) -> dict[str, object]:
    base = STROKE if n % 3 == 0 else DOMS if n % 3 == 1 else None
    return report(base, patient={"id": f"BENCH-{n}", "age": 30 + n % 60})


def waiting(stack: BenchStack) -> int:
    with stack.sessions() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Assessment)
                .where(Assessment.status == "queued", Assessment.scored_at.is_(None))
            )
            or 0
        )


def start_relay(stack: BenchStack, group_size: int) -> ServiceProcess:
    env = {**stack.env, "MYOTRIAGE_SCORING_GROUP_SIZE": str(group_size)}
    relay = relay_process(env, stack.workdir / "logs", name=f"relay-{group_size}").start()
    # Ready once it has published (and the worker scored) a first report.
    [first] = queue_reports(stack.sessions, [patient(0)])
    wait_until(lambda: scored(stack, [first]), 60, "the relay and worker to be ready")
    return relay


def scored(stack: BenchStack, ids: list[str]) -> bool:
    with stack.sessions() as session:
        count = session.scalar(
            select(func.count())
            .select_from(Assessment)
            .where(Assessment.id.in_(ids), Assessment.status == "scored")
        )
    return count == len(ids)


def drain(stack: BenchStack, group_size: int, reports: int) -> float:
    """Reports/s for a backlog of `reports` drained with this group size."""
    relay = start_relay(stack, group_size)
    try:
        bodies = [patient(n) for n in range(reports)]
        queue_reports(stack.sessions, bodies)
        started = time.perf_counter()
        wait_until(lambda: waiting(stack) == 0, 1200, "the backlog to drain", interval=0.01)
        return reports / (time.perf_counter() - started)
    finally:
        relay.stop()


def lone_latency(stack: BenchStack, group_size: int, count: int) -> list[float]:
    """Milliseconds from stored to scored for reports sent one at a time to an idle system."""
    relay = start_relay(stack, group_size)
    try:
        latencies = []
        for n in range(count):
            [assessment_id] = queue_reports(stack.sessions, [patient(n)])
            wait_until(lambda: scored(stack, [assessment_id]), 30, "a lone report", 0.002)  # noqa: B023
            with stack.sessions() as session:
                row = session.get(Assessment, assessment_id)
                assert row is not None and row.scored_at is not None
                latencies.append((row.scored_at - row.created_at).total_seconds() * 1000)
            time.sleep(0.05)
        return latencies
    finally:
        relay.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reports", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--group-size", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--lone", type=int, default=20)
    args = parser.parse_args()

    stack = BenchStack()
    try:
        backend = stack.database_url.split(":", 1)[0]
        print(f"database: {backend}; worker concurrency {args.concurrency}; ", end="")
        print(f"{args.reports} reports per drain, {args.rounds} rounds")
        stack.worker(concurrency=args.concurrency)
        modes = {"per report (group size 1)": 1, f"groups of {args.group_size}": args.group_size}
        rates: dict[str, list[float]] = {name: [] for name in modes}
        for round_no in range(args.rounds):
            for name, size in modes.items():
                rate = drain(stack, size, args.reports)
                rates[name].append(rate)
                print(f"  round {round_no + 1}: {name}: {rate:,.0f} reports/s", flush=True)
        medians = {name: statistics.median(values) for name, values in rates.items()}
        baseline, grouped = medians.values()
        for name, value in medians.items():
            print(f"{name}: median {value:,.0f} reports/s")
        print(f"ratio grouped / per report: {grouped / baseline:.1f}x")
        if args.lone:
            for name, size in modes.items():
                lone = lone_latency(stack, size, args.lone)
                print(
                    f"lone report, {name}: stored→scored p50 {statistics.median(lone):.1f} ms,"
                    f" p90 {percentile(lone, 90):.1f} ms"
                )
    finally:
        stack.close()


if __name__ == "__main__":
    main()

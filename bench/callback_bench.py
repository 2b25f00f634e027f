"""Callback delivery throughput (deliveries/s) to a local receiver, against raw `requests.post`.

    .venv/bin/python bench/callback_bench.py [--deliveries 2000] [--concurrency 16] [--rounds 3]

The real path: deliveries queued the way scoring queues them (`enqueue_result_callbacks`, with
their outbox rows), the outbox relay, Redis, and a callbacks-only Celery worker with a thread
pool (`-P threads -c 16`, as the compose `callback-worker` runs), each delivery claimed,
signed, POSTed, logged and completed in the database. The clock runs from the commit that
queues them to the last one recorded as delivered. The baseline, measured in the same run, is
raw `requests.post` of the same signed body to the same receiver from the same number of
threads (keep-alive sessions): the ceiling of the HTTP part alone.

Uses DATABASE_URL (PostgreSQL) if set, else SQLite in a temp dir; always a private redis-server.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from bench.stack import BenchStack  # noqa: E402
from services.callbacks.delivery import signed_headers  # noqa: E402
from services.local_stack import LOOPBACK_CALLBACK_NETWORKS, callbacks_worker_command  # noqa: E402
from services.reporting.api.subscriptions import new_secret  # noqa: E402
from services.rules.engine import load_ruleset  # noqa: E402
from shared.callbacks import enqueue_result_callbacks, payload_body  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.db import transaction  # noqa: E402
from shared.models import (  # noqa: E402
    DEFAULT_TENANT_ID,
    Assessment,
    CallbackDelivery,
    CallbackSubscription,
    TriageResult,
    new_id,
    utcnow,
)
from shared.repository import urgency_of  # noqa: E402
from tests.factories import report  # noqa: E402
from tests.support import ServiceProcess, wait_until  # noqa: E402


class Receiver:
    """A loopback EHR endpoint that answers 200 at once and counts what it got."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real EHR gateway would
            disable_nagle_algorithm = True  # else headers and body wait on delayed ACKs

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.count += 1
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def start_callback_worker(stack: BenchStack, concurrency: int, pool: str) -> ServiceProcess:
    env = dict(
        stack.env,
        # The receiver is on loopback; and with one subscription, the per-subscription cap on
        # attempts in flight would be what is measured.
        MYOTRIAGE_CALLBACK_ALLOWED_NETWORKS=LOOPBACK_CALLBACK_NETWORKS,
        MYOTRIAGE_CALLBACK_MAX_IN_FLIGHT="100000",
    )
    proc = ServiceProcess(
        "callback-worker",
        [
            *callbacks_worker_command(
                concurrency,
                f"callbacks-bench-{len(stack.procs)}@%h",
                "--without-gossip",
                "--without-mingle",
            ),
            "-P",  # a later -P wins: the bench compares pools
            pool,
        ],
        env,
        stack.workdir / "logs",
    ).start()
    stack.procs.append(proc)
    return proc


def queue_results(stack: BenchStack, count: int, result: dict[str, Any]) -> list[str]:
    """`count` scored assessments, each queueing its callbacks as `_store` does, in one commit."""
    settings = Settings.from_env(database_url=stack.database_url)
    ids = []
    with transaction(stack.sessions) as session:
        for _ in range(count):
            assessment = Assessment(
                tenant_id=DEFAULT_TENANT_ID,
                id=new_id(),
                report=report(),
                patient_ref="MRN-0042",
                source="batch",
                status="scored",
                scored_at=utcnow(),
            )
            triage = TriageResult(
                assessment_id=assessment.id,
                ruleset_version=result["ruleset_version"],
                triage_level=result["triage"],
                priority=int(result["priority"]),
                urgency=urgency_of(result["triage"], int(result["priority"])),
                current=True,
                result=result,
            )
            session.add_all([assessment, triage])
            enqueue_result_callbacks(session, assessment, triage, settings)
            ids.append(assessment.id)
    return ids


def delivered_count(stack: BenchStack) -> int:
    with stack.sessions() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(CallbackDelivery)
                .where(CallbackDelivery.status == "delivered")
            )
            or 0
        )


def pipeline_round(stack: BenchStack, count: int, result: dict[str, Any]) -> float:
    before = delivered_count(stack)
    started = time.perf_counter()
    queue_results(stack, count, result)
    wait_until(
        lambda: delivered_count(stack) >= before + count,
        timeout=600,
        what=f"{count} deliveries",
        interval=0.05,
    )
    return count / (time.perf_counter() - started)


def raw_round(url: str, secret: str, count: int, concurrency: int) -> float:
    body = payload_body({"type": "assessment.scored", "data": {"assessment_id": new_id()}})
    local = threading.local()

    def post(_: int) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        headers = signed_headers(secret, new_id(), body, utcnow())
        response = local.session.post(url, data=body.encode(), headers=headers, timeout=(3, 10))
        response.raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(post, range(count)))
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pool", default="threads", help="the worker's pool: threads, prefork")
    parser.add_argument(
        "--workers", type=int, default=1, help="callback worker processes (compose replicas)"
    )
    args = parser.parse_args()

    receiver = Receiver()
    stack = BenchStack()
    try:
        secret = new_secret()
        with transaction(stack.sessions) as session:
            session.add(
                CallbackSubscription(
                    tenant_id=DEFAULT_TENANT_ID,
                    owner_key_id="bench",
                    callback_url=receiver.url,
                    secret=secret,
                    event_types=["assessment.scored"],
                    include_fhir=False,
                )
            )
        result = load_ruleset().score(report())
        for _ in range(args.workers):
            start_callback_worker(stack, args.concurrency, args.pool)
        stack.relay()
        pipeline_round(stack, 20, result)  # warm-up: worker and relay are up and connected
        raw_round(receiver.url, secret, 200, args.concurrency)
        samples: dict[str, list[float]] = {"worker": [], "raw": []}
        for _ in range(args.rounds):  # alternate, so drift hits both alike
            samples["worker"].append(pipeline_round(stack, args.deliveries, result))
            samples["raw"].append(
                raw_round(receiver.url, secret, args.deliveries, args.concurrency)
            )
        worker, raw = (statistics.median(samples[k]) for k in ("worker", "raw"))
        print(
            f"\nCallback delivery to a loopback receiver, {args.deliveries} deliveries a round, "
            f"{args.workers} worker(s) -P {args.pool} -c {args.concurrency}, "
            f"{stack.database_url.split(':')[0]}, "
            f"medians of {args.rounds} rounds"
        )
        print(f"  relay + callback worker (claim, sign, POST, log): {worker:8.0f} deliveries/s")
        print(f"  raw requests.post, same body and receiver:        {raw:8.0f} requests/s")
        print(f"  ratio: {worker / raw:.2f} of the raw HTTP rate")
        print(
            f"  rounds: worker {[round(x) for x in samples['worker']]}, raw "
            f"{[round(x) for x in samples['raw']]}"
        )
    finally:
        stack.close()
        receiver.server.shutdown()


if __name__ == "__main__":
    main()

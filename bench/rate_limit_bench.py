"""What the rate limits (shared/rate_limits.py) cost intake: off against on, in the same run.

    .venv/bin/python bench/rate_limit_bench.py [--seconds 5] [--rounds 3] [--calls 5000]

1. In one process, one thread: POST /v1/assessments through Flask's test client with the
   limits off, on (generous limits: counted locally, in Redis every 50 requests), and on with
   every request taken to Flask-Limiter and Redis (as happens under a limit below 200 per
   window: three Redis calls), alternating blocks of requests; a Redis PING for scale.
2. Under load: wrk POSTing the example report to intake under gunicorn (4 workers x 16
   threads, as compose runs it) with MYOTRIAGE_RATE_LIMIT_ENABLED=false and with the limits on
   (generous, so that nothing is refused), alternating round by round.

Needs `wrk` for part 2 (apt-get install wrk); `--calls 0` or `--rounds 0` skips a part. Uses
DATABASE_URL if set, else SQLite in a temp dir; always a private redis-server.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from bench.stack import BenchStack, run_wrk
from services.intake.app import create_app
from services.local_stack import INTAKE_THREADS, free_port, wait_for_http
from shared import rate_limits
from shared.config import Settings
from tests.factories import report
from tests.support import ServiceProcess

GENEROUS = "1000000000/minute"


def in_process(stack: BenchStack, calls: int) -> dict[str, float]:
    """Microseconds per call: a Redis PING, and a whole POST with the limits off, on, and on
    with every request asked about in Redis (as a limit under 200 per window is)."""
    settings = Settings.from_env(
        database_url=stack.database_url,
        redis_url=stack.redis.url,
        log_level="WARNING",
        rate_limit_per_key=GENEROUS,
        rate_limit_per_address=GENEROUS,
        rate_limit_failed_auth=GENEROUS,
    )
    apps = {"POST, limits off": create_app(settings.with_overrides(rate_limit_enabled=False))}
    apps["POST, limits on"] = create_app(settings)
    batch, rate_limits.MAX_BATCH = rate_limits.MAX_BATCH, 1
    try:
        apps["POST, limits on, unbatched"] = create_app(settings)
    finally:
        rate_limits.MAX_BATCH = batch
    auth = {"Authorization": f"Bearer {stack.api_key}"}
    figures: dict[str, float] = {}

    client = redis.Redis.from_url(stack.redis.url)
    client.ping()
    started = time.perf_counter()
    for _ in range(calls):
        client.ping()
    figures["redis PING"] = (time.perf_counter() - started) / calls * 1e6

    body = report()
    clients = {name: app.test_client() for name, app in apps.items()}
    samples: dict[str, list[float]] = {name: [] for name in clients}
    block = max(1, calls // 10)
    for test_client in clients.values():  # warm-up
        test_client.post("/v1/assessments", json=body, headers=auth)
    for _ in range(10):  # alternate blocks, so drift hits all alike
        for name, test_client in clients.items():
            started = time.perf_counter()
            for _ in range(block):
                response = test_client.post("/v1/assessments", json=body, headers=auth)
                assert response.status_code == 202, response.get_json()
            samples[name].append((time.perf_counter() - started) / block * 1e6)
    for name, values in samples.items():
        figures[name] = statistics.median(values)
    return figures


def under_load(stack: BenchStack, seconds: int, rounds: int) -> dict[str, dict[str, float]]:
    """wrk against intake with the limits off and on, alternating round by round."""
    variants = {
        "limits off": {"MYOTRIAGE_RATE_LIMIT_ENABLED": "false"},
        "limits on": {
            "MYOTRIAGE_RATE_LIMIT_ENABLED": "true",
            "MYOTRIAGE_RATE_LIMIT_PER_KEY": GENEROUS,
            "MYOTRIAGE_RATE_LIMIT_PER_ADDRESS": GENEROUS,
            "MYOTRIAGE_RATE_LIMIT_FAILED_AUTH": GENEROUS,
        },
    }
    urls = {name: _intake(stack, name, env) for name, env in variants.items()}
    body = json.dumps(report())
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {stack.api_key}"}
    for url in urls.values():  # warm-up
        run_wrk(url + "/v1/assessments", body, headers, 2)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in urls}
    for _ in range(rounds):
        for name, url in urls.items():
            samples[name].append(run_wrk(url + "/v1/assessments", body, headers, seconds))
    for name, runs in samples.items():
        if sum(r["non_2xx"] for r in runs):
            raise SystemExit(f"{name}: non-2xx responses during the benchmark")
    return {
        name: {key: statistics.median(r[key] for r in runs) for key in ("rps", "p50_ms", "p99_ms")}
        for name, runs in samples.items()
    }


def _intake(stack: BenchStack, name: str, extra_env: dict[str, str]) -> str:
    port = free_port()
    env = {**stack.env, **extra_env}
    command = [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "-w", "4"]
    command += ["--threads", INTAKE_THREADS, "-b", f"127.0.0.1:{port}", "services.intake.wsgi:app"]
    proc = ServiceProcess(name.replace(" ", "-"), command, env, stack.workdir / "logs").start()
    stack.procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    if not wait_for_http(url + "/livez", 30):
        raise RuntimeError(f"{name} did not start: {proc.output()[-2000:]}")
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    stack = BenchStack()
    try:
        micro = in_process(stack, args.calls) if args.calls else {}
        load = under_load(stack, args.seconds, args.rounds) if args.rounds else {}
    finally:
        stack.close()
    if micro:
        print(f"one process, one thread; {args.calls} calls; microseconds per call")
        for name, value in micro.items():
            print(f"  {name:<32}{value:>10.0f}")
        for name in ("POST, limits on", "POST, limits on, unbatched"):
            cost = micro[name] - micro["POST, limits off"]
            print(f"  {'cost: ' + name.removeprefix('POST, limits '):<32}{cost:>10.0f}")
    if load:
        print(
            f"intake under gunicorn x4 with {INTAKE_THREADS} threads; wrk -t2 -c32; "
            f"{args.rounds} x {args.seconds} s; medians"
        )
        print(f"  {'':<16}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
        for name, row in load.items():
            print(f"  {name:<16}{row['rps']:>10.0f}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}")
        ratio = load["limits on"]["rps"] / load["limits off"]["rps"]
        print(f"  on / off: {ratio:.3f}")


if __name__ == "__main__":
    main()

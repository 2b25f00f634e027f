"""Signed-webhook intake throughput as a ratio to the plain v1 intake, in the same run.

    .venv/bin/python bench/webhook_bench.py [--seconds 10] [--rounds 3] [--workers 4]

`POST /v1/assessments` (API key, v1 report) against `POST /v1/webhooks/ehr/<id>` (Standard
Webhooks signature, the same v1 report; and a FHIR QuestionnaireResponse) on one gunicorn intake
(sync workers), wrk -t2 -c32, rounds alternating so drift hits all alike. Target: webhook >= 70%
of plain.

Every webhook needs its own webhook-id (a repeated id is answered from the idempotency record,
which is cheaper and would flatter the figure). Before each round the benchmark pre-signs more
(id, timestamp, signature) triples than the round can use, with timestamps of "now" (well inside
the ±5 min tolerance); a wrk Lua script only cycles through them, computing nothing. After each
round it checks that every 2xx created a new assessment (no id was reused).

Needs `wrk`. Uses DATABASE_URL if set (PostgreSQL), else SQLite in a temp dir; always a private
redis-server.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select
from standardwebhooks.webhooks import Webhook

from bench.stack import BenchStack, parse_wrk_output, run_wrk
from services.intake import ehr_integrations
from services.intake.commands import validate_report
from services.intake.fhir_questionnaire import questionnaire_response_from_report
from shared.db import transaction
from shared.models import Assessment
from tests.factories import report

THREADS = 2
CONNECTIONS = 32

# Each wrk thread has its own Lua state: thread k takes lines k, k+T, k+2T... of the triples
# file, so no two threads send the same webhook-id.
LUA = r"""
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end

function init(args)
  local path, threads = args[1], tonumber(args[2])
  local f = io.open(args[3], "rb"); body = f:read("*a"); f:close()
  content_type = args[4]
  triples = {}
  local n = 0
  for line in io.lines(path) do
    if n % threads == tid then
      local id, ts, sig = line:match("^(%S+) (%S+) (.+)$")
      triples[#triples + 1] = {id, ts, sig}
    end
    n = n + 1
  end
  i = 0
end

function request()
  i = i + 1
  if i > #triples then i = 1 end
  local t = triples[i]
  return wrk.format("POST", nil, {
    ["Content-Type"] = content_type,
    ["webhook-id"] = t[1],
    ["webhook-timestamp"] = t[2],
    ["webhook-signature"] = t[3],
  }, body)
end
"""


def presign(secret: str, body: str, count: int, path: Path) -> None:
    """Write `count` lines of "id timestamp signature", all signed now."""
    webhook = Webhook(secret)
    now = datetime.now(UTC)
    stamp = str(int(now.timestamp()))
    with path.open("w") as out:
        for _ in range(count):
            webhook_id = f"msg_{uuid.uuid4().hex}"
            out.write(f"{webhook_id} {stamp} {webhook.sign(webhook_id, now, body)}\n")


def run_wrk_signed(
    url: str, body: str, content_type: str, triples: Path, seconds: int, workdir: Path
) -> dict[str, Any]:
    """wrk with the rotating-triples script; {'rps', 'p50_ms', 'p99_ms', 'non_2xx', 'requests'}."""
    script = workdir / "signed.lua"
    script.write_text(LUA)
    body_file = workdir / "body.json"
    body_file.write_text(body)
    out = subprocess.run(
        [
            "wrk",
            f"-t{THREADS}",
            f"-c{CONNECTIONS}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
            str(triples),
            str(THREADS),
            str(body_file),
            content_type,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return parse_wrk_output(out)


def assessment_count(stack: BenchStack) -> int:
    with stack.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Assessment)) or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4, help="gunicorn sync workers")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed for this benchmark: apt-get install wrk")

    stack = BenchStack()
    workdir = Path(tempfile.mkdtemp(prefix="myotriage-webhook-bench-"))
    try:
        with transaction(stack.sessions) as session:
            integration, _, secret = ehr_integrations.create_integration(session, "bench-ehr")
            integration_id = integration.id
        intake = stack.gunicorn("intake", "services.intake.wsgi:app", workers=args.workers)
        plain_url = intake + "/v1/assessments"
        webhook_url = f"{intake}/v1/webhooks/ehr/{integration_id}"
        v1_body = json.dumps(report())
        fhir_body = json.dumps(
            questionnaire_response_from_report(validate_report(report()), response_id="bench")
        )
        auth = {"Content-Type": "application/json", "Authorization": f"Bearer {stack.api_key}"}

        def signed_round(body: str, content_type: str, seconds: int, expected_rps: float) -> Any:
            # Twice what the plain intake managed, so the ids cannot run out.
            count = max(20_000, int(expected_rps * seconds * 2))
            triples = workdir / "triples.txt"
            presign(secret, body, count, triples)
            before = assessment_count(stack)
            result = run_wrk_signed(webhook_url, body, content_type, triples, seconds, workdir)
            created = assessment_count(stack) - before
            ok = result["requests"] - result["non_2xx"]
            # wrk may count a request cut off at the deadline; allow the connections' worth.
            if created < ok - CONNECTIONS:
                raise SystemExit(f"webhook ids were reused: {ok} 2xx but {created} created")
            result["created"] = created
            return result

        warm = run_wrk(plain_url, v1_body, auth, 2)
        signed_round(v1_body, "application/json", 2, warm["rps"])
        samples: dict[str, list[dict[str, Any]]] = {"plain": [], "webhook": [], "fhir": []}
        for _ in range(args.rounds):
            plain = run_wrk(plain_url, v1_body, auth, args.seconds)
            samples["plain"].append(plain)
            samples["webhook"].append(
                signed_round(v1_body, "application/json", args.seconds, plain["rps"])
            )
            samples["fhir"].append(
                signed_round(fhir_body, "application/fhir+json", args.seconds, plain["rps"])
            )
    finally:
        stack.close()
        shutil.rmtree(workdir, ignore_errors=True)

    for name, runs in samples.items():
        errors = sum(r["non_2xx"] for r in runs)
        if errors:
            raise SystemExit(f"{name}: {errors} non-2xx responses during the benchmark")
    medians = {
        name: {key: statistics.median(r[key] for r in runs) for key in ("rps", "p50_ms", "p99_ms")}
        for name, runs in samples.items()
    }
    db = "postgresql" if stack.database_url.startswith("postgresql") else "sqlite"
    print(
        f"database: {db}; gunicorn sync x{args.workers}; wrk -t{THREADS} -c{CONNECTIONS}, "
        f"{args.rounds} rounds x {args.seconds} s, medians; cpus: {os.cpu_count()}"
    )
    print(f"{'endpoint':<44}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    labels = {
        "plain": "POST /v1/assessments (API key, v1)",
        "webhook": "POST /v1/webhooks/ehr/<id> (signed, v1)",
        "fhir": "POST /v1/webhooks/ehr/<id> (signed, FHIR QR)",
    }
    for name, label in labels.items():
        m = medians[name]
        print(f"{label:<44}{m['rps']:>10.0f}{m['p50_ms']:>10.2f}{m['p99_ms']:>10.2f}")
    plain_rps = medians["plain"]["rps"]
    print(
        f"ratio signed webhook (v1) / plain: {medians['webhook']['rps'] / plain_rps:.2f} "
        "(target >= 0.70)"
    )
    print(f"ratio signed webhook (FHIR QR) / plain: {medians['fhir']['rps'] / plain_rps:.2f}")


if __name__ == "__main__":
    main()

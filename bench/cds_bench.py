"""CDS Hooks `patient-view` latency under concurrency, against `/livez` on the same server.

    .venv/bin/python bench/cds_bench.py [--seconds 10] [--rounds 3] [--connections 32] [--alg ES384]

Target: p99 < 100 ms (CDS Hooks asks for an answer within ~500 ms). Each call carries a fresh
JWT (the service refuses a reused `jti`), so tokens are minted before the run, written to a file,
and a wrk Lua script gives every request its own. The reporting app runs under gunicorn with 4
sync workers; DATABASE_URL (PostgreSQL) if set, else SQLite; a private redis-server holds jtis.
The baseline is `GET /livez` on the same gunicorn, measured in the same run, alternating.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jwt  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402
from jwt.algorithms import ECAlgorithm, RSAAlgorithm  # noqa: E402

from bench.stack import BenchStack, run_wrk_script  # noqa: E402
from services.local_stack import free_port, wait_for_http  # noqa: E402
from services.reporting.cds_cards import PATIENT_VIEW_SERVICE_ID  # noqa: E402
from services.rules.engine import load_ruleset  # noqa: E402
from services.rules.scoring import score_assessment  # noqa: E402
from shared.db import transaction  # noqa: E402
from shared.models import DEFAULT_TENANT_ID, Assessment  # noqa: E402
from tests.factories import DOMS, STROKE, report  # noqa: E402
from tests.support import ServiceProcess  # noqa: E402

ISSUER = "https://ehr.bench"
KID = "bench-key-1"

LUA = """
local thread_count = 0
function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
end
local tokens, bodies, n = {}, {}, 0
function init(args)
  local i = 0
  for line in io.lines("%(tokens)s") do
    if i %% %(threads)d == tid then tokens[#tokens + 1] = line end
    i = i + 1
  end
  for line in io.lines("%(bodies)s") do bodies[#bodies + 1] = line end
end
function request()
  n = n + 1
  local token = tokens[((n - 1) %% #tokens) + 1]
  local body = bodies[((n - 1) %% #bodies) + 1]
  return wrk.format("POST", "%(path)s",
    {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}, body)
end
"""


def _mint(args: tuple[bytes, str, str, int]) -> list[str]:
    pem, algorithm, audience, count = args
    key = serialization.load_pem_private_key(pem, password=None)
    now = int(time.time())
    return [
        jwt.encode(
            {
                "iss": ISSUER,
                "aud": audience,
                "iat": now,
                "exp": now + 290,
                "jti": uuid.uuid4().hex,
            },
            key,  # type: ignore[arg-type]
            algorithm=algorithm,
            headers={"kid": KID},
        )
        for _ in range(count)
    ]


def mint_tokens(pem: bytes, algorithm: str, audience: str, count: int) -> list[str]:
    """`count` distinct JWTs, minted on every core (ES384 signing is ~0.3 ms each)."""
    procs = os.cpu_count() or 1
    share = -(-count // procs)
    with multiprocessing.Pool(procs) as pool:
        parts = pool.map(_mint, [(pem, algorithm, audience, share)] * procs)
    return [token for part in parts for token in part][:count]


def start_reporting(stack: BenchStack, extra_env: dict[str, str], port: int) -> ServiceProcess:
    env = {**stack.env, **extra_env, "GUNICORN_WORKERS": "4"}
    proc = ServiceProcess(
        "reporting",
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "deploy/gunicorn.conf.py",
            "-b",
            f"127.0.0.1:{port}",
            "services.reporting.wsgi:app",
        ],
        env,
        stack.workdir / "logs",
    ).start()
    stack.procs.append(proc)
    if not wait_for_http(f"http://127.0.0.1:{port}/livez", 30):
        raise SystemExit(f"reporting did not start: {proc.output()[-2000:]}")
    return proc


def seed_patients(stack: BenchStack, count: int) -> list[str]:
    """`count` patients, each with one assessment scored by the real engine."""
    ruleset = load_ruleset()
    patients = []
    for index in range(count):
        patient = f"BENCH-{index:05d}"
        base = report(STROKE if index % 3 == 0 else DOMS if index % 3 == 1 else None)
        body = {**base, "patient": {**base["patient"], "id": patient}}
        with transaction(stack.sessions) as session:
            assessment = Assessment(
                tenant_id=DEFAULT_TENANT_ID,
                report=body,
                patient_ref=patient,
                source="api",
                status="queued",
            )
            session.add(assessment)
        score_assessment(stack.sessions, ruleset, assessment.id)
        patients.append(patient)
    return patients


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", default="4,32", help="concurrency levels, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--alg", choices=("ES384", "RS384"), default="ES384")
    parser.add_argument(
        "--tokens-per-second", type=int, default=1500, help="JWTs minted per second of load"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed for this benchmark: apt-get install wrk")

    if args.alg == "ES384":
        key: Any = ec.generate_private_key(ec.SECP384R1())
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    issuers = [{"iss": ISSUER, "jwks": {"keys": [{**jwk, "kid": KID, "alg": args.alg}]}}]

    stack = BenchStack()
    try:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        path = f"/cds-services/{PATIENT_VIEW_SERVICE_ID}"
        start_reporting(
            stack,
            {"MYOTRIAGE_CDS_ISSUERS": json.dumps(issuers), "MYOTRIAGE_REPORTING_URL": base},
            port,
        )
        patients = seed_patients(stack, args.patients)
        bodies_file = stack.workdir / "bodies.txt"
        bodies_file.write_text(
            "\n".join(
                json.dumps(
                    {
                        "hook": "patient-view",
                        "hookInstance": str(uuid.uuid4()),
                        "context": {"userId": "Practitioner/1", "patientId": p},
                    }
                )
                for p in patients + [f"UNKNOWN-{i}" for i in range(len(patients) // 3)]
            )
            + "\n"
        )
        livez_lua = 'wrk.method = "GET"\n'
        levels = [int(c) for c in args.connections.split(",")]
        runs_each = len(levels) * (args.seconds * args.rounds + 2)
        started = time.perf_counter()
        tokens = mint_tokens(pem, args.alg, base + path, args.tokens_per_second * runs_each)
        print(f"minted {len(tokens)} {args.alg} JWTs in {time.perf_counter() - started:.1f} s")
        offset = 0
        print(
            f"\nCDS Hooks patient-view vs GET /livez on the same gunicorn (4 sync workers), "
            f"{stack.database_url.split(':')[0]}, {args.alg}, medians of {args.rounds} x "
            f"{args.seconds} s"
        )
        for connections in levels:
            samples: dict[str, list[dict[str, Any]]] = {"patient-view": [], "livez": []}
            rounds = [("warm-up", 2)] + [(f"round {i}", args.seconds) for i in range(args.rounds)]
            for name, seconds in rounds:  # alternate, so drift hits both alike
                share = tokens[offset : offset + args.tokens_per_second * seconds]
                offset += len(share)
                tokens_file = stack.workdir / "tokens.txt"
                tokens_file.write_text("\n".join(share) + "\n")
                script = LUA % {
                    "tokens": tokens_file,
                    "bodies": bodies_file,
                    "threads": args.threads,
                    "path": path,
                }
                cds = run_wrk_script(base + path, script, seconds, connections, args.threads)
                livez = run_wrk_script(
                    base + "/livez", livez_lua, seconds, connections, args.threads
                )
                if cds["requests"] > len(share):
                    print(f"  {name}: tokens ran out (replays are 401s); raise --tokens-per-second")
                if name != "warm-up":
                    samples["patient-view"].append(cds)
                    samples["livez"].append(livez)
            print(f"  {connections} connections:")
            for name, runs in samples.items():
                med = {
                    k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p99_ms")
                }
                errors = sum(r["non_2xx"] for r in runs)
                print(
                    f"    {name:13s} {med['rps']:8.0f} req/s   p50 {med['p50_ms']:7.2f} ms   "
                    f"p99 {med['p99_ms']:7.2f} ms   non-2xx {errors}"
                )
            p99 = statistics.median(r["p99_ms"] for r in samples["patient-view"])
            verdict = "met" if p99 < 100 else "NOT met"
            print(f"    patient-view p99 < 100 ms: {verdict} ({p99:.1f} ms)")
    finally:
        stack.close()


if __name__ == "__main__":
    main()

"""Start pieces of the system on loopback for benchmarks: redis, gunicorn apps, worker, relay."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.local_stack import free_port, wait_for_http  # noqa: E402
from shared.auth import SCOPES, create_api_key  # noqa: E402
from shared.db import make_engine, make_session_factory, transaction  # noqa: E402
from shared.migrate import upgrade_database  # noqa: E402
from shared.secrets_at_rest import install_secret_keys  # noqa: E402
from tests.support import (  # noqa: E402
    TEST_SECRET_KEYS,
    RedisServer,
    ServiceProcess,
    relay_process,
    worker_process,
)


class BenchStack:
    """A private database and Redis, plus whichever processes a benchmark starts."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="myotriage-bench-"))
        self.redis = RedisServer(self.workdir / "redis").start()
        self.database_url = (
            os.environ.get("DATABASE_URL") or f"sqlite:///{self.workdir / 'bench.db'}"
        )
        if self.database_url.startswith("postgresql"):
            _reset_postgres(self.database_url)
        install_secret_keys(self.env["MYOTRIAGE_SECRET_KEYS"])  # benches store secrets too
        upgrade_database(self.database_url)
        self.sessions = make_session_factory(make_engine(self.database_url))
        with transaction(self.sessions) as session:
            _, self.api_key = create_api_key(session, "bench", list(SCOPES))
        self.procs: list[ServiceProcess] = []

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.database_url, REDIS_URL=self.redis.url, MYOTRIAGE_LOG_LEVEL="WARNING"
        )
        # One key from one address at thousands a second: the rate limits stay on (their cost
        # is part of what is measured) but never refuse (bench/rate_limit_bench.py: on vs off).
        for name in ("PER_KEY", "PER_ADDRESS", "FAILED_AUTH"):
            env.setdefault(f"MYOTRIAGE_RATE_LIMIT_{name}", "1000000000/minute")
        if not env.get("MYOTRIAGE_SECRET_KEYS"):
            env["MYOTRIAGE_SECRET_KEYS"] = TEST_SECRET_KEYS
        return env

    def gunicorn(self, name: str, app: str, workers: int = 4, threads: int = 1) -> str:
        port = free_port()
        proc = ServiceProcess(
            name,
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "deploy/gunicorn.conf.py",
                "-w",
                str(workers),
                "--threads",
                str(threads),
                "-b",
                f"127.0.0.1:{port}",
                app,
            ],
            self.env,
            self.workdir / "logs",
        ).start()
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        probe = "/livez" if "bench" not in app else "/"
        if not wait_for_http(url + probe, 30) and probe == "/livez":
            raise RuntimeError(f"{name} did not start: {proc.output()[-2000:]}")
        if probe == "/":
            time.sleep(1.5)
        return url

    def worker(self, concurrency: int = 2) -> ServiceProcess:
        proc = worker_process(self.env, self.workdir / "logs", concurrency=concurrency).start()
        self.procs.append(proc)
        return proc

    def relay(self) -> ServiceProcess:
        proc = relay_process(self.env, self.workdir / "logs").start()
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.redis.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _reset_postgres(url: str) -> None:
    from sqlalchemy import text

    from shared.models import Base

    engine = make_engine(url)
    with engine.begin() as conn:
        Base.metadata.drop_all(conn)
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def run_wrk(
    url: str,
    body: str,
    headers: dict[str, str],
    seconds: int,
    connections: int = 32,
    threads: int = 2,
) -> dict[str, Any]:
    """POST `body` with wrk; returns {'rps', 'p50_ms', 'p99_ms', 'non_2xx', 'requests'}."""
    lines = ['wrk.method = "POST"', f"wrk.body = [[{body}]]"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    return run_wrk_script(url, "\n".join(lines) + "\n", seconds, connections, threads)


def run_wrk_script(
    url: str, script: str, seconds: int, connections: int = 32, threads: int = 2
) -> dict[str, Any]:
    """Run wrk with a Lua `script`; returns `parse_wrk_output`'s figures."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed for this benchmark: apt-get install wrk")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as file:
        file.write(script)
    try:
        out = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                file.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(file.name)
    return parse_wrk_output(out)


def parse_wrk_output(out: str) -> dict[str, Any]:
    """wrk --latency's report as {'rps', 'p50_ms', 'p99_ms', 'non_2xx', 'requests'}."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    pct = {
        m.group(1): float(m.group(2)) * _UNITS[m.group(3)]
        for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, flags=re.M)
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "rps": rps,
        "p50_ms": pct.get("50"),
        "p99_ms": pct.get("99"),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "requests": requests,
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]

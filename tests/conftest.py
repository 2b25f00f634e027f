"""Fixtures on real parts: a real database (PostgreSQL when DATABASE_URL points to one, SQLite
otherwise), a real Redis (REDIS_URL, or a private redis-server the run starts) and a real Celery
worker and outbox relay in subprocesses. Never eager mode."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, delete, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from services.intake.app import create_app as create_intake
from services.local_stack import LOOPBACK_CALLBACK_NETWORKS
from services.reporting.app import create_app as create_reporting
from shared.auth import SCOPES, create_api_key
from shared.config import Settings
from shared.db import make_engine, make_session_factory, transaction
from shared.migrate import upgrade_database
from shared.models import Base
from tests.support import (
    TEST_SECRET_KEYS,
    RedisServer,
    ServiceProcess,
    callbacks_worker_process,
    relay_process,
    service_env,
    wait_until,
    worker_process,
)

# The suite sends thousands of requests from one address, most with one key: generous rate
# limits for every app and process it starts (tests/integration/test_rate_limits.py sets its own).
os.environ.update(
    dict.fromkeys(
        (
            "MYOTRIAGE_RATE_LIMIT_PER_KEY",
            "MYOTRIAGE_RATE_LIMIT_PER_ADDRESS",
            "MYOTRIAGE_RATE_LIMIT_FAILED_AUTH",
        ),
        "100000/minute",
    )
)


def _reset_database(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        Base.metadata.drop_all(conn)
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()
    upgrade_database(url)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("myotriage")


@pytest.fixture(scope="session")
def database_url(run_dir: Path) -> Iterator[str]:
    """SQLite in the run folder, or, with DATABASE_URL on PostgreSQL, a fresh database of this
    session's own on that server (so parallel runs never share tables), dropped at the end."""
    url = os.environ.get("DATABASE_URL")
    if not url:
        url = f"sqlite:///{run_dir / 'test.db'}"
        _reset_database(url)
        yield url
        return
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        _reset_database(url)
        yield url
        return
    name = f"{parsed.database}_t{os.getpid()}"
    admin = create_engine(parsed, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except ProgrammingError:  # no CREATEDB right: use the given database as it is
        admin.dispose()
        _reset_database(url)
        yield url
        return
    session_url = parsed.set(database=name).render_as_string(hide_password=False)
    upgrade_database(session_url)
    yield session_url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url(run_dir: Path) -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        client = redis.Redis.from_url(os.environ["REDIS_URL"])
        client.flushdb()
        yield os.environ["REDIS_URL"]
        return
    server = RedisServer(run_dir / "redis").start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str) -> Settings:
    return Settings.from_env(
        database_url=database_url,
        redis_url=redis_url,
        intake_base_url="http://intake.test",
        reporting_base_url="http://reporting.test",
        api_key_cache_seconds=0.0,
        # As `service_env` gives the worker: callbacks to loopback test receivers are allowed.
        callback_allowed_networks=LOOPBACK_CALLBACK_NETWORKS,
        secret_keys=TEST_SECRET_KEYS,
    )


@pytest.fixture(scope="session")
def sessions(settings: Settings) -> Any:
    return make_session_factory(make_engine(settings.database_url))


@pytest.fixture(scope="session")
def pipeline(settings: Settings, run_dir: Path) -> Iterator[dict[str, ServiceProcess]]:
    """A real rules worker, callbacks worker and outbox relay against the test database and
    Redis."""
    env = service_env(settings.database_url, settings.redis_url)
    procs = {
        "worker": worker_process(env, run_dir / "logs").start(),
        "callbacks": callbacks_worker_process(env, run_dir / "logs").start(),
        "relay": relay_process(env, run_dir / "logs").start(),
    }
    yield procs
    for proc in procs.values():
        proc.stop()


@pytest.fixture(scope="session")
def intake_app(settings: Settings) -> Any:
    app = create_intake(settings)
    app.config["TESTING"] = True
    return app


@pytest.fixture(scope="session")
def reporting_app(settings: Settings) -> Any:
    app = create_reporting(settings)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def intake(intake_app: Any) -> Any:
    return intake_app.test_client()


@pytest.fixture
def reporting(reporting_app: Any) -> Any:
    return reporting_app.test_client()


def _key(sessions: Any, scopes: list[str]) -> str:
    with transaction(sessions) as session:
        _, raw = create_api_key(session, "test", scopes)
    return raw


@pytest.fixture(scope="session")
def admin_key(sessions: Any) -> str:
    return _key(sessions, list(SCOPES))


@pytest.fixture(scope="session")
def auth(admin_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_key}"}


@pytest.fixture
def make_key(sessions: Any) -> Any:
    return lambda *scopes: _key(sessions, list(scopes))


@pytest.fixture
def empty_db(sessions: Any, pipeline: Any) -> None:
    """Start from no assessments (for tests that read whole listings), once earlier tests'
    reports have all been scored, so none lands in the listing later."""
    from sqlalchemy import func, select

    from shared.models import Assessment, AuditEvent, IdempotencyRecord, OutboxMessage, TriageResult

    def settled() -> bool:
        with sessions() as session:
            pending = session.scalar(
                select(func.count())
                .select_from(Assessment)
                .where(Assessment.status.in_(("queued", "scoring")))
            )
        return pending == 0

    wait_until(settled, 60, "earlier tests' reports to be scored")
    with transaction(sessions) as session:
        for model in (TriageResult, OutboxMessage, IdempotencyRecord, AuditEvent, Assessment):
            session.execute(delete(model))


@pytest.fixture
def wait_scored(intake: Any, auth: dict[str, str]) -> Any:
    def wait(assessment_id: str, timeout: float = 20.0) -> dict[str, Any]:
        def scored() -> dict[str, Any] | None:
            body = intake.get(f"/v1/assessments/{assessment_id}", headers=auth).get_json()
            return body if body["status"] in ("scored", "failed") else None

        return wait_until(scored, timeout, f"assessment {assessment_id} to be scored")  # type: ignore[no-any-return]

    return wait

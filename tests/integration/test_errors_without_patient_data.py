"""Errors carry no patient data: SQL parameters are hidden from every engine's errors, and an
unexpected error while scoring reaches Celery as the assessment id and the error's class."""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from services.intake.app import create_app as create_intake
from services.rules import runtime
from services.rules.tasks import ScoringFailed, register_tasks
from shared.auth import SCOPES, create_api_key
from shared.celery_app import SCORE_TASK, create_celery
from shared.config import Settings
from shared.db import make_engine, make_session_factory, transaction
from shared.migrate import upgrade_database
from shared.models import Assessment
from tests.factories import report
from tests.support import RedisServer, private_database, wait_until

ROOT = Path(__file__).resolve().parents[2]
SECRET = "MRN-SECRET-4242"


def test_a_failed_statement_names_no_parameter_in_its_error_or_log(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(database_url)
    with pytest.raises(DBAPIError) as failure, engine.begin() as conn:
        conn.execute(text("INSERT INTO no_such_table (patient_id) VALUES (:p)"), {"p": SECRET})
    engine.dispose()
    assert SECRET not in str(failure.value)
    assert "SQL parameters hidden" in str(failure.value)
    # As a worker logs an error it retries, or a request an error it did not expect.
    logging.getLogger("myotriage.test").error("statement failed", exc_info=failure.value)
    assert "no_such_table" in caplog.text and SECRET not in caplog.text


def test_every_engine_is_made_by_make_engine() -> None:
    # make_engine sets hide_parameters; an engine made elsewhere would not have it.
    made_elsewhere = [
        str(path.relative_to(ROOT))
        for folder in ("services", "shared", "bench")
        for path in (ROOT / folder).rglob("*.py")
        if path != ROOT / "shared" / "db.py"
        and re.search(r"\bcreate_(async_)?engine\(", path.read_text())
    ]
    assert made_elsewhere == []


class BrokenRuleSet:
    """A rule set with a bug that quotes the report in its error, as a KeyError on a finding
    code or a ValueError with a value would."""

    version = "broken-1"

    def score(self, report: dict[str, Any]) -> dict[str, Any]:
        raise ValueError(f"cannot read {report['patient']['id']!r}")


@pytest.fixture
def queued_assessment(
    database_url: str, redis_url: str, settings: Settings, tmp_path: Path
) -> Iterator[tuple[Any, str]]:
    """(sessions, id) of an assessment accepted into a database of its own, which no worker or
    relay of the session watches."""
    databases = private_database(database_url, tmp_path, "scoring_errors")
    url = next(databases)
    upgrade_database(url)
    sessions = make_session_factory(make_engine(url))
    with transaction(sessions) as session:
        _, key = create_api_key(session, "scoring-errors", list(SCOPES))
    client = create_intake(settings.with_overrides(database_url=url)).test_client()
    body = report(patient={"id": SECRET, "age": 50})
    response = client.post("/v1/assessments", json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 202
    yield sessions, response.get_json()["id"]
    sessions.kw["bind"].dispose()
    next(databases, None)


@pytest.fixture
def broken_rules(monkeypatch: pytest.MonkeyPatch, queued_assessment: tuple[Any, str]) -> None:
    sessions, _ = queued_assessment
    monkeypatch.setattr(runtime, "sessions", lambda: sessions)
    monkeypatch.setattr(runtime, "ruleset", lambda: BrokenRuleSet())


def failure_of(sessions: Any, assessment_id: str) -> tuple[str, str | None]:
    with sessions() as session:
        assessment = session.get(Assessment, assessment_id)
        return assessment.status, assessment.failure_reason


@pytest.mark.usefixtures("broken_rules")
def test_an_engine_error_is_raised_as_id_and_class_with_nothing_chained(
    settings: Settings, queued_assessment: tuple[Any, str], capsys: pytest.CaptureFixture[str]
) -> None:
    sessions, assessment_id = queued_assessment
    app = create_celery(settings)
    register_tasks(app)
    with pytest.raises(ScoringFailed) as raised:
        app.tasks[SCORE_TASK](assessment_id)
    error = raised.value
    assert str(error) == f"scoring assessment {assessment_id} failed: ValueError"
    assert error.__context__ is None and error.__cause__ is None
    assert SECRET not in "".join(traceback.format_exception(error))
    # The failure is recorded for a person to look at, by class only.
    assert failure_of(sessions, assessment_id) == ("failed", "engine error: ValueError")
    logs = capsys.readouterr().out
    assert '"event": "score.engine_error"' in logs and "ValueError" in logs
    # Where it was raised (code, for whoever fixes it), and nothing of the report.
    assert '"raised_at": "test_errors_without_patient_data.py:' in logs
    assert SECRET not in logs


@pytest.mark.usefixtures("broken_rules")
def test_celerys_own_log_of_the_failure_holds_no_patient_data(
    settings: Settings,
    queued_assessment: tuple[Any, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A real worker (in this process, on a Redis of its own) runs the task from the broker."""
    sessions, assessment_id = queued_assessment
    broker = RedisServer(tmp_path / "broker").start()
    try:
        app = create_celery(settings.with_overrides(redis_url=broker.url))
        register_tasks(app)
        with caplog.at_level(logging.ERROR), start_worker(app, perform_ping_check=False):
            app.tasks[SCORE_TASK].apply_async((assessment_id,))
            wait_until(lambda: "raised unexpected" in caplog.text, 30, "Celery to log the failure")
    finally:
        broker.stop()
    assert f"ScoringFailed: scoring assessment {assessment_id} failed: ValueError" in caplog.text
    assert SECRET not in caplog.text
    assert failure_of(sessions, assessment_id) == ("failed", "engine error: ValueError")

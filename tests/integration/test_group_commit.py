"""Group commit on the real database: concurrent callers share a transaction, and each still
gets its own answer (one caller's constraint violation never costs another caller its rows)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from shared import group_commit, repository
from shared.auth import create_api_key
from shared.db import make_engine, transaction
from shared.group_commit import GroupCommitter, NotWritten, Row
from shared.migrate import upgrade_database
from shared.models import DEFAULT_TENANT_ID, Assessment, IdempotencyRecord, OutboxMessage, new_id
from shared.schemas.symptom_report import SymptomReportSchema
from tests.factories import report

REPORT = SymptomReportSchema().load(report())


@pytest.fixture
def engine(sessions: Any) -> Any:
    return sessions.kw["bind"]


def _rows() -> tuple[str, list[Row]]:
    return repository.assessment_rows(
        REPORT, tenant_id=DEFAULT_TENANT_ID, source="api", submitted_by=None
    )


def _stored(sessions: Any, ids: list[str]) -> set[str]:
    with sessions() as session:
        found = session.scalars(select(Assessment.id).where(Assessment.id.in_(ids))).all()
        queued = session.scalars(
            select(OutboxMessage.assessment_id).where(OutboxMessage.assessment_id.in_(ids))
        ).all()
    assert set(found) == set(queued), "an assessment without its outbox row, or the reverse"
    return set(found)


@contextmanager
def _counting_commits() -> Iterator[list[float]]:
    """Yields a list that holds, afterwards, how many transactions the committers ran."""
    before = _batches()
    counted: list[float] = []
    yield counted
    counted.append(_batches() - before)


def _batches() -> float:
    return REGISTRY.get_sample_value("myotriage_group_commit_callers_count") or 0.0


def _run_together(
    writer: GroupCommitter,
    batches: list[list[Row]],
    hold_first: int,
    fail_with: BaseException | None = None,
) -> list[BaseException | None]:
    """Insert each row list from its own thread. The first caller's transaction is held open
    until `hold_first` more callers are queued behind it, so they must share the next commit.
    With `fail_with`, every statement raises it (after the hold)."""
    errors: list[BaseException | None] = [None] * len(batches)
    first_in = threading.Event()
    release = threading.Event()
    execute = writer._execute

    def slow_first_statement(cursor: Any, sql: str, params: list[Any]) -> None:
        if not first_in.is_set():
            first_in.set()
            release.wait(10)
        if fail_with is not None:
            raise fail_with
        execute(cursor, sql, params)

    writer._execute = slow_first_statement  # type: ignore[method-assign]

    def call(index: int) -> None:
        try:
            writer.insert(batches[index])
        except BaseException as exc:
            errors[index] = exc

    try:
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(batches))]
        threads[0].start()
        assert first_in.wait(10)
        for thread in threads[1:]:
            thread.start()
        deadline = time.monotonic() + 10
        while len(writer._waiting) < hold_first and time.monotonic() < deadline:
            time.sleep(0.005)
        release.set()
        for thread in threads:
            thread.join(20)
            assert not thread.is_alive(), "a caller never got its answer"
    finally:
        writer._execute = execute  # type: ignore[method-assign]
    return errors


def test_callers_queued_behind_a_commit_share_the_next_one(engine: Any, sessions: Any) -> None:
    writer = GroupCommitter(engine)
    made = [_rows() for _ in range(9)]
    with _counting_commits() as commits:
        errors = _run_together(writer, [rows for _, rows in made], hold_first=8)
    assert errors == [None] * 9
    assert _stored(sessions, [i for i, _ in made]) == {i for i, _ in made}
    assert commits == [2]  # the first caller alone, then the eight that queued meanwhile


def test_one_callers_conflict_fails_only_that_caller(
    engine: Any, sessions: Any, key_id: str
) -> None:
    writer = GroupCommitter(engine)
    made = [_rows() for _ in range(6)]
    batches = [rows for _, rows in made]
    record = repository.idempotency_row(
        caller_id=key_id,
        key=f"dup-{time.monotonic_ns()}",
        fingerprint="f",
        status_code=202,
        response_body={},
        location=None,
    )
    # Callers 2 and 4 use the same Idempotency-Key: whichever is written second must fail.
    batches[2] = [*batches[2], record]
    batches[4] = [*batches[4], (record[0], {**record[1], "id": new_id()})]
    errors = _run_together(writer, batches, hold_first=5)

    failed = [i for i, error in enumerate(errors) if error is not None]
    assert len(failed) == 1 and failed[0] in (2, 4)
    assert isinstance(errors[failed[0]], IntegrityError)
    expected = {made[i][0] for i in range(6) if i not in failed}
    assert _stored(sessions, [i for i, _ in made]) == expected  # nothing half-stored
    with sessions() as session:
        assert session.scalar(
            select(IdempotencyRecord.id).where(IdempotencyRecord.key == record[1]["key"])
        )


def test_a_lone_caller_writes_at_once_and_errors_reach_it(engine: Any, sessions: Any) -> None:
    writer = GroupCommitter(engine)
    assessment_id, rows = _rows()
    writer.insert(rows)
    assert _stored(sessions, [assessment_id]) == {assessment_id}
    with pytest.raises(IntegrityError):
        writer.insert(rows)  # the same ids again
    # The lead was handed back: the next caller is not stuck behind the failure.
    next_id, next_rows = _rows()
    writer.insert(next_rows)
    assert _stored(sessions, [next_id]) == {next_id}


def test_many_threads_lose_nothing(engine: Any, sessions: Any) -> None:
    writer = GroupCommitter(engine, max_callers=8)
    made = [_rows() for _ in range(120)]
    errors: list[BaseException] = []

    def worker(chunk: list[tuple[str, list[Row]]]) -> None:
        for _, rows in chunk:
            try:
                writer.insert(rows)
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(made[i::12],)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert _stored(sessions, [i for i, _ in made]) == {i for i, _ in made}


@pytest.fixture
def key_id(sessions: Any) -> str:
    with transaction(sessions) as session:
        row, _ = create_api_key(
            session, f"group-commit-{time.monotonic_ns()}", ["assessments:write"]
        )
        return row.id


def test_an_interrupted_leader_never_reports_success_for_unwritten_rows(
    engine: Any, sessions: Any
) -> None:
    writer = GroupCommitter(engine)
    made = [_rows() for _ in range(6)]
    errors = _run_together(
        writer, [rows for _, rows in made], hold_first=5, fail_with=_Interrupted()
    )
    # The first caller and the one that led the queued five were interrupted themselves; the
    # four that waited on the second leader learn that their rows were not written.
    assert sum(isinstance(error, _Interrupted) for error in errors) == 2
    assert sum(isinstance(error, NotWritten) for error in errors) == 4
    assert _stored(sessions, [i for i, _ in made]) == set()
    # The committer is usable again.
    assessment_id, rows = _rows()
    writer.insert(rows)
    assert _stored(sessions, [assessment_id]) == {assessment_id}


class _Interrupted(BaseException):
    """Stands in for what stops a thread mid-write: a worker timeout, an exit."""


def test_a_dead_connection_is_replaced_and_the_rows_still_written(
    engine: Any, sessions: Any
) -> None:
    # The committer keeps one connection; a database restart leaves it dead while it sits
    # idle. The next batch finds out on its first statement, before anything was committed,
    # and is written once more on a new connection.
    writer = GroupCommitter(engine)
    first_id, rows = _rows()
    writer.insert(rows)
    kept = writer._connection
    assert kept is not None
    kept.dbapi_connection.close()  # type: ignore[union-attr]
    next_id, next_rows = _rows()
    writer.insert(next_rows)
    assert writer._connection is not kept
    assert _stored(sessions, [first_id, next_id]) == {first_id, next_id}


def test_rows_must_give_every_column_that_has_a_default(engine: Any) -> None:
    # Defaults are SQLAlchemy's to fill in at execution time, which the committer bypasses:
    # a row without them is refused before it is queued, not stored without its timestamps.
    _, rows = _rows()
    table, values = rows[0]
    values = {key: value for key, value in values.items() if key != "created_at"}
    with pytest.raises(ValueError, match="created_at"):
        GroupCommitter(engine).insert([(table, values)])


def test_sqlite_wal_is_checkpointed_and_started_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The committer turns SQLite's automatic checkpoint off for its connection (it would run
    # inside a commit, under the write lock) and checkpoints itself; the WAL must still be
    # copied back and started over, not grow for ever. On a database of its own: the session's
    # relay polls the shared test database, and a reader inside the WAL at the moment of a
    # restart postpones it, which would make this a test of timing.
    url = f"sqlite:///{tmp_path / 'wal.db'}"
    upgrade_database(url)
    engine = make_engine(url)
    monkeypatch.setattr(group_commit, "CHECKPOINT_EVERY", 10)
    try:
        writer = GroupCommitter(engine)
        commits = 300
        for _ in range(commits):
            writer.insert(_rows()[1])
        with engine.connect() as connection:
            _busy, wal_frames, _done = connection.exec_driver_sql(
                "PRAGMA wal_checkpoint(PASSIVE)"
            ).one()
    finally:
        engine.dispose()
    # Every commit writes a page of each of the assessment's and the outbox's b-trees (eight).
    # Without a restart the WAL would hold all of them.
    assert wal_frames < commits * 4


def test_postgres_backend_killed_between_batches(engine: Any, sessions: Any) -> None:
    # What a PostgreSQL restart does to the kept connection: the server ends its backend.
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's backends")
    writer = GroupCommitter(engine)
    first_id, rows = _rows()
    writer.insert(rows)
    assert writer._connection is not None
    backend = writer._connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
    with engine.connect() as connection:
        connection.exec_driver_sql(f"SELECT pg_terminate_backend({int(backend)})")
    next_id, next_rows = _rows()
    writer.insert(next_rows)
    assert _stored(sessions, [first_id, next_id]) == {first_id, next_id}

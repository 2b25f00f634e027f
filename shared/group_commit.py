"""Group commit: concurrent requests' rows inserted in one transaction, one commit for all.

A commit is the dearest part of accepting a report: on PostgreSQL a WAL flush and a handful of
round trips, on SQLite the pages of every index written to the WAL. When several request threads
of one process arrive together, the first becomes the *leader*: it takes every waiting caller's
rows, inserts them table by table with one `executemany` each, commits once, and wakes the
others. While it writes, new callers queue; when it is done it hands the lead to the oldest of
them. Alone, a caller simply writes its own rows at once: there is no timer and no added wait.

On SQLite the leaders of different processes take turns on a lock file next to the database:
one that waits wakes as soon as the lock is free, whereas SQLite's own busy handler polls in
sleeps of 1 to 100 ms and leaves the CPU idle while requests queue.

The rows go to the driver directly (each table's INSERT compiled once by SQLAlchemy, each value
converted by its column type's own bind processor, in the caller's thread before it queues), on
one connection the committer keeps: SQLAlchemy's per-statement execution machinery cost more
than SQLite's own insert and commit, and a pooled connection's checkout and reset cost again.

SQLite checkpoints (copying the WAL back into the database file, then an fsync) are kept out of
the lock file's hold: SQLite's automatic checkpoint runs inside the commit that crosses its
threshold, so every other process's writers waited behind its fsync, and throughput collapsed
to half for a while every time. Here the committer's connection does no automatic checkpoint;
every `CHECKPOINT_EVERY` commits a background thread checkpoints without any lock (the bulk of
the copying and the fsync), and the next leader finishes it under the lock (the few frames
written meanwhile), so that the next writer starts the WAL over and it stays small.

Every caller still gets its own answer. If the shared transaction fails (a duplicate
Idempotency-Key, a constraint, a lost connection) it is rolled back whole and each caller's rows
are written again in a transaction of their own, so one caller's error is raised to that caller
only, and nothing is half-stored. `insert` returns only after the caller's rows are committed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, Final

import structlog
from prometheus_client import Histogram
from sqlalchemy import Dialect, Engine, Table, insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import PoolProxiedConnection

Row = tuple[Table, dict[str, Any]]

BATCH_SIZE = Histogram(
    "myotriage_group_commit_callers",
    "Callers whose rows one commit wrote",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
DEFAULT_MAX_CALLERS: Final = 64
# SQLite: commits between checkpoints (SQLite's own default is after ~1,000 pages of WAL; one
# report's commit writes ~10).
CHECKPOINT_EVERY: Final = 256

log = structlog.get_logger("myotriage.group_commit")


class NotWritten(RuntimeError):
    """The thread writing this caller's rows stopped before it could say how it went."""


class _Insert:
    """One table's INSERT of one set of columns, as the driver takes it: the SQL text and, per
    parameter in the driver's order, the column type's bind processor (or None)."""

    __slots__ = ("positional", "processors", "rank", "sql")

    def __init__(self, table: Table, columns: tuple[str, ...], dialect: Dialect, rank: int) -> None:
        compiled = insert(table).compile(dialect=dialect, column_keys=list(columns))
        names = list(compiled.positiontup or ()) if dialect.positional else list(compiled.params)
        missing = set(names) - set(columns)
        if missing:  # a column default SQLAlchemy would have filled in at execution time
            raise ValueError(f"{table.name} rows must give {sorted(missing)}")
        self.sql = compiled.string
        self.positional = dialect.positional
        self.rank = rank
        self.processors: list[tuple[str, Callable[[Any], Any] | None]] = [
            (name, table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in names
        ]

    def params(self, values: dict[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        if self.positional:
            return tuple(
                values[name] if process is None else process(values[name])
                for name, process in self.processors
            )
        return {
            name: values[name] if process is None else process(values[name])
            for name, process in self.processors
        }


_Prepared = tuple[_Insert, Any]  # a row's statement and its driver parameters


class _Disconnected(Exception):
    """The kept connection was found dead before the batch's commit was sent."""


class _Caller:
    __slots__ = ("committed", "done", "error", "lead", "rows")

    def __init__(self, rows: list[_Prepared]) -> None:
        self.rows = rows
        self.done = threading.Event()
        self.committed = False
        self.error: BaseException | None = None
        self.lead = False  # set when the caller is woken to lead the next batch


class GroupCommitter:
    """Inserts rows for many threads of one process, committing their rows together.

    Create one per process (after a fork) per engine. Rows are `(table, values)` pairs; every
    values dict for one table must name the same columns, since a table's rows from all callers
    go into one `executemany`. Tables are written parents first (the metadata's dependency
    order), so a caller's child rows may refer to its own parent rows.
    """

    def __init__(self, engine: Engine, max_callers: int = DEFAULT_MAX_CALLERS) -> None:
        self._engine = engine
        self._max_callers = max_callers
        self._lock = threading.Lock()
        self._waiting: list[_Caller] = []
        self._writing = False
        self._inserts: dict[tuple[Table, tuple[str, ...]], _Insert] = {}
        self._connection: PoolProxiedConnection | None = None  # used by the leader only
        self._connection_pid = 0
        database = engine.url.database
        self._lock_path = (
            f"{database}.write-lock"
            if engine.dialect.name == "sqlite" and database and database != ":memory:"
            else None
        )
        self._lock_file: IO[str] | None = None  # opened by the first write
        self._checkpoints = _Checkpoints(engine) if self._lock_path is not None else None

    def insert(self, rows: Sequence[Row]) -> None:
        """Insert `rows` atomically; return once they are committed, or raise their error."""
        caller = _Caller([self._prepare(table, values) for table, values in rows])
        with self._lock:
            self._waiting.append(caller)
            lead = not self._writing
            self._writing = True
        if not lead:
            caller.done.wait()
            if not caller.lead:
                if caller.error is not None:
                    raise caller.error
                return
        self._lead()
        if caller.error is not None:
            raise caller.error

    def _lead(self) -> None:
        # The leader's own rows are always in its batch: it is the oldest waiting caller.
        with self._lock:
            batch = self._waiting[: self._max_callers]
            del self._waiting[: self._max_callers]
        try:
            self._write_batch(batch)
        finally:
            # Only a caller whose rows were committed may report success, even if the leader
            # was interrupted (a worker timeout, an exit) half-way through the batch.
            for caller in batch:
                if not caller.committed and caller.error is None:
                    caller.error = NotWritten("the rows were not written")
            with self._lock:
                if self._waiting:
                    successor = self._waiting[0]
                    successor.lead = True
                    successor.done.set()
                else:
                    self._writing = False
            for caller in batch[1:]:
                caller.done.set()

    def _write_batch(self, batch: list[_Caller]) -> None:
        BATCH_SIZE.observe(len(batch))
        try:
            self._write(batch)
            return
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
                return
        # Someone's rows broke the shared transaction (rolled back whole): find whose, by
        # writing each caller's rows on their own.
        for caller in batch:
            try:
                self._write([caller])
            except Exception as exc:
                caller.error = exc

    def _write(self, batch: list[_Caller]) -> None:
        # Parents first, then one executemany per statement for all callers' rows.
        statements: dict[_Insert, list[Any]] = {}
        for caller in batch:
            for statement, params in caller.rows:
                statements.setdefault(statement, []).append(params)
        ordered = sorted(statements.items(), key=lambda item: item[0].rank)
        with self._exclusive():
            try:
                self._transaction(ordered, may_retry=True)
            except _Disconnected:
                # Nothing was committed: the connection had died while it sat idle (a database
                # restart). Once more on a new one.
                self._transaction(ordered, may_retry=False)
            for caller in batch:
                caller.committed = True
            if self._checkpoints is not None and self._connection is not None:
                self._checkpoints.after_commit(self._connection)

    def _transaction(self, ordered: list[tuple[_Insert, list[Any]]], *, may_retry: bool) -> None:
        connection = self._connection
        if connection is None or self._connection_pid != os.getpid():
            connection = self._connection = self._engine.raw_connection()
            self._connection_pid = os.getpid()
            if self._checkpoints is not None:
                _pragma(connection, "wal_autocheckpoint=0")
        cursor = None
        # Until the commit is sent, a failure leaves nothing written: safe to try again.
        before_commit = True
        try:
            cursor = connection.cursor()
            for statement, params in ordered:
                self._execute(cursor, statement.sql, params)
            before_commit = False
            connection.commit()
        except Exception as exc:
            dropped = self._after_failure(connection, cursor, exc)
            if may_retry and dropped and before_commit:
                raise _Disconnected from exc
            dbapi_error = self._engine.dialect.loaded_dbapi.Error
            if not isinstance(exc, dbapi_error):
                raise
            # As SQLAlchemy's error (IntegrityError, OperationalError, ...), which is what
            # callers catch; never with the parameters, which hold patient data.
            raise DBAPIError.instance(
                None, None, exc, dbapi_error, hide_parameters=True, dialect=self._engine.dialect
            ) from exc
        except BaseException:
            self._after_failure(connection, cursor, None)
            raise
        finally:
            if cursor is not None:
                with contextlib.suppress(Exception):
                    cursor.close()

    @staticmethod
    def _execute(cursor: Any, sql: str, params: list[Any]) -> None:
        if len(params) == 1:
            cursor.execute(sql, params[0])
        else:
            cursor.executemany(sql, params)

    def _after_failure(
        self, connection: PoolProxiedConnection, cursor: Any, exc: Exception | None
    ) -> bool:
        """Roll back, or drop the connection if it is dead; True if it was dropped."""
        dialect = self._engine.dialect
        if isinstance(exc, dialect.loaded_dbapi.Error) and dialect.is_disconnect(
            exc, connection.dbapi_connection, cursor
        ):
            self._forget_connection(connection, exc)
            return True
        try:
            connection.rollback()
        except Exception as rollback_error:
            self._forget_connection(connection, rollback_error)
            return True
        return False

    def _forget_connection(self, connection: PoolProxiedConnection, exc: BaseException) -> None:
        with contextlib.suppress(Exception):
            connection.invalidate(exc)
        self._connection = None

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        # SQLite: one writer at a time across processes (see the module docstring).
        if self._lock_path is None:
            yield
            return
        if self._lock_file is None:
            self._lock_file = open(self._lock_path, "a")  # noqa: SIM115 (held for life)
        fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def _prepare(self, table: Table, values: dict[str, Any]) -> _Prepared:
        columns = tuple(values)
        statement = self._inserts.get((table, columns))
        if statement is None:
            rank = table.metadata.sorted_tables.index(table)
            statement = _Insert(table, columns, self._engine.dialect, rank)
            self._inserts[(table, columns)] = statement
        return statement, statement.params(values)


class _Checkpoints:
    """SQLite WAL checkpoints for one committer, outside the cross-process write lock but for a
    short finish (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._commits = 0
        self._due = threading.Event()  # set for the background thread: checkpoint now
        self._finish = False  # set by it when done: the next leader finishes under the lock
        self._thread_pid = 0

    def after_commit(self, connection: PoolProxiedConnection) -> None:
        """Called by the leader after each commit, with the write lock still held."""
        if self._finish:
            self._finish = False
            try:
                _pragma(connection, "wal_checkpoint(PASSIVE)")
            except Exception as exc:  # the callers' rows are committed: never fail them now
                log.warning("checkpoint.failed", error=type(exc).__name__)
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY == 0:
            if self._thread_pid != os.getpid():
                self._thread_pid = os.getpid()
                threading.Thread(target=self._run, name="wal-checkpoint", daemon=True).start()
            self._due.set()

    def _run(self) -> None:
        connection: PoolProxiedConnection | None = None
        while True:
            self._due.wait()
            self._due.clear()
            try:
                if connection is None:
                    connection = self._engine.raw_connection()
                _pragma(connection, "wal_checkpoint(PASSIVE)")
                self._finish = True
            except Exception as exc:
                log.warning("checkpoint.failed", error=type(exc).__name__)
                if connection is not None:
                    with contextlib.suppress(Exception):
                        connection.invalidate(exc)
                connection = None


def _pragma(connection: PoolProxiedConnection, pragma: str) -> None:
    cursor = connection.cursor()
    try:
        cursor.execute(f"PRAGMA {pragma}")
        cursor.fetchall()
    finally:
        cursor.close()

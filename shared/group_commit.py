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

Every caller still gets its own answer. If the shared transaction fails (a duplicate
Idempotency-Key, a constraint, a lost connection) it is rolled back whole and each caller's rows
are written again in a transaction of their own, so one caller's error is raised to that caller
only, and nothing is half-stored. `insert` returns only after the caller's rows are committed.
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
from collections.abc import Iterator, Sequence
from typing import IO, Any, Final

from prometheus_client import Histogram
from sqlalchemy import Engine, Insert, Table, insert

Row = tuple[Table, dict[str, Any]]

BATCH_SIZE = Histogram(
    "myotriage_group_commit_callers",
    "Callers whose rows one commit wrote",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
DEFAULT_MAX_CALLERS: Final = 64


class NotWritten(RuntimeError):
    """The thread writing this caller's rows stopped before it could say how it went."""


class _Caller:
    __slots__ = ("committed", "done", "error", "lead", "rows")

    def __init__(self, rows: Sequence[Row]) -> None:
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
        self._statements: dict[Table, Insert] = {}
        self._table_order: dict[Table, int] = {}
        database = engine.url.database
        self._lock_path = (
            f"{database}.write-lock"
            if engine.dialect.name == "sqlite" and database and database != ":memory:"
            else None
        )
        self._lock_file: IO[str] | None = None  # opened by the first write

    def insert(self, rows: Sequence[Row]) -> None:
        """Insert `rows` atomically; return once they are committed, or raise their error."""
        caller = _Caller(rows)
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
        by_table: dict[Table, list[dict[str, Any]]] = {}
        for caller in batch:
            for table, values in caller.rows:
                by_table.setdefault(table, []).append(values)
        with self._exclusive(), self._engine.begin() as connection:
            for table in sorted(by_table, key=self._rank):
                values_list = by_table[table]
                connection.execute(
                    self._statement(table), values_list if len(values_list) > 1 else values_list[0]
                )
        for caller in batch:
            caller.committed = True

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

    def _statement(self, table: Table) -> Insert:
        # Built once per table: a constant statement is compiled once and then cached.
        statement = self._statements.get(table)
        if statement is None:
            statement = self._statements[table] = insert(table)
        return statement

    def _rank(self, table: Table) -> int:
        rank = self._table_order.get(table)
        if rank is None:
            order = {t: i for i, t in enumerate(table.metadata.sorted_tables)}
            self._table_order.update(order)
            rank = order[table]
        return rank

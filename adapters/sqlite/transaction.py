"""One group's write transaction: the queued writes of a group, written in queue order.

:class:`Write` is one write call as the writer queues it. :func:`run` writes a group of them
inside ``BEGIN IMMEDIATE`` ... ``COMMIT``, as one call in the writer thread (one hop off the
event loop per group, not one per statement), and returns each one's outcome (or the exception it
fails with, for a fenced apply that lost its lease or a create whose idempotency key clashes).
Runs of updates, and of creates without an idempotency key, are written with one
``executemany`` per statement; every targeted row must exist, so a bad ``apply`` raises
:class:`~adapters.sqlite.errors.UnknownTargets` and the writer retries the group's calls alone.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import Counter
from collections.abc import Callable

from attrs import define, field

from adapters.sqlite import claims, rows, statements
from adapters.sqlite.errors import UnknownTargets, WholeGroup
from adapters.sqlite.rows import OutboxRow, Row
from engine.errors import IdempotencyConflict
from engine.models import Execution

#: A write other than create and apply: run inside the group's transaction, returns the outcome.
Operation = Callable[[sqlite3.Connection], object]


@define(eq=False)
class NewExecution:
    execution: Execution
    fingerprint: str | None
    row: Row
    job_rows: list[Row]


@define(eq=False)
class Write:
    """One write call, queued for the writer: a ``create`` (``new``), an ``apply`` (rows, and
    the ``owner`` it is fenced by), or another ``operation``."""

    new: NewExecution | None = None
    job_rows: list[Row] = field(factory=list)
    execution_rows: list[Row] = field(factory=list)
    #: The apply's outbox changes, in order: ``(statement, row)``.
    outbox_rows: list[OutboxRow] = field(factory=list)
    owner: str | None = None
    #: The executions an apply names, each once (only with ``owner``).
    execution_ids: tuple[str, ...] = ()
    operation: Operation | None = None
    #: Set by the writer thread once the write is committed or has failed.
    finished: bool = False
    #: The caller gave up (was cancelled) before the thread took it: it is skipped.
    abandoned: bool = False
    outcome: object = None
    error: Exception | None = None

    @property
    def is_apply(self) -> bool:
        return self.new is None and self.operation is None


def run(conn: sqlite3.Connection, group: list[Write]) -> list[object]:
    """Write ``group`` in one transaction; each write's outcome, in order.

    Raises :class:`WholeGroup` when ``BEGIN`` or ``COMMIT`` fails, and any other exception a
    write raised, after rolling back.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise WholeGroup(exc) from exc
    try:
        outcomes: list[object] = []
        # A run is written before the next write of another kind, so every write sees the ones
        # queued before it. A run of applies is fenced with one query before any of its rows is
        # queued: nothing in it can change a holder.
        pending = _Pending()
        position = 0
        while position < len(group):
            write = group[position]
            new = write.new
            if write.is_apply:
                end = position + 1
                while end < len(group) and group[end].is_apply:
                    end += 1
                run = group[position:end]
                if pending.inserts:
                    pending.flush(conn)
                verdicts = claims.fence(conn, [(a.owner, a.execution_ids) for a in run])
                for apply, lost in zip(run, verdicts, strict=True):
                    if lost is None:
                        pending.job_updates += apply.job_rows
                        pending.execution_updates += apply.execution_rows
                        pending.outbox += apply.outbox_rows
                    outcomes.append(lost)
                position = end
                continue
            if new is not None and new.execution.idempotency_key is None:
                if pending.job_updates or pending.execution_updates or pending.outbox:
                    pending.flush(conn)
                pending.inserts.append(new.row)
                pending.job_inserts += new.job_rows
                outcomes.append(new.execution)
            else:
                pending.flush(conn)
                if new is not None:
                    outcomes.append(_insert(conn, new))
                elif write.operation is not None:
                    outcomes.append(write.operation(conn))
            position += 1
        pending.flush(conn)
    except BaseException:
        rollback(conn)
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        rollback(conn)
        raise WholeGroup(exc) from exc
    return outcomes


def rollback(conn: sqlite3.Connection) -> None:
    # Errors mean SQLite already rolled back (or nothing had begun).
    with contextlib.suppress(sqlite3.Error):
        conn.execute("ROLLBACK")


@define
class _Pending:
    """Rows of consecutive writes of one kind, not yet sent to SQLite."""

    inserts: list[Row] = field(factory=list)
    job_inserts: list[Row] = field(factory=list)
    job_updates: list[Row] = field(factory=list)
    execution_updates: list[Row] = field(factory=list)
    #: Outbox changes, in the order of the changes (they depend on each other: an event is
    #: added before its attempts are logged).
    outbox: list[OutboxRow] = field(factory=list)

    def flush(self, conn: sqlite3.Connection) -> None:
        if self.inserts:
            conn.executemany(statements.INSERT_EXECUTION, self.inserts)
            conn.executemany(statements.INSERT_JOB, self.job_inserts)
        _update(conn, self.job_updates, self.execution_updates)
        _write_outbox(conn, self.outbox)
        self.inserts, self.job_inserts, self.job_updates, self.execution_updates = [], [], [], []
        self.outbox = []


def _insert(conn: sqlite3.Connection, new: NewExecution) -> Execution | IdempotencyConflict:
    execution = new.execution
    key = execution.idempotency_key
    if key is not None:
        tenant = execution.tenant
        found = list(conn.execute(statements.FIND_KEY, (tenant is None, tenant or "", key)))
        if found:
            existing_id, existing_fingerprint = found[0]
            if existing_fingerprint != new.fingerprint:
                return IdempotencyConflict(
                    f"idempotency key {key!r} was already used with a different request"
                )
            stored = conn.execute(statements.SELECT_ONE, (existing_id,))
            return rows.assemble(stored)[0]
    conn.execute(statements.INSERT_EXECUTION, new.row)
    conn.executemany(statements.INSERT_JOB, new.job_rows)
    return execution


def _update(conn: sqlite3.Connection, job_rows: list[Row], execution_rows: list[Row]) -> None:
    """Write updates; every targeted row must exist, so that a bad ``apply`` writes nothing."""
    if job_rows:
        cursor = conn.executemany(statements.UPDATE_JOB, job_rows)
        if cursor.rowcount != len(job_rows):
            raise _unknown_targets(conn, job_rows, execution_rows)
    if execution_rows:
        cursor = conn.executemany(statements.UPDATE_EXECUTION, execution_rows)
        if cursor.rowcount != len(execution_rows):
            raise _unknown_targets(conn, job_rows, execution_rows)


def _write_outbox(conn: sqlite3.Connection, changes: list[OutboxRow]) -> None:
    """Write outbox changes in order, with one ``executemany`` per run of one statement; every
    targeted row must exist (and every added event id be new), so a bad ``apply`` writes
    nothing."""
    start = 0
    while start < len(changes):
        sql = changes[start][0]
        end = start + 1
        while end < len(changes) and changes[end][0] is sql:
            end += 1
        batch = [row for _, row in changes[start:end]]
        if sql is statements.INSERT_EVENT:
            _check_new_event_ids(conn, [row[-2] for row in batch])
        cursor = conn.executemany(sql, batch)
        if cursor.rowcount != len(batch):
            raise _unknown_events(conn, sql, batch)
        start = end


def _check_new_event_ids(conn: sqlite3.Connection, event_ids: list[str]) -> None:
    taken = [i for i, n in Counter(event_ids).items() if n > 1]
    for chunk in statements.chunks(list(dict.fromkeys(event_ids))):
        sql = statements.SELECT_EVENT_IDS.format(marks=statements.marks(len(chunk)))
        taken += [str(row[0]) for row in conn.execute(sql, chunk)]
    if taken:
        shown = ", ".join(repr(i) for i in dict.fromkeys(taken))
        raise UnknownTargets(
            f"webhook event {shown} already exists (an event is added once; OutboxReset sends "
            "it again); nothing was applied"
        )


def _unknown_events(conn: sqlite3.Connection, sql: str, batch: list[Row]) -> UnknownTargets:
    missing: list[str] = []
    for row in batch:
        event_id, execution_id = row[-2], row[-1]
        parameters: tuple[str, ...]
        if sql is statements.INSERT_EVENT:
            query, parameters = statements.EXECUTION_EXISTS, (execution_id,)
            what = f"execution {execution_id!r}"
        else:
            query, parameters = statements.EVENT_EXISTS, (event_id, execution_id)
            what = f"webhook event {event_id!r} of execution {execution_id!r}"
        if not list(conn.execute(query, parameters)):
            missing.append(what)
    return _no_such(missing)


def _unknown_targets(
    conn: sqlite3.Connection, job_rows: list[Row], execution_rows: list[Row]
) -> UnknownTargets:
    missing: list[str] = []
    for row in job_rows:
        execution_id, job_id = row[-2], row[-1]
        found = conn.execute(statements.JOB_EXISTS, (execution_id, job_id))
        if not list(found):
            missing.append(f"job {job_id!r} of execution {execution_id!r}")
    for row in execution_rows:
        found = conn.execute(statements.EXECUTION_EXISTS, (row[-1],))
        if not list(found):
            missing.append(f"execution {row[-1]!r}")
    return _no_such(missing)


def _no_such(missing: list[str]) -> UnknownTargets:
    unique = list(dict.fromkeys(missing))
    shown = ", ".join(unique[:5]) + (f" and {len(unique) - 5} more" if len(unique) > 5 else "")
    return UnknownTargets(f"no such {shown}; nothing was applied")

"""A durable store in one SQLite file, shared safely by several processes.

One writer connection, one reader connection (WAL lets reads go on while a write commits), and
group commit: concurrent writes share one transaction. Every ``sqlite3`` error is translated
into a :class:`~engine.errors.StorageError` naming the file and the cause.

Group commit without a background task: each ``create`` or ``apply`` call queues its write. If
no call is writing, the caller takes the writer role; otherwise it waits. The writer takes every
queued write (up to :data:`MAX_GROUP`, its own first), commits them in one ``BEGIN IMMEDIATE``
transaction, wakes their callers, and hands the role to the caller of the oldest write still
queued, which wrote nothing yet. So one writer at a time, no write acknowledged before its
``COMMIT`` returned, and no task outlives the calls: ``open()`` and ``close()`` may be called
from any task, in any nesting of task groups. ``claim``, ``claim_outbox``, ``renew`` and
``release`` are writes too and go through the same queue.

Fencing: an ``apply`` with an ``owner`` is checked inside the writer's transaction, before any
of its statements run, against the ``owner`` column as the writes queued before it in the
group left it. A call whose executions are not all held by its owner is skipped and fails with
:class:`~engine.errors.LeaseLost`; the rest of its group commits. Consecutive applies in a
group (nothing between them can change a holder) are checked with one query.

The webhook outbox (schema version 3) is written by ``apply`` like the rest, in change order:
``OutboxAdd`` rows, ``DeliveryRecorded`` attempts, ``OutboxDone`` and ``OutboxReset`` are fenced
with the other changes of their call and committed with them. ``claim_outbox`` reads and takes
in one write transaction, like ``claim``, and takes the events of terminal executions only;
``renew`` extends the leases of terminal executions with pending events in the same transaction
as the others, and ``holders()`` reports their holders.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, cast

import aiosqlite
import anyio
from attrs import define, field

from adapters.sqlite.schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION
from engine import wire
from engine.errors import ConfigError, IdempotencyConflict, LeaseLost, StorageError
from engine.models import (
    Change,
    DeliveryAttempt,
    DeliveryRecorded,
    ErrorInfo,
    Execution,
    ExecutionUpdate,
    JobInfo,
    JobUpdate,
    Notification,
    OutboxAdd,
    OutboxDone,
    OutboxReset,
    Video,
    Webhook,
)

Synchronous = Literal["FULL", "NORMAL"]

#: The most write calls (create, apply, claim, claim_outbox, renew, release) one transaction takes.
MAX_GROUP = 1024

#: From this many rows on, ``unfinished()`` and ``claim()`` decode them in a worker thread.
_ASSEMBLE_IN_THREAD = 2000

#: The most values bound to one ``IN (...)`` list (SQLite's limit is 999 on old builds).
_CHUNK = 500

_Row = tuple[Any, ...]

_EXECUTION_COLUMNS = (
    "e.id, e.status, e.created_at, e.base_execution_id, e.webhook_url, e.webhook_secret, "
    "e.result, e.error, e.started_at, e.completed_at, e.tenant, e.idempotency_key, e.generation"
)
_JOB_COLUMNS = (
    "j.job_id, j.type, j.params, j.depends_on, j.status, j.attempts, j.started_at, "
    "j.finished_at, j.result, j.error"
)
_N_EXECUTION_COLUMNS = 13

_SELECT_ONE = f"""
    SELECT {_EXECUTION_COLUMNS}, {_JOB_COLUMNS}
    FROM executions AS e LEFT JOIN jobs AS j ON j.execution_id = e.id
    WHERE e.id = ?
    ORDER BY j.position
"""
_SELECT_UNFINISHED = f"""
    SELECT {_EXECUTION_COLUMNS}, {_JOB_COLUMNS}
    FROM executions AS e LEFT JOIN jobs AS j ON j.execution_id = e.id
    WHERE e.status IN ('pending', 'processing')
    ORDER BY e.seq, j.position
"""
_SELECT_BY_SEQ = f"""
    SELECT {_EXECUTION_COLUMNS}, {_JOB_COLUMNS}
    FROM executions AS e LEFT JOIN jobs AS j ON j.execution_id = e.id
    WHERE e.seq IN ({{marks}})
    ORDER BY e.seq, j.position
"""
# Holds on unfinished executions (through executions_held), and on finished ones with pending
# webhook events (through outbox_pending): never the finished history.
_SELECT_HOLDERS = """
    SELECT owner, max(lease_until) FROM (
        SELECT owner, lease_until FROM executions
        WHERE status IN ('pending', 'processing') AND owner IS NOT NULL
        UNION ALL
        SELECT e.owner, e.lease_until
        FROM outbox AS o JOIN executions AS e ON e.id = o.execution_id
        WHERE o.status = 'pending' AND e.owner IS NOT NULL
            AND e.status NOT IN ('pending', 'processing')
    )
    GROUP BY owner
"""
_SELECT_OWNERS = "SELECT id, owner FROM executions WHERE id IN ({marks})"
# Claimable: unheld, expired, or held by one of the takeable owners (dead ones; the claimer too
# when it names the executions).
_CLAIMABLE = "(owner IS NULL OR lease_until < ? OR owner IN ({marks}))"
_SELECT_CLAIMABLE = f"""
    SELECT seq FROM executions
    WHERE status IN ('pending', 'processing') AND {_CLAIMABLE}
    ORDER BY seq
    LIMIT ?
"""
_SELECT_CLAIMABLE_IDS = f"""
    SELECT seq FROM executions
    WHERE id IN ({{ids}}) AND (status NOT IN ('pending', 'processing') OR {_CLAIMABLE})
"""
_TAKE = "UPDATE executions SET owner = ?, lease_until = ? WHERE seq = ?"
_RENEW = """
    UPDATE executions SET lease_until = ?
    WHERE owner = ? AND status IN ('pending', 'processing')
"""
_SELECT_HELD = "SELECT id FROM executions WHERE owner = ? AND status IN ('pending', 'processing')"
_RELEASE_ALL = """
    UPDATE executions SET owner = NULL, lease_until = NULL
    WHERE owner = ? AND status IN ('pending', 'processing')
"""
_RELEASE_ONE = "UPDATE executions SET owner = NULL, lease_until = NULL WHERE id = ? AND owner = ?"
_SELECT_COUNTS = "SELECT status, n FROM execution_counts WHERE n != 0"

# --- the webhook outbox (schema version 3) ---
# Every outbox statement ends with the event id and the execution id, in that order.
_INSERT_EVENT = """
    INSERT INTO outbox (execution_status, payload, created_at, status, event_id, execution_id)
    SELECT ?, ?, ?, 'pending', ?, id FROM executions WHERE id = ?
"""
_INSERT_ATTEMPT = """
    INSERT INTO delivery_attempts (
        url, attempt, at, status_code, error, latency, outcome, retry_at, event_id, execution_id
    )
    SELECT ?, ?, ?, ?, ?, ?, ?, ?, event_id, execution_id FROM outbox
    WHERE event_id = ? AND execution_id = ?
"""
_EVENT_DONE = "UPDATE outbox SET status = ?, done_at = ? WHERE event_id = ? AND execution_id = ?"
_EVENT_RESET = """
    UPDATE outbox SET status = 'pending', done_at = NULL WHERE event_id = ? AND execution_id = ?
"""
_SELECT_EVENT_IDS = "SELECT event_id FROM outbox WHERE event_id IN ({marks})"
_SELECT_CLAIMABLE_EVENTS = """
    SELECT o.event_id, o.execution_id, o.execution_status, o.payload, e.webhook_url,
        e.webhook_secret, e.tenant,
        (SELECT count(*) FROM delivery_attempts AS d
         WHERE d.execution_id = o.execution_id AND d.event_id = o.event_id)
    FROM outbox AS o JOIN executions AS e ON e.id = o.execution_id
    WHERE o.status = 'pending' AND e.status NOT IN ('pending', 'processing')
        AND (e.owner IS NULL OR e.lease_until < ? OR e.owner IN ({marks}))
    ORDER BY o.seq
"""
_TAKE_BY_ID = "UPDATE executions SET owner = ?, lease_until = ? WHERE id = ?"
# Finished executions only: _RENEW has extended the unfinished ones.
_RENEW_OUTBOX = """
    UPDATE executions SET lease_until = ?
    WHERE id IN (SELECT execution_id FROM outbox WHERE status = 'pending')
        AND owner = ? AND status NOT IN ('pending', 'processing')
"""
_SELECT_DELIVERIES = """
    SELECT event_id, execution_id, url, attempt, at, status_code, error, latency, outcome,
        retry_at
    FROM delivery_attempts WHERE execution_id = ? ORDER BY seq
"""
_SELECT_OUTBOX_COUNTS = "SELECT status, n FROM outbox_counts WHERE n != 0"
# Its terms match the expressions of the index executions_by_idempotency_key, so it uses it.
_FIND_KEY = """
    SELECT id, fingerprint FROM executions
    WHERE (tenant IS NULL) = ? AND ifnull(tenant, '') = ? AND idempotency_key = ?
"""
_INSERT_EXECUTION = """
    INSERT INTO executions (
        id, status, tenant, idempotency_key, fingerprint, base_execution_id, webhook_url,
        webhook_secret, result, error, created_at, started_at, completed_at, generation, owner,
        lease_until
    ) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_INSERT_JOB = """
    INSERT INTO jobs (
        execution_id, job_id, position, type, params, depends_on, status, attempts,
        started_at, finished_at, result, error
    ) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_UPDATE_JOB = """
    UPDATE jobs SET status = ?, attempts = ?, started_at = ?, finished_at = ?, result = ?,
        error = ?
    WHERE execution_id = ? AND job_id = ?
"""
_UPDATE_EXECUTION = """
    UPDATE executions SET status = ?, started_at = ?, completed_at = ?, result = ?, error = ?,
        generation = ?
    WHERE id = ?
"""

_HINTS = {
    "SQLITE_CANTOPEN": "cannot open the file (missing directory, a directory, or no permission)",
    "SQLITE_NOTADB": "not an SQLite database (corrupt, encrypted or another kind of file)",
    "SQLITE_CORRUPT": "the database file is corrupt",
    "SQLITE_READONLY": "the file is read-only",
    "SQLITE_PERM": "permission denied",
    "SQLITE_AUTH": "permission denied",
    "SQLITE_FULL": "the disk is full",
    "SQLITE_IOERR": "disk I/O error",
    "SQLITE_CONSTRAINT": "a constraint was violated",
}


@define
class WriterStats:
    """What the writer task has done since the store was created; for inspection and tests.

    ``requests / transactions`` is how well group commit batches: many concurrent ``apply``
    calls share one transaction (and one fsync).
    """

    #: Write transactions committed (every write call; not the schema check at ``open``).
    transactions: int = 0
    #: Write transactions rolled back.
    rollbacks: int = 0
    #: ``create``, ``apply``, ``claim``, ``claim_outbox``, ``renew`` and ``release`` calls the
    #: writer has finished, with success or an error.
    requests: int = 0
    #: The most calls one committed transaction has held.
    largest_group: int = 0


@define(eq=False)
class _NewExecution:
    execution: Execution
    fingerprint: str | None
    row: _Row
    job_rows: list[_Row]


#: One outbox change of an apply: its statement (one of the ``_EVENT``/``_ATTEMPT`` ones) and row.
_OutboxRow = tuple[str, _Row]

#: A write other than create and apply: run inside the group's transaction, returns the outcome.
_Operation = Callable[[aiosqlite.Connection], Awaitable[object]]


@define(eq=False)
class _Write:
    """One write call, queued for the writer: a ``create`` (``new``), an ``apply`` (rows, and
    the ``owner`` it is fenced by), or another ``operation``."""

    new: _NewExecution | None = None
    job_rows: list[_Row] = field(factory=list)
    execution_rows: list[_Row] = field(factory=list)
    #: The apply's outbox changes, in order: ``(statement, row)``.
    outbox_rows: list[_OutboxRow] = field(factory=list)
    owner: str | None = None
    #: The executions an apply names, each once (only with ``owner``).
    execution_ids: tuple[str, ...] = ()
    operation: _Operation | None = None
    #: Set when the write is finished, or when its caller is to take the writer role.
    wake: anyio.Event = field(factory=anyio.Event)
    finished: bool = False
    promoted: bool = False
    #: The caller gave up (was cancelled) before a writer took it: it is skipped.
    abandoned: bool = False
    outcome: object = None
    error: Exception | None = None

    @property
    def is_apply(self) -> bool:
        return self.new is None and self.operation is None


class _WholeGroup(Exception):
    """``BEGIN`` or ``COMMIT`` failed: the cause is the store's, not one call's."""

    def __init__(self, cause: sqlite3.Error) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _UnknownTargets(Exception):
    """An ``apply`` names an execution, job or webhook event that is not stored, or adds an
    event whose id is taken."""


def _to_path(value: str | os.PathLike[str]) -> Path:
    text = os.fspath(value)
    if text in ("", ":memory:") or text.startswith("file:"):
        raise ConfigError(
            f"SqliteStorage needs a file path, not {text!r}; use MemoryStorage for a store "
            "in memory"
        )
    return Path(text)


def _check_synchronous(_instance: object, _attribute: object, value: str) -> None:
    if value not in ("FULL", "NORMAL"):
        raise ConfigError(f"synchronous must be 'FULL' or 'NORMAL', not {value!r}")


def _check_busy_timeout(_instance: object, _attribute: object, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"busy_timeout must be a finite number of seconds >= 0, not {value!r}")


@define
class SqliteStorage:
    """The :class:`~engine.ports.Storage` port on one SQLite file, through ``aiosqlite``.

    ``open()`` connects, checks the file is a store of this library (or empty, and then makes it
    one) and migrates an older schema; ``close()`` lets the writes in flight commit, then closes
    the connections. ``async with SqliteStorage(path)`` does both.

    The file is in WAL journal mode. ``synchronous="FULL"`` (the default) makes every
    acknowledged write durable, also across a power loss. ``synchronous="NORMAL"`` saves an fsync
    per transaction, but on power loss (not on a process crash) the last transactions may be
    lost, which breaks "nothing acknowledged is lost".

    ``busy_timeout`` (seconds) is how long to wait for another process's write lock before
    failing with :class:`~engine.errors.StorageError`.

    Writes go through one writer at a time: concurrent ``create`` and ``apply`` calls are batched
    into one ``BEGIN IMMEDIATE`` transaction (group commit, see the module docstring), and each
    call returns only once the transaction holding it has committed. When a call in a batch
    fails, the batch is rolled back and each of its calls is retried alone, so one bad call fails
    only itself. A transaction, once begun, is finished even if its writer's caller is
    cancelled. ``stats`` counts transactions and calls. Several processes (or several instances)
    may use one file at once.

    Ownership (see :class:`~engine.ports.Storage`): ``claim``, ``claim_outbox``, ``renew`` and
    ``release`` are writes, batched like the others; a fenced ``apply`` is checked in the
    transaction that writes it, and a call fenced out fails alone with
    :class:`~engine.errors.LeaseLost`. Two instances (processes) claiming at once never take the
    same execution (or webhook event): each claim reads and takes in one ``BEGIN IMMEDIATE``
    transaction. Choices the port leaves open, the same as
    :class:`~adapters.memory.MemoryStorage`'s: ``create`` with an ``owner`` and no
    ``lease_until`` holds with no expiry (``holders()`` reports ``math.inf``); a finished
    execution keeps its last holder; ``release(owner)`` without ``ids`` gives up the unfinished
    executions only; ``claim`` with ``limit <= 0`` takes nothing.

    An execution's webhook secret is stored (it is needed to sign deliveries) and never logged.
    """

    #: What is written outlives the process (see :attr:`engine.ports.Store.durable`).
    durable = True

    path: Path = field(converter=_to_path)
    synchronous: Synchronous = field(default="FULL", kw_only=True, validator=_check_synchronous)
    busy_timeout: float = field(default=5.0, kw_only=True, validator=_check_busy_timeout)
    stats: WriterStats = field(factory=WriterStats, init=False)
    _writer: aiosqlite.Connection | None = field(default=None, init=False, repr=False)
    _reader: aiosqlite.Connection | None = field(default=None, init=False, repr=False)
    _queue: deque[_Write] = field(factory=deque, init=False, repr=False)
    #: Some call holds the writer role (or has been handed it).
    _writing: bool = field(default=False, init=False, repr=False)
    _closing: bool = field(default=False, init=False, repr=False)
    _idle: anyio.Event | None = field(default=None, init=False, repr=False)

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> SqliteStorage:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect, and check, create or migrate the schema. Opening an open store does nothing."""
        if self._writer is not None:
            return
        self._check_path()
        try:
            self._writer = await self._connect()
            await self._prepare(self._writer)
            self._reader = await self._connect()
            await self._reader.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            await self._close_connections()
            raise self._error("cannot open", exc) from exc
        except BaseException:
            await self._close_connections()
            raise
        self._closing = False

    async def close(self) -> None:
        """Refuse new writes, let the queued ones commit, close the connections. Idempotent."""
        if self._writer is None or self._closing:
            return
        self._closing = True
        with anyio.CancelScope(shield=True):
            while self._writing:  # the queued writes' callers pass the writer role on
                self._idle = anyio.Event()
                await self._idle.wait()
            self._idle = None
            await self._close_connections()

    def _check_path(self) -> None:
        if self.path.is_dir():
            raise StorageError(f"cannot open SQLite store {self.path}: it is a directory")
        parent = self.path.parent
        if not parent.is_dir():
            raise StorageError(
                f"cannot open SQLite store {self.path}: directory {parent} does not exist"
            )
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise StorageError(f"cannot open SQLite store {self.path}: the file is read-only")

    async def _connect(self) -> aiosqlite.Connection:
        return await aiosqlite.connect(self.path, isolation_level=None, timeout=self.busy_timeout)

    async def _prepare(self, conn: aiosqlite.Connection) -> None:
        """Check the file is ours (or empty), set the pragmas, create or migrate the schema."""
        self._check_header(*await self._header(conn))  # before changing anything in the file
        rows = list(await conn.execute_fetchall("PRAGMA journal_mode = WAL"))
        mode = str(rows[0][0]).lower() if rows else "unknown"
        if mode != "wal":
            raise StorageError(
                f"cannot open SQLite store {self.path}: it cannot use WAL journal mode "
                f"(SQLite kept {mode!r}); is it on a network file system?"
            )
        await conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute("BEGIN IMMEDIATE")
        try:
            # Again, under the write lock: another process may have migrated it meanwhile.
            _, version, _ = header = await self._header(conn)
            self._check_header(*header)
            for migration in MIGRATIONS[version:]:
                for statement in migration:
                    await conn.execute(statement)
            await conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            # Written even when unchanged: it proves, now, that the file can be written.
            await conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            await conn.execute("COMMIT")
        except BaseException:
            await _rollback(conn)
            raise

    @staticmethod
    async def _header(conn: aiosqlite.Connection) -> tuple[int, int, int]:
        (application_id,), *_ = await conn.execute_fetchall("PRAGMA application_id")
        (version,), *_ = await conn.execute_fetchall("PRAGMA user_version")
        (objects,), *_ = await conn.execute_fetchall("SELECT count(*) FROM sqlite_master")
        return int(application_id), int(version), int(objects)

    def _check_header(self, application_id: int, version: int, objects: int) -> None:
        if application_id == APPLICATION_ID:
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"cannot open SQLite store {self.path}: it was written by a newer version "
                    f"of this library (schema version {version}; this version knows up to "
                    f"{SCHEMA_VERSION}); upgrade the library to use it"
                )
            return
        if application_id == 0 and version == 0 and objects == 0:
            return  # a new or empty file: it becomes a store
        raise StorageError(
            f"cannot open SQLite store {self.path}: it is an SQLite database of another "
            f"application (application_id {application_id}, user_version {version}, "
            f"{objects} schema objects), not a store of this library; it was left untouched"
        )

    async def _close_connections(self) -> None:
        writer, reader = self._writer, self._reader
        self._writer = self._reader = None
        with anyio.CancelScope(shield=True):
            for conn in (reader, writer):
                if conn is not None:
                    with contextlib.suppress(sqlite3.Error):  # closing: nothing to protect
                        await conn.close()

    async def pragmas(self) -> dict[str, int | str]:
        """The writer connection's settings and the file's header fields, for inspection."""
        writer = self._writer
        if writer is None:
            raise StorageError(f"SQLite store {self.path} is not open")
        names = (
            "journal_mode",
            "synchronous",
            "busy_timeout",
            "foreign_keys",
            "application_id",
            "user_version",
        )
        settings: dict[str, int | str] = {}
        try:
            for name in names:
                rows = list(await writer.execute_fetchall(f"PRAGMA {name}"))
                settings[name] = rows[0][0]
        except sqlite3.Error as exc:
            raise self._error("cannot read", exc) from exc
        return settings

    # --- reads --------------------------------------------------------------------------------

    async def get(self, execution_id: str) -> Execution | None:
        executions = _assemble(await self._read(_SELECT_ONE, (execution_id,)))
        return executions[0] if executions else None

    async def unfinished(self) -> list[Execution]:
        rows = await self._read(_SELECT_UNFINISHED, ())
        if len(rows) < _ASSEMBLE_IN_THREAD:
            return _assemble(rows)
        # A backlog of many executions takes seconds to decode: keep the event loop responsive.
        return await anyio.to_thread.run_sync(_assemble, rows)

    async def counts(self) -> dict[str, int]:
        return {str(status): int(n) for status, n in await self._read(_SELECT_COUNTS, ())}

    async def holders(self) -> dict[str, float]:
        rows = await self._read(_SELECT_HOLDERS, ())
        return {str(owner): math.inf if lease is None else float(lease) for owner, lease in rows}

    async def deliveries(self, execution_id: str) -> list[DeliveryAttempt]:
        rows = await self._read(_SELECT_DELIVERIES, (execution_id,))
        return [_attempt(tuple(row)) for row in rows]

    async def outbox_counts(self) -> dict[str, int]:
        return {str(status): int(n) for status, n in await self._read(_SELECT_OUTBOX_COUNTS, ())}

    async def _read(self, sql: str, parameters: _Row) -> list[sqlite3.Row]:
        reader = self._reader
        if reader is None:
            raise StorageError(f"SQLite store {self.path} is not open")
        try:
            return list(await reader.execute_fetchall(sql, parameters))
        except sqlite3.Error as exc:
            raise self._error("cannot read", exc) from exc

    # --- writes -------------------------------------------------------------------------------

    async def create(
        self,
        execution: Execution,
        fingerprint: str | None = None,
        *,
        owner: str | None = None,
        lease_until: float | None = None,
    ) -> Execution:
        """Store a new execution (see the port). With ``owner`` and no ``lease_until``, the
        execution is held with no expiry (``holders()`` reports ``math.inf``)."""
        if owner is None:
            lease_until = None
        elif lease_until is None:
            lease_until = math.inf
        row = _execution_row(execution, fingerprint, owner, lease_until)
        new = _NewExecution(execution, fingerprint, row, _job_rows(execution))
        write = await self._submit(_Write(new=new))
        if not isinstance(write.outcome, Execution):  # pragma: no cover - the writer sets one
            raise StorageError(f"SQLite store {self.path}: create returned nothing")
        return write.outcome

    async def apply(self, changes: Sequence[Change], *, owner: str | None = None) -> None:
        if not changes:
            return
        write = _Write(owner=owner)
        now = time.time()  # created_at and done_at of outbox rows: for people reading the file
        for change in changes:
            if isinstance(change, JobUpdate):
                write.job_rows.append(_job_update_row(change))
            elif isinstance(change, ExecutionUpdate):
                write.execution_rows.append(_execution_update_row(change))
            else:
                write.outbox_rows.append(_outbox_row(change, now))
        if owner is not None:
            write.execution_ids = tuple(dict.fromkeys(c.execution_id for c in changes))
        await self._submit(write)

    async def claim(
        self,
        owner: str,
        *,
        now: float,
        lease_until: float,
        limit: int | None = None,
        ids: Collection[str] | None = None,
        dead_owners: Collection[str] = (),
    ) -> list[Execution]:
        """Take executions for ``owner`` (see the port), in one write transaction, so two
        claimers (two processes) never take the same execution. ``limit <= 0`` takes nothing."""
        if limit is not None and limit <= 0:
            return []
        wanted = None if ids is None else list(dict.fromkeys(ids))
        if wanted is not None and not wanted:
            return []
        mine = [owner] if ids is not None else []
        takeable = list(dict.fromkeys([*mine, *dead_owners]))

        async def operation(conn: aiosqlite.Connection) -> list[_Row]:
            return await _claim(conn, owner, now, lease_until, limit, wanted, takeable)

        write = await self._submit(_Write(operation=operation))
        rows = cast(list[_Row], write.outcome)
        if len(rows) < _ASSEMBLE_IN_THREAD:
            return _assemble(rows)
        return await anyio.to_thread.run_sync(_assemble, rows)

    async def renew(self, owner: str, *, lease_until: float) -> set[str]:
        """Extend ``owner``'s leases on unfinished executions, and on finished ones with pending
        webhook events, in one transaction; return the unfinished ones."""

        async def operation(conn: aiosqlite.Connection) -> set[str]:
            await conn.execute(_RENEW, (lease_until, owner))
            await conn.execute(_RENEW_OUTBOX, (lease_until, owner))
            return {str(row[0]) for row in await conn.execute_fetchall(_SELECT_HELD, (owner,))}

        write = await self._submit(_Write(operation=operation))
        return cast(set[str], write.outcome)

    async def claim_outbox(
        self,
        owner: str,
        *,
        now: float,
        lease_until: float,
        dead_owners: Collection[str] = (),
    ) -> list[Notification]:
        """Take the pending webhook events of claimable finished executions (see the port) in
        one write transaction, so two claimers never take the same event."""
        takeable = list(dict.fromkeys(dead_owners))

        async def operation(conn: aiosqlite.Connection) -> list[_Row]:
            sql = _SELECT_CLAIMABLE_EVENTS.format(marks=_marks(len(takeable)))
            rows = [tuple(row) for row in await conn.execute_fetchall(sql, (now, *takeable))]
            taken = dict.fromkeys(row[1] for row in rows)
            await conn.executemany(_TAKE_BY_ID, [(owner, lease_until, i) for i in taken])
            return rows

        write = await self._submit(_Write(operation=operation))
        return [_notification(row) for row in cast(list[_Row], write.outcome)]

    async def release(self, owner: str, ids: Collection[str] | None = None) -> None:
        """Give up ``owner``'s holds so others can claim at once.

        Without ``ids``: on every unfinished execution ``owner`` holds (a hold on a finished
        execution blocks no claim, and finding those would read the whole history). With
        ``ids``: on those of them ``owner`` holds, finished or not.
        """

        async def operation(conn: aiosqlite.Connection) -> None:
            if ids is None:
                await conn.execute(_RELEASE_ALL, (owner,))
            else:
                await conn.executemany(_RELEASE_ONE, [(i, owner) for i in dict.fromkeys(ids)])

        if ids is not None and not ids:
            return
        await self._submit(_Write(operation=operation))

    async def _submit(self, write: _Write) -> _Write:
        conn = self._writer
        if conn is None or self._closing:
            raise StorageError(f"SQLite store {self.path} is not open")
        self._queue.append(write)
        if self._writing:
            try:
                await write.wake.wait()
            except anyio.get_cancelled_exc_class():
                # Not yet taken by a writer: it is dropped. Already taken: it commits anyway,
                # and the cancelled caller cannot know; every change is safe to apply again.
                write.abandoned = True
                if write.promoted and not write.finished:
                    self._hand_over()  # the role was handed to this call: pass it on
                raise
        else:
            self._writing = True
            write.promoted = True
        if not write.finished:
            await self._write(conn)
        if write.error is not None:
            raise write.error
        return write

    async def _write(self, conn: aiosqlite.Connection) -> None:
        """Hold the writer role: commit the queued writes (this call's first), then hand over."""
        group: list[_Write] = []
        try:
            # Never leave a transaction half done, even when this call is cancelled.
            with anyio.CancelScope(shield=True):
                while self._queue and len(group) < MAX_GROUP:
                    write = self._queue.popleft()
                    if not write.abandoned:
                        group.append(write)
                await self._commit(conn, group)
        except BaseException as exc:  # a bug, or the process is going down: wake every caller
            for write in group:
                if not write.finished:
                    error = StorageError(f"write to SQLite store {self.path} interrupted: {exc!r}")
                    self._finish(write, error=error)
            raise
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        """Give the writer role to the caller of the oldest queued write, or release it."""
        while self._queue and self._queue[0].abandoned:
            self._queue.popleft()
        if self._queue:
            successor = self._queue[0]
            successor.promoted = True
            successor.wake.set()
            return
        self._writing = False
        if self._idle is not None:
            self._idle.set()

    async def _commit(self, conn: aiosqlite.Connection, group: list[_Write]) -> None:
        try:
            outcomes = await self._transaction(conn, group)
        except _WholeGroup as exc:
            self.stats.rollbacks += 1
            for write in group:
                self._finish(write, error=self._error("cannot write to", exc.cause))
            return
        except Exception as exc:
            self.stats.rollbacks += 1
            if len(group) == 1:
                self._finish(group[0], error=self._failure(exc))
                return
            for write in group:  # find the culprit: each alone, so the others still commit
                await self._commit(conn, [write])
            return
        self.stats.transactions += 1
        self.stats.largest_group = max(self.stats.largest_group, len(group))
        for write, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, Exception):
                self._finish(write, error=outcome)
            else:
                self._finish(write, outcome=outcome)

    def _finish(
        self,
        write: _Write,
        *,
        outcome: object = None,
        error: Exception | None = None,
    ) -> None:
        write.outcome, write.error, write.finished = outcome, error, True
        self.stats.requests += 1
        write.wake.set()

    async def _transaction(self, conn: aiosqlite.Connection, group: list[_Write]) -> list[object]:
        try:
            await conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _WholeGroup(exc) from exc
        try:
            outcomes: list[object] = []
            # Runs of updates, and of creates without an idempotency key, are written with one
            # executemany per statement; a run is written before the next write of another kind,
            # so every write sees the ones queued before it. A run of applies is fenced with one
            # query before any of its rows is queued: nothing in it can change a holder.
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
                        await pending.flush(conn)
                    for apply, lost in zip(run, await _fence(conn, run), strict=True):
                        if lost is None:
                            pending.job_updates += apply.job_rows
                            pending.execution_updates += apply.execution_rows
                            pending.outbox += apply.outbox_rows
                        outcomes.append(lost)
                    position = end
                    continue
                if new is not None and new.execution.idempotency_key is None:
                    if pending.job_updates or pending.execution_updates or pending.outbox:
                        await pending.flush(conn)
                    pending.inserts.append(new.row)
                    pending.job_inserts += new.job_rows
                    outcomes.append(new.execution)
                else:
                    await pending.flush(conn)
                    if new is not None:
                        outcomes.append(await self._insert(conn, new))
                    elif write.operation is not None:
                        outcomes.append(await write.operation(conn))
                position += 1
            await pending.flush(conn)
        except BaseException:
            await _rollback(conn)
            raise
        try:
            await conn.execute("COMMIT")
        except sqlite3.Error as exc:
            await _rollback(conn)
            raise _WholeGroup(exc) from exc
        return outcomes

    async def _insert(
        self, conn: aiosqlite.Connection, new: _NewExecution
    ) -> Execution | IdempotencyConflict:
        execution = new.execution
        key = execution.idempotency_key
        if key is not None:
            tenant = execution.tenant
            found = list(
                await conn.execute_fetchall(_FIND_KEY, (tenant is None, tenant or "", key))
            )
            if found:
                existing_id, existing_fingerprint = found[0]
                if existing_fingerprint != new.fingerprint:
                    return IdempotencyConflict(
                        f"idempotency key {key!r} was already used with a different request"
                    )
                stored = _assemble(await conn.execute_fetchall(_SELECT_ONE, (existing_id,)))
                return stored[0]
        await conn.execute(_INSERT_EXECUTION, new.row)
        await conn.executemany(_INSERT_JOB, new.job_rows)
        return execution

    # --- errors -------------------------------------------------------------------------------

    def _failure(self, exc: Exception) -> Exception:
        if isinstance(exc, sqlite3.Error):
            return self._error("cannot write to", exc)
        if isinstance(exc, _UnknownTargets):
            error = StorageError(f"cannot apply changes to SQLite store {self.path}: {exc}")
            error.__cause__ = exc
            return error
        return exc

    def _error(self, doing: str, exc: sqlite3.Error) -> StorageError:
        name = getattr(exc, "sqlite_errorname", "")
        hint = _HINTS.get(name) or _HINTS.get(f"SQLITE_{_family(name)}")
        if name.startswith("SQLITE_BUSY") or name.startswith("SQLITE_LOCKED"):
            hint = (
                "the file stayed locked by another connection for longer than busy_timeout "
                f"({self.busy_timeout:g} s)"
            )
        cause = f"{hint} ({exc})" if hint else str(exc)
        error = StorageError(f"{doing} SQLite store {self.path}: {cause}")
        error.__cause__ = exc
        return error


def _family(name: str) -> str:
    """``SQLITE_IOERR_FSYNC`` -> ``IOERR``: extended result codes share their primary's hint."""
    parts = name.split("_")
    return parts[1] if len(parts) > 1 else ""


async def _rollback(conn: aiosqlite.Connection) -> None:
    # Errors mean SQLite already rolled back (or nothing had begun).
    with anyio.CancelScope(shield=True), contextlib.suppress(sqlite3.Error):
        await conn.execute("ROLLBACK")


@define
class _Pending:
    """Rows of consecutive writes of one kind, not yet sent to SQLite."""

    inserts: list[_Row] = field(factory=list)
    job_inserts: list[_Row] = field(factory=list)
    job_updates: list[_Row] = field(factory=list)
    execution_updates: list[_Row] = field(factory=list)
    #: Outbox changes, in the order of the changes (they depend on each other: an event is
    #: added before its attempts are logged).
    outbox: list[_OutboxRow] = field(factory=list)

    async def flush(self, conn: aiosqlite.Connection) -> None:
        if self.inserts:
            await conn.executemany(_INSERT_EXECUTION, self.inserts)
            await conn.executemany(_INSERT_JOB, self.job_inserts)
        await _update(conn, self.job_updates, self.execution_updates)
        await _write_outbox(conn, self.outbox)
        self.inserts, self.job_inserts, self.job_updates, self.execution_updates = [], [], [], []
        self.outbox = []


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _chunks(values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


async def _fence(conn: aiosqlite.Connection, run: list[_Write]) -> list[LeaseLost | None]:
    """For each apply of ``run``: ``LeaseLost`` naming the executions its owner does not hold.

    An apply naming an execution that is not stored passes: its update reports it, as an
    unfenced apply's does.
    """
    wanted = list(
        dict.fromkeys(i for write in run if write.owner is not None for i in write.execution_ids)
    )
    if not wanted:
        return [None] * len(run)
    holders: dict[str, str | None] = {}
    for chunk in _chunks(wanted):
        sql = _SELECT_OWNERS.format(marks=_marks(len(chunk)))
        holders.update((row[0], row[1]) for row in await conn.execute_fetchall(sql, chunk))
    verdicts: list[LeaseLost | None] = []
    for write in run:
        lost = None
        if write.owner is not None and all(i in holders for i in write.execution_ids):
            not_held = [i for i in write.execution_ids if holders[i] != write.owner]
            if not_held:
                lost = LeaseLost(not_held)
        verdicts.append(lost)
    return verdicts


async def _claim(
    conn: aiosqlite.Connection,
    owner: str,
    now: float,
    lease_until: float,
    limit: int | None,
    ids: list[str] | None,
    takeable: list[str],
) -> list[_Row]:
    """Take the claimable executions (see ``SqliteStorage.claim``); their rows, oldest first."""
    claimable = (now, *takeable)
    marks = _marks(len(takeable))
    if ids is None:
        sql = _SELECT_CLAIMABLE.format(marks=marks)
        found = await conn.execute_fetchall(sql, (*claimable, -1 if limit is None else limit))
        seqs = [int(row[0]) for row in found]
    else:
        seqs = []
        for chunk in _chunks(ids):
            sql = _SELECT_CLAIMABLE_IDS.format(ids=_marks(len(chunk)), marks=marks)
            seqs += [int(row[0]) for row in await conn.execute_fetchall(sql, (*chunk, *claimable))]
        seqs.sort()
        if limit is not None:
            del seqs[limit:]
    if not seqs:
        return []
    await conn.executemany(_TAKE, [(owner, lease_until, seq) for seq in seqs])
    rows: list[_Row] = []
    for chunk in _chunks(seqs):
        sql = _SELECT_BY_SEQ.format(marks=_marks(len(chunk)))
        rows += [tuple(row) for row in await conn.execute_fetchall(sql, chunk)]
    return rows


async def _update(
    conn: aiosqlite.Connection, job_rows: list[_Row], execution_rows: list[_Row]
) -> None:
    """Write updates; every targeted row must exist, so that a bad ``apply`` writes nothing."""
    if job_rows:
        cursor = await conn.executemany(_UPDATE_JOB, job_rows)
        if cursor.rowcount != len(job_rows):
            raise await _unknown_targets(conn, job_rows, execution_rows)
    if execution_rows:
        cursor = await conn.executemany(_UPDATE_EXECUTION, execution_rows)
        if cursor.rowcount != len(execution_rows):
            raise await _unknown_targets(conn, job_rows, execution_rows)


async def _write_outbox(conn: aiosqlite.Connection, changes: list[_OutboxRow]) -> None:
    """Write outbox changes in order, with one ``executemany`` per run of one statement; every
    targeted row must exist (and every added event id be new), so a bad ``apply`` writes
    nothing."""
    start = 0
    while start < len(changes):
        sql = changes[start][0]
        end = start + 1
        while end < len(changes) and changes[end][0] is sql:
            end += 1
        rows = [row for _, row in changes[start:end]]
        if sql is _INSERT_EVENT:
            await _check_new_event_ids(conn, [row[-2] for row in rows])
        cursor = await conn.executemany(sql, rows)
        if cursor.rowcount != len(rows):
            raise await _unknown_events(conn, sql, rows)
        start = end


async def _check_new_event_ids(conn: aiosqlite.Connection, event_ids: list[str]) -> None:
    taken = [i for i, n in Counter(event_ids).items() if n > 1]
    for chunk in _chunks(list(dict.fromkeys(event_ids))):
        sql = _SELECT_EVENT_IDS.format(marks=_marks(len(chunk)))
        taken += [str(row[0]) for row in await conn.execute_fetchall(sql, chunk)]
    if taken:
        shown = ", ".join(repr(i) for i in dict.fromkeys(taken))
        raise _UnknownTargets(
            f"webhook event {shown} already exists (an event is added once; OutboxReset sends "
            "it again); nothing was applied"
        )


async def _unknown_events(
    conn: aiosqlite.Connection, sql: str, rows: list[_Row]
) -> _UnknownTargets:
    missing: list[str] = []
    for row in rows:
        event_id, execution_id = row[-2], row[-1]
        parameters: tuple[str, ...]
        if sql is _INSERT_EVENT:
            query, parameters = "SELECT 1 FROM executions WHERE id = ?", (execution_id,)
            what = f"execution {execution_id!r}"
        else:
            query = "SELECT 1 FROM outbox WHERE event_id = ? AND execution_id = ?"
            parameters = (event_id, execution_id)
            what = f"webhook event {event_id!r} of execution {execution_id!r}"
        if not list(await conn.execute_fetchall(query, parameters)):
            missing.append(what)
    unique = list(dict.fromkeys(missing))
    shown = ", ".join(unique[:5]) + (f" and {len(unique) - 5} more" if len(unique) > 5 else "")
    return _UnknownTargets(f"no such {shown}; nothing was applied")


async def _unknown_targets(
    conn: aiosqlite.Connection, job_rows: list[_Row], execution_rows: list[_Row]
) -> _UnknownTargets:
    missing: list[str] = []
    for row in job_rows:
        execution_id, job_id = row[-2], row[-1]
        found = await conn.execute_fetchall(
            "SELECT 1 FROM jobs WHERE execution_id = ? AND job_id = ?", (execution_id, job_id)
        )
        if not list(found):
            missing.append(f"job {job_id!r} of execution {execution_id!r}")
    for row in execution_rows:
        found = await conn.execute_fetchall("SELECT 1 FROM executions WHERE id = ?", (row[-1],))
        if not list(found):
            missing.append(f"execution {row[-1]!r}")
    unique = list(dict.fromkeys(missing))
    shown = ", ".join(unique[:5]) + (f" and {len(unique) - 5} more" if len(unique) > 5 else "")
    return _UnknownTargets(f"no such {shown}; nothing was applied")


# --- rows <-> models --------------------------------------------------------------------------


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise StorageError(f"cannot store {what}: it is not JSON ({exc})") from exc


def _video(video: Video | None) -> str | None:
    return None if video is None else _dumps(wire.to_json(video), "a video")


def _error_json(error: ErrorInfo | None) -> str | None:
    return None if error is None else _dumps(wire.to_json(error), "an error")


def _execution_row(
    execution: Execution, fingerprint: str | None, owner: str | None, lease_until: float | None
) -> _Row:
    webhook = execution.webhook
    return (
        execution.id,
        execution.status,
        execution.tenant,
        execution.idempotency_key,
        fingerprint,
        execution.base_execution_id,
        None if webhook is None else webhook.url,
        None if webhook is None else webhook.secret,
        _video(execution.result),
        _error_json(execution.error),
        execution.created_at,
        execution.started_at,
        execution.completed_at,
        execution.generation,
        owner,
        lease_until,
    )


def _job_rows(execution: Execution) -> list[_Row]:
    return [
        (
            execution.id,
            job.id,
            position,
            job.type,
            _dumps(dict(job.params), f"the params of job {job.id!r}"),
            _dumps(list(job.depends_on), f"the dependencies of job {job.id!r}"),
            job.status,
            job.attempts,
            job.started_at,
            job.finished_at,
            _video(job.result),
            _error_json(job.error),
        )
        for position, job in enumerate(execution.jobs)
    ]


def _job_update_row(change: JobUpdate) -> _Row:
    return (
        change.status,
        change.attempts,
        change.started_at,
        change.finished_at,
        _video(change.result),
        _error_json(change.error),
        change.execution_id,
        change.job_id,
    )


def _execution_update_row(change: ExecutionUpdate) -> _Row:
    return (
        change.status,
        change.started_at,
        change.completed_at,
        _video(change.result),
        _error_json(change.error),
        change.generation,
        change.execution_id,
    )


def _outbox_row(
    change: OutboxAdd | DeliveryRecorded | OutboxDone | OutboxReset, now: float
) -> _OutboxRow:
    if isinstance(change, OutboxAdd):
        payload = _dumps(dict(change.payload), f"the payload of webhook event {change.event_id!r}")
        return _INSERT_EVENT, (change.status, payload, now, change.event_id, change.execution_id)
    if isinstance(change, DeliveryRecorded):
        a = change.attempt
        row = (a.url, a.attempt, a.at, a.status_code, a.error, a.latency, a.outcome, a.retry_at)
        return _INSERT_ATTEMPT, (*row, a.event_id, a.execution_id)
    if isinstance(change, OutboxDone):
        return _EVENT_DONE, (change.status, now, change.event_id, change.execution_id)
    return _EVENT_RESET, (change.event_id, change.execution_id)


def _attempt(row: _Row) -> DeliveryAttempt:
    event_id, execution_id, url, attempt, at, status_code, error, latency, outcome, retry_at = row
    return DeliveryAttempt(
        event_id=event_id,
        execution_id=execution_id,
        url=url,
        attempt=attempt,
        at=at,
        status_code=status_code,
        error=error,
        latency=latency,
        outcome=outcome,
        retry_at=retry_at,
    )


def _notification(row: _Row) -> Notification:
    event_id, execution_id, status, payload, url, secret, tenant, attempts = row
    return Notification(
        event_id=event_id,
        execution_id=execution_id,
        status=status,
        payload=json.loads(payload),
        webhook=None if url is None else Webhook(url, secret),
        tenant=tenant,
        attempts_made=attempts,
    )


def _assemble(rows: Iterable[sqlite3.Row | _Row]) -> list[Execution]:
    """Executions from joined rows (execution columns, then job columns), in row order."""
    executions: list[Execution] = []
    head: _Row | None = None
    jobs: list[JobInfo] = []
    for row in rows:
        values = tuple(row)
        if head is None or values[0] != head[0]:
            if head is not None:
                executions.append(_execution(head, jobs))
            head, jobs = values[:_N_EXECUTION_COLUMNS], []
        if values[_N_EXECUTION_COLUMNS] is not None:
            jobs.append(_job(values[_N_EXECUTION_COLUMNS:]))
    if head is not None:
        executions.append(_execution(head, jobs))
    return executions


def _execution(row: _Row, jobs: list[JobInfo]) -> Execution:
    (
        execution_id,
        status,
        created_at,
        base_execution_id,
        webhook_url,
        webhook_secret,
        result,
        error,
        started_at,
        completed_at,
        tenant,
        idempotency_key,
        generation,
    ) = row
    return Execution(
        id=execution_id,
        status=status,
        jobs=tuple(jobs),
        created_at=created_at,
        base_execution_id=base_execution_id,
        webhook=None if webhook_url is None else Webhook(webhook_url, webhook_secret),
        result=None if result is None else wire.from_json(json.loads(result), Video),
        error=None if error is None else wire.from_json(json.loads(error), ErrorInfo),
        started_at=started_at,
        completed_at=completed_at,
        tenant=tenant,
        idempotency_key=idempotency_key,
        generation=generation,
    )


def _job(row: _Row) -> JobInfo:
    (
        job_id,
        type_,
        params,
        depends_on,
        status,
        attempts,
        started_at,
        finished_at,
        result,
        error,
    ) = row
    return JobInfo(
        id=job_id,
        type=type_,
        params=json.loads(params),
        depends_on=() if depends_on == "[]" else tuple(json.loads(depends_on)),
        status=status,
        attempts=attempts,
        started_at=started_at,
        finished_at=finished_at,
        result=None if result is None else wire.from_json(json.loads(result), Video),
        error=None if error is None else wire.from_json(json.loads(error), ErrorInfo),
    )

"""The SQLite store's facade: :class:`SqliteStorage`, the port on one file.

One writer connection, one reader connection (WAL lets reads go on while a write commits).
Writes go through the group-commit writer (:mod:`adapters.sqlite.writer`), claims and fencing
are in :mod:`adapters.sqlite.claims`, the SQL in :mod:`adapters.sqlite.statements`, and the
mapping between rows and models in :mod:`adapters.sqlite.rows`. Every ``sqlite3`` error is
translated into a :class:`~engine.errors.StorageError` naming the file and the cause
(:mod:`adapters.sqlite.errors`).

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
import math
import os
import sqlite3
import time
from collections.abc import Collection, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Literal, cast

import aiosqlite
import anyio
from attrs import define, field

from adapters.sqlite import claims, connection, rows, statements
from adapters.sqlite.errors import Translator
from adapters.sqlite.rows import Row
from adapters.sqlite.transaction import NewExecution, Write
from adapters.sqlite.writer import GroupWriter, WriterStats
from engine.errors import ConfigError, StorageError
from engine.models import (
    Change,
    DeliveryAttempt,
    Execution,
    ExecutionUpdate,
    JobUpdate,
    Notification,
)

__all__ = ["SqliteStorage", "Synchronous", "WriterStats"]

Synchronous = Literal["FULL", "NORMAL"]

#: From this many rows on, ``unfinished()`` and ``claim()`` decode them in a worker thread.
_ASSEMBLE_IN_THREAD = 2000


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

    Writes go through one writer at a time: concurrent ``create`` and ``apply`` calls are
    batched into one ``BEGIN IMMEDIATE`` transaction (group commit, see
    :mod:`adapters.sqlite.writer`), and each call returns only once the transaction holding it
    has committed. When a call in a batch fails, the batch is rolled back and each of its calls
    is retried alone, so one bad call fails only itself. The writer connection has its own
    thread, which commits one batch while the event loop runs the callers of the last; a batch
    it has taken is committed even if its callers are cancelled. ``stats`` counts transactions
    and calls. Several processes (or several instances) may use one file at once. The store
    runs on asyncio (its reader is ``aiosqlite``; its writer thread reports to the loop).

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
    _writer: GroupWriter | None = field(default=None, init=False, repr=False)
    _reader: aiosqlite.Connection | None = field(default=None, init=False, repr=False)
    _closing: bool = field(default=False, init=False, repr=False)
    _errors: Translator = field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._errors = Translator(self.path, self.busy_timeout)

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
        connection.check_path(self.path)
        try:
            # Shielded: a connection opened in the thread is never lost to a cancellation.
            with anyio.CancelScope(shield=True):
                conn = await anyio.to_thread.run_sync(
                    connection.open_writer, self.path, self.busy_timeout, self.synchronous
                )
                self._writer = GroupWriter(conn, self._errors, self.stats, f"sqlite {self.path}")
                self._writer.start()
            self._reader = await connection.connect_reader(self.path, self.busy_timeout)
        except sqlite3.Error as exc:
            await self._close_connections()
            raise self._errors.error("cannot open", exc) from exc
        except BaseException:
            await self._close_connections()
            raise
        self._closing = False

    async def close(self) -> None:
        """Refuse new writes, let the queued ones commit, close the connections. Idempotent."""
        if self._writer is None or self._closing:
            return
        self._closing = True
        await self._close_connections()

    async def _close_connections(self) -> None:
        with anyio.CancelScope(shield=True):
            if self._writer is not None:  # lets the queued writes commit first
                await self._writer.close()
            if self._reader is not None:
                with contextlib.suppress(sqlite3.Error):  # closing: nothing to protect
                    await self._reader.close()
            self._writer = self._reader = None

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

        def read(conn: sqlite3.Connection) -> dict[str, int | str]:
            return {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in names}

        try:
            settings = await writer.run(read)
        except sqlite3.Error as exc:
            raise self._errors.error("cannot read", exc) from exc
        return settings

    # --- reads --------------------------------------------------------------------------------

    async def get(self, execution_id: str) -> Execution | None:
        executions = rows.assemble(await self._read(statements.SELECT_ONE, (execution_id,)))
        return executions[0] if executions else None

    async def unfinished(self) -> list[Execution]:
        found = await self._read(statements.SELECT_UNFINISHED, ())
        if len(found) < _ASSEMBLE_IN_THREAD:
            return rows.assemble(found)
        # A backlog of many executions takes seconds to decode: keep the event loop responsive.
        return await anyio.to_thread.run_sync(rows.assemble, found)

    async def counts(self, *, tenant: str | None = None) -> dict[str, int]:
        if tenant is None:
            found = await self._read(statements.SELECT_COUNTS, ())
        else:
            found = await self._read(statements.SELECT_COUNTS_OF_TENANT, (tenant,))
        return {str(status): int(n) for status, n in found}

    async def holders(self) -> dict[str, float]:
        found = await self._read(statements.SELECT_HOLDERS, ())
        return {str(owner): math.inf if lease is None else float(lease) for owner, lease in found}

    async def deliveries(self, execution_id: str) -> list[DeliveryAttempt]:
        found = await self._read(statements.SELECT_DELIVERIES, (execution_id,))
        return [rows.attempt_from_row(tuple(row)) for row in found]

    async def outbox_counts(self) -> dict[str, int]:
        return {
            str(status): int(n)
            for status, n in await self._read(statements.SELECT_OUTBOX_COUNTS, ())
        }

    async def _read(self, sql: str, parameters: Row) -> list[sqlite3.Row]:
        reader = self._reader
        if reader is None:
            raise StorageError(f"SQLite store {self.path} is not open")
        try:
            return list(await reader.execute_fetchall(sql, parameters))
        except sqlite3.Error as exc:
            raise self._errors.error("cannot read", exc) from exc

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
        row = rows.execution_row(execution, fingerprint, owner, lease_until)
        new = NewExecution(execution, fingerprint, row, rows.job_rows(execution))
        write = await self._submit(Write(new=new))
        if not isinstance(write.outcome, Execution):  # pragma: no cover - the writer sets one
            raise StorageError(f"SQLite store {self.path}: create returned nothing")
        return write.outcome

    async def apply(self, changes: Sequence[Change], *, owner: str | None = None) -> None:
        if not changes:
            return
        write = Write(owner=owner)
        now = time.time()  # created_at and done_at of outbox rows: for people reading the file
        for change in changes:
            if isinstance(change, JobUpdate):
                write.job_rows.append(rows.job_update_row(change))
            elif isinstance(change, ExecutionUpdate):
                write.execution_rows.append(rows.execution_update_row(change))
            else:
                write.outbox_rows.append(rows.outbox_row(change, now))
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

        operation = partial(
            claims.claim,
            owner=owner,
            now=now,
            lease_until=lease_until,
            limit=limit,
            ids=wanted,
            takeable=takeable,
        )
        write = await self._submit(Write(operation=operation))
        found = cast(list[Row], write.outcome)
        if len(found) < _ASSEMBLE_IN_THREAD:
            return rows.assemble(found)
        return await anyio.to_thread.run_sync(rows.assemble, found)

    async def renew(self, owner: str, *, lease_until: float) -> set[str]:
        """Extend ``owner``'s leases on unfinished executions, and on finished ones with pending
        webhook events, in one transaction; return the unfinished ones."""
        operation = partial(claims.renew, owner=owner, lease_until=lease_until)
        write = await self._submit(Write(operation=operation))
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
        operation = partial(
            claims.claim_outbox, owner=owner, now=now, lease_until=lease_until, takeable=takeable
        )
        write = await self._submit(Write(operation=operation))
        return [rows.notification_from_row(row) for row in cast(list[Row], write.outcome)]

    async def release(self, owner: str, ids: Collection[str] | None = None) -> None:
        """Give up ``owner``'s holds so others can claim at once.

        Without ``ids``: on every unfinished execution ``owner`` holds (a hold on a finished
        execution blocks no claim, and finding those would read the whole history). With
        ``ids``: on those of them ``owner`` holds, finished or not.
        """
        if ids is not None and not ids:
            return
        wanted = None if ids is None else list(dict.fromkeys(ids))
        await self._submit(Write(operation=partial(claims.release, owner=owner, ids=wanted)))

    async def _submit(self, write: Write) -> Write:
        writer = self._writer
        if writer is None or self._closing:
            raise StorageError(f"SQLite store {self.path} is not open")
        return await writer.submit(write)

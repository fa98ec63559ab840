"""Group commit: concurrent write calls share one transaction, committed by the writer thread.

Each write call (``create``, ``apply``, ``claim``, ``claim_outbox``, ``renew``, ``release``)
queues a :class:`~adapters.sqlite.transaction.Write` with :meth:`GroupWriter.submit` and waits.
Writes queued together form a batch (at most :data:`MAX_GROUP`). The writer connection's own
thread takes the oldest batch as soon as it is free, commits it in one ``BEGIN IMMEDIATE``
transaction (:func:`adapters.sqlite.transaction.run`), and tells the event loop, which wakes
the batch's callers with one event. So one writer at a time, no write acknowledged before its
``COMMIT`` returned, and while SQLite commits one batch, the event loop runs the callers of the
last one, which queue the next. No task is spawned: the store may be opened and closed from any
task, in any nesting of task groups.

When a batch fails, it is rolled back and each of its calls is retried alone, so one bad call
fails only itself. A batch the thread has taken is committed even if its callers are cancelled
(every change is safe to apply again); a call cancelled before is dropped.

The thread reports back with the event loop's ``call_soon_threadsafe``, so the store runs on
asyncio (as ``aiosqlite``, which its reader uses, does).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar, cast

import anyio
from attrs import define, field

from adapters.sqlite import transaction
from adapters.sqlite.errors import Translator, WholeGroup
from adapters.sqlite.transaction import Write
from engine.errors import StorageError

T = TypeVar("T")

#: The most write calls (create, apply, claim, claim_outbox, renew, release) one transaction takes.
MAX_GROUP = 1024


@define
class WriterStats:
    """What the writer has done since the store was created; for inspection and tests.

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
class _Batch:
    """Writes queued together, committed in one transaction; or one ``call`` on the connection
    outside any transaction (``pragmas()``, closing)."""

    loop: asyncio.AbstractEventLoop
    done: anyio.Event
    writes: list[Write] = field(factory=list)
    call: Callable[[sqlite3.Connection], object] | None = None
    result: object = None
    error: BaseException | None = None


@define
class GroupWriter:
    """The writer connection, its thread, and the queue of batches the thread commits.

    The thread owns the connection from :meth:`start` until :meth:`close` ends it.
    """

    conn: sqlite3.Connection
    errors: Translator
    stats: WriterStats
    #: The thread's name, for debuggers and thread dumps.
    name: str
    #: Guards ``_batches`` and ``_stopping``; the thread waits on it for work.
    _ready: threading.Condition = field(factory=threading.Condition, init=False)
    _batches: deque[_Batch] = field(factory=deque, init=False)
    _stopping: bool = field(default=False, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    #: Batches queued and not yet reported done (touched on the event loop's thread only).
    _unfinished: int = field(default=0, init=False)
    _idle: anyio.Event | None = field(default=None, init=False)

    @property
    def queued(self) -> int:
        """Write calls queued that the thread has not taken yet; for inspection and tests."""
        with self._ready:
            return sum(len(batch.writes) for batch in self._batches)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
        self._thread.start()

    async def submit(self, write: Write) -> Write:
        """Queue ``write`` and return it once committed; raise the error it failed with."""
        with self._ready:
            batches = self._batches
            batch = batches[-1] if batches else None
            if batch is None or batch.call is not None or len(batch.writes) >= MAX_GROUP:
                batch = self._queue(_Batch(asyncio.get_running_loop(), anyio.Event()))
            batch.writes.append(write)
        try:
            await batch.done.wait()
        except anyio.get_cancelled_exc_class():
            # Not yet taken by the thread: it is dropped. Already taken: it commits anyway,
            # and the cancelled caller cannot know; every change is safe to apply again.
            write.abandoned = True
            raise
        if write.error is not None:
            raise write.error
        return write

    async def run(self, call: Callable[[sqlite3.Connection], T]) -> T:
        """``call(conn)`` in the thread, after the writes queued before it, outside any
        transaction; its result or the exception it raised. Not cancellable."""
        with self._ready:
            batch = self._queue(_Batch(asyncio.get_running_loop(), anyio.Event(), call=call))
        with anyio.CancelScope(shield=True):
            await batch.done.wait()
        if batch.error is not None:
            raise batch.error
        return cast(T, batch.result)

    async def close(self) -> None:
        """Let every queued write commit, close the connection, end the thread. Not
        cancellable; the caller refuses new writes first."""
        if self._thread is None:  # never started: nothing queued, no thread to end
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            return
        with anyio.CancelScope(shield=True):
            while self._unfinished:
                self._idle = anyio.Event()
                await self._idle.wait()
            self._idle = None
            with contextlib.suppress(sqlite3.Error):  # closing: nothing to protect
                await self.run(sqlite3.Connection.close)
            with self._ready:
                self._stopping = True
                self._ready.notify()
            await anyio.to_thread.run_sync(self._thread.join)

    def _queue(self, batch: _Batch) -> _Batch:
        """Append ``batch`` (the caller holds ``_ready``) and wake the thread."""
        self._batches.append(batch)
        self._unfinished += 1
        self._ready.notify()
        return batch

    def _done(self, batch: _Batch) -> None:
        """On the event loop: wake the batch's callers."""
        batch.done.set()
        self._unfinished -= 1
        if not self._unfinished and self._idle is not None:
            self._idle.set()

    # --- in the writer thread ---------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not self._batches and not self._stopping:
                    self._ready.wait()
                if not self._batches:
                    return
                batch = self._batches.popleft()
            self._handle(batch)
            # Nobody waits when the loop has ended (a store abandoned without close()).
            with contextlib.suppress(RuntimeError):
                batch.loop.call_soon_threadsafe(self._done, batch)

    def _handle(self, batch: _Batch) -> None:
        if batch.call is not None:
            try:
                batch.result = batch.call(self.conn)
            except BaseException as exc:  # handed to the caller, which raises it
                batch.error = exc
            return
        group = [write for write in batch.writes if not write.abandoned]
        if not group:
            return
        try:
            self._commit(group)
        except BaseException as exc:  # a bug: fail every call of the batch, keep serving
            for write in group:
                if not write.finished:
                    error = StorageError(
                        f"write to SQLite store {self.errors.path} interrupted: {exc!r}"
                    )
                    self._finish(write, error=error)

    def _commit(self, group: list[Write]) -> None:
        try:
            outcomes = transaction.run(self.conn, group)
        except WholeGroup as exc:
            self.stats.rollbacks += 1
            for write in group:
                self._finish(write, error=self.errors.error("cannot write to", exc.cause))
            return
        except Exception as exc:
            self.stats.rollbacks += 1
            if len(group) == 1:
                self._finish(group[0], error=self.errors.failure(exc))
                return
            for write in group:  # find the culprit: each alone, so the others still commit
                self._commit([write])
            return
        self.stats.transactions += 1
        self.stats.largest_group = max(self.stats.largest_group, len(group))
        for write, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, Exception):
                self._finish(write, error=outcome)
            else:
                self._finish(write, outcome=outcome)

    def _finish(self, write: Write, *, outcome: Any = None, error: Exception | None = None) -> None:
        write.outcome, write.error, write.finished = outcome, error, True
        self.stats.requests += 1

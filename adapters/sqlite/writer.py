"""Group commit: concurrent write calls share one transaction, without a background task.

(The writer connection has its own thread, :class:`~adapters.sqlite.connection.WriterThread`;
the writer role is held by a calling task, which runs each transaction there as one call.)

Each write call (``create``, ``apply``, ``claim``, ``claim_outbox``, ``renew``, ``release``)
queues a :class:`~adapters.sqlite.transaction.Write` with :meth:`GroupWriter.submit`. If no call
is writing, the caller takes the writer role; otherwise it waits. The writer takes every queued
write (up to :data:`MAX_GROUP`, its own first), commits them in one ``BEGIN IMMEDIATE``
transaction (:func:`adapters.sqlite.transaction.run`), wakes their callers, and hands the role
to the caller of the oldest write still queued, which wrote nothing yet. So one writer at a
time, no write acknowledged before its ``COMMIT`` returned, and no task outlives the calls: the
store may be opened and closed from any task, in any nesting of task groups.

When a group fails, it is rolled back and each of its calls is retried alone, so one bad call
fails only itself. A transaction, once begun, is finished even if its writer's caller is
cancelled.
"""

from __future__ import annotations

from collections import deque

import anyio
from attrs import define, field

from adapters.sqlite import transaction
from adapters.sqlite.connection import WriterThread
from adapters.sqlite.errors import Translator, WholeGroup
from adapters.sqlite.transaction import Write
from engine.errors import StorageError

#: The most write calls (create, apply, claim, claim_outbox, renew, release) one transaction takes.
MAX_GROUP = 1024


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


@define
class GroupWriter:
    """The write queue of one connection, and the writer role that commits it."""

    #: The writer connection, in its thread: every transaction is one call there.
    thread: WriterThread
    errors: Translator
    stats: WriterStats
    _queue: deque[Write] = field(factory=deque, init=False)
    #: Some call holds the writer role (or has been handed it).
    _writing: bool = field(default=False, init=False)
    _idle: anyio.Event | None = field(default=None, init=False)
    #: Waiting callers share events (one per group, not one per call: making one costs more
    #: than writing a row). The first write queued since the writer took its group is the
    #: likely successor and waits alone, so handing it the role wakes no one else.
    _successor_waits: bool = field(default=False, init=False)
    _shared: anyio.Event | None = field(default=None, init=False)

    async def submit(self, write: Write) -> Write:
        """Queue ``write`` and return it once committed; raise the error it failed with."""
        self._queue.append(write)
        if self._writing:
            if not self._successor_waits:
                self._successor_waits = True
                write.wake = anyio.Event()
            else:
                if self._shared is None:
                    self._shared = anyio.Event()
                write.wake = self._shared
            try:
                while not (write.finished or write.promoted):
                    await write.wake.wait()  # the writer gives a new one if this one is spent
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
            await self._write()
        if write.error is not None:
            raise write.error
        return write

    async def drain(self) -> None:
        """Wait until no call holds the writer role (the caller refuses new writes first)."""
        with anyio.CancelScope(shield=True):
            while self._writing:  # the queued writes' callers pass the writer role on
                self._idle = anyio.Event()
                await self._idle.wait()
            self._idle = None

    async def _write(self) -> None:
        """Hold the writer role: commit the queued writes (this call's first), then hand over."""
        group: list[Write] = []
        try:
            # Never leave a transaction half done, even when this call is cancelled.
            with anyio.CancelScope(shield=True):
                while self._queue and len(group) < MAX_GROUP:
                    write = self._queue.popleft()
                    if not write.abandoned:
                        group.append(write)
                self._successor_waits, self._shared = False, None  # later writes: new events
                await self._commit(group)
        except BaseException as exc:  # a bug, or the process is going down: wake every caller
            for write in group:
                if not write.finished:
                    error = StorageError(
                        f"write to SQLite store {self.errors.path} interrupted: {exc!r}"
                    )
                    self._finish(write, error=error)
            raise
        finally:
            # The role first: the successor sends the next transaction to the writer thread
            # before this group's callers run, so SQLite commits while the event loop works.
            self._hand_over()
            self._wake({write.wake for write in group if write.wake is not None})

    def _hand_over(self) -> None:
        """Give the writer role to the caller of the oldest queued write, or release it."""
        while self._queue and self._queue[0].abandoned:
            self._queue.popleft()
        if self._queue:
            successor = self._queue[0]
            successor.promoted = True
            if successor.wake is not None:  # it has one: it was queued while a call wrote
                self._wake({successor.wake})
            return
        self._writing = False
        if self._idle is not None:
            self._idle.set()

    def _wake(self, events: set[anyio.Event]) -> None:
        """Set ``events``, after giving a fresh event to each queued write that waits on one of
        them and must wait on (its group was cut at ``MAX_GROUP``, or it shares the event of a
        successor whose earlier write was abandoned)."""
        fresh: dict[anyio.Event, anyio.Event] = {}
        for write in self._queue:
            spent = write.wake
            if spent in events and not write.promoted:
                if spent not in fresh:
                    fresh[spent] = anyio.Event()
                write.wake = fresh[spent]
        for event in events:
            event.set()

    async def _commit(self, group: list[Write]) -> None:
        try:
            outcomes = await self.thread.run(transaction.run, group)
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
                await self._commit([write])
            return
        self.stats.transactions += 1
        self.stats.largest_group = max(self.stats.largest_group, len(group))
        for write, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, Exception):
                self._finish(write, error=outcome)
            else:
                self._finish(write, outcome=outcome)

    def _finish(
        self, write: Write, *, outcome: object = None, error: Exception | None = None
    ) -> None:
        """Record the outcome; :meth:`_write` wakes the caller once the role is handed on."""
        write.outcome, write.error, write.finished = outcome, error, True
        self.stats.requests += 1

"""The four ports the engine runs on. Adapters implement them; the engine imports no adapter.

- :class:`Storage` keeps executions and their jobs; one ``apply`` is one atomic write. It is
  three narrow parts over one transaction log: :class:`ExecutionRecords` (create, get, count),
  :class:`LeaseStore` (which engine holds which execution: claim, renew, release, holders) and
  :class:`OutboxStore` (webhook events and their delivery log).
- :class:`JobQueue` hands ready jobs to workers.
- :class:`VideoProvider` does the work of one job attempt.
- :class:`Notifier` is told, once, of each execution that reaches a terminal status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

from engine.models import (
    BoardEvent,
    Change,
    Claim,
    CompleteOutcome,
    DeliveryAttempt,
    EndOutcome,
    EngineInfo,
    Execution,
    JobRef,
    JobRequest,
    Notification,
    Video,
)


@runtime_checkable
class VideoProvider(Protocol):
    async def run(self, request: JobRequest) -> Video:
        """Do one attempt of one job.

        Raise :class:`~engine.ProviderError` with ``retryable=False`` to fail the job at once; any
        other exception is retried under the engine's retry policy.
        """
        ...


AttemptRecorder = Callable[[DeliveryAttempt], Awaitable[None]]


@runtime_checkable
class Notifier(Protocol):
    async def notify(
        self, notification: Notification, record: AttemptRecorder | None = None
    ) -> None:
        """Tell the outside world that an execution ended; return when done or given up.

        A notifier that makes delivery attempts awaits ``record(attempt)`` for each, so the
        engine can keep a durable delivery log.
        """
        ...


class Store(Protocol):
    """What every part of a store shares: opening, closing, and the one atomic write.

    ``apply`` takes changes of every kind (job and execution updates, outbox rows, delivery
    attempts), so that an ending and its webhook event are written in one transaction.
    """

    @property
    def durable(self) -> bool:
        """Whether what is written outlives the process (SQLite, PostgreSQL: ``True``; memory:
        ``False``). An engine on a durable store leaves a webhook waiting for its retry to the
        outbox when it stops; on one that is not, it waits up to ``shutdown_grace`` for it."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def apply(self, changes: Sequence[Change], *, owner: str | None = None) -> None:
        """Apply every change, all or nothing, in the order the calls were made.

        With ``owner``, every execution the changes name must be held by ``owner``; otherwise
        nothing of this call is applied and :class:`~engine.errors.LeaseLost` names the
        executions not held.
        """
        ...


class ExecutionRecords(Store, Protocol):
    """Executions and their jobs: create (idempotently), read, count."""

    async def create(
        self,
        execution: Execution,
        fingerprint: str | None = None,
        *,
        owner: str | None = None,
        lease_until: float | None = None,
    ) -> Execution:
        """Store a new execution, held by ``owner`` until ``lease_until``.

        Atomic with its idempotency key if it has one: when ``execution.idempotency_key`` is set
        and ``(tenant, key)`` is already stored, with the same ``fingerprint`` return the stored
        execution unchanged (its holder is not changed); with another raise
        :class:`~engine.IdempotencyConflict`.
        """
        ...

    async def get(self, execution_id: str) -> Execution | None: ...

    async def unfinished(self) -> list[Execution]:
        """Every execution whose status is ``pending`` or ``processing``, oldest first."""
        ...

    async def counts(self, *, tenant: str | None = None) -> dict[str, int]:
        """How many executions are in each status (of one tenant, or of all)."""
        ...


class LeaseStore(Store, Protocol):
    """Which engine holds each unfinished execution, when several engines share one store.

    Each unfinished execution is held by one engine at a time, under a lease it renews; only
    the holder's writes are accepted (fencing: ``apply(..., owner=...)``), so an engine that lost
    its lease (paused, partitioned, presumed dead) cannot record a second result for work
    another engine has taken over.
    """

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
        """Take executions for ``owner`` until ``lease_until``; return them oldest first.

        Claimable: an unfinished execution that no one holds, whose lease expired
        (``lease_until < now``), or whose holder is in ``dead_owners``. With ``ids``, only those
        executions, and also ones ``owner`` holds and terminal ones (for ``cancel``/``resume``).
        Without ``ids`` an engine's own executions are never re-taken, so a periodic sweep reads
        only what it takes over.
        """
        ...

    async def renew(self, owner: str, *, lease_until: float) -> set[str]:
        """Extend every lease ``owner`` holds on unfinished executions (and on terminal ones
        with pending webhook events), in one write.

        Returns the ids of the unfinished executions ``owner`` still holds.
        """
        ...

    async def release(self, owner: str, ids: Collection[str] | None = None) -> None:
        """Give up ``owner``'s leases (all, or on ``ids``) so another engine can claim at once."""
        ...

    async def holders(self) -> dict[str, float]:
        """Each engine holding unfinished executions or terminal ones with pending webhook
        events, with the latest of its leases on those.

        An engine that died holding only undelivered events is reported too, so that an engine
        restarted in its place can see it gone and take its outbox at once.
        """
        ...


class OutboxStore(Store, Protocol):
    """The durable webhook outbox: events written with the endings, and their delivery log."""

    async def claim_outbox(
        self,
        owner: str,
        *,
        now: float,
        lease_until: float,
        dead_owners: Collection[str] = (),
    ) -> list[Notification]:
        """Take the pending webhook events of terminal executions no live engine holds; oldest
        first.

        An event is pending from the ``OutboxAdd`` that queued it (or an ``OutboxReset``) until
        an ``OutboxDone``. Its execution must be terminal (``completed``, ``failed`` or
        ``cancelled``) and claimable by ``claim``'s rules (unheld, lease expired, holder dead),
        and becomes held by ``owner``; ``renew`` also extends the leases of terminal executions
        that still have pending events. A pending event of an unfinished execution (resumed
        while an earlier event was pending) is left alone: ``claim`` takes that execution over.
        Each returned notification has its execution's webhook and tenant, and
        ``attempts_made`` from the delivery log.
        """
        ...

    async def deliveries(self, execution_id: str) -> list[DeliveryAttempt]:
        """The delivery log of an execution's webhook events, oldest first."""
        ...

    async def outbox_counts(self) -> dict[str, int]:
        """How many webhook events are in each outbox status."""
        ...


@runtime_checkable
class Storage(ExecutionRecords, LeaseStore, OutboxStore, Protocol):
    """A whole store, as an :class:`~engine.Engine` takes it: the three parts over one set of
    transactions. ``adapters.memory.MemoryStorage`` is the readable reference; its docstrings
    and the contract suite (``tests/test_storage_contract.py``) say what each call must do."""


class JobBoard(OutboxStore, Protocol):
    """Job-level dispatch by a shared database (``adapters.postgres.PostgresBoard``).

    The database is the scheduler: each ready job is a row any engine serving its type claims;
    readiness is decided in the transaction that records a completion (dependents count down,
    the roots of dependent executions included); every outcome is fenced on its claim's token.
    Engines heartbeat (one write per engine per interval); the jobs of an engine whose lease
    expired are rescued (ready again, same idempotency key). ``apply`` takes the outbox changes
    (``DeliveryRecorded``, ``OutboxDone``, ``OutboxReset``) only.
    """

    async def get(self, execution_id: str) -> Execution | None: ...

    async def counts(self, *, tenant: str | None = None) -> dict[str, int]:
        """How many executions are in each status (of one tenant, or all)."""
        ...

    async def submit(
        self, execution: Execution, fingerprint: str | None = None, *, now: float
    ) -> Execution:
        """Store a new execution and its jobs; idempotent on ``(tenant, idempotency_key)``."""
        ...

    async def claim(
        self,
        engine_id: str,
        *,
        types: Collection[str] | None = None,
        limit: int,
        now: float,
    ) -> list[Claim]:
        """Claim up to ``limit`` ready jobs of ``types``, within the fleet-wide caps."""
        ...

    async def set_limits(self, limits: Mapping[str, int]) -> None:
        """Cap the running jobs of these types across every engine on the database."""
        ...

    async def limits(self) -> dict[str, int]: ...

    async def complete(
        self, results: Sequence[tuple[Claim, Video]], *, now: float
    ) -> CompleteOutcome: ...

    async def fail(
        self, claim: Claim, message: str, *, retry_at: float | None, now: float
    ) -> EndOutcome:
        """With ``retry_at``, the job is ready again from then; without, it fails, and with it
        its execution and every execution based on it."""
        ...

    async def cancel(self, execution_id: str, *, now: float, reason: str) -> EndOutcome: ...

    async def resume(self, execution_id: str, *, now: float) -> Execution: ...

    async def register(
        self,
        engine_id: str,
        job_types: Collection[str] | None = None,
        *,
        now: float,
        lease_until: float,
    ) -> None: ...

    async def heartbeat(self, engine_id: str, *, now: float, lease_until: float) -> bool:
        """Extend the engine's lease; ``False`` when it was presumed dead and removed."""
        ...

    async def rescue(self, *, now: float) -> int:
        """Hand back the jobs of engines whose lease expired; how many."""
        ...

    async def release(self, engine_id: str) -> int:
        """Graceful shutdown: hand back the engine's jobs and webhook events at once."""
        ...

    async def engines(self, *, now: float) -> list[EngineInfo]: ...

    async def running_by_type(self) -> dict[str, int]: ...

    async def job_counts(self) -> dict[str, int]:
        """How many jobs are in each status."""
        ...

    def listen(self) -> AbstractAsyncContextManager[AsyncIterator[BoardEvent]]:
        """``async with board.listen() as events: async for event in events: ...``"""
        ...


class JobQueue(Protocol):
    async def push(self, refs: Sequence[JobRef]) -> None:
        """Make jobs available to workers, in order."""
        ...

    async def pop(self) -> JobRef:
        """Wait for the next available job and take it."""
        ...

    def depth(self) -> int:
        """How many jobs are waiting to be taken."""
        ...

"""The four ports the engine runs on. Adapters implement them; the engine imports no adapter.

- :class:`Storage` keeps executions and their jobs; one ``apply`` is one atomic write.
- :class:`JobQueue` hands ready jobs to workers.
- :class:`VideoProvider` does the work of one job attempt.
- :class:`Notifier` is told, once, of each execution that reaches a terminal status.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from engine.models import Change, Execution, JobRef, JobRequest, Notification, Video


@runtime_checkable
class VideoProvider(Protocol):
    async def run(self, request: JobRequest) -> Video:
        """Do one attempt of one job.

        Raise :class:`~engine.ProviderError` with ``retryable=False`` to fail the job at once; any
        other exception is retried under the engine's retry policy.
        """
        ...


@runtime_checkable
class Notifier(Protocol):
    async def notify(self, notification: Notification) -> None:
        """Take responsibility for telling the outside world that an execution ended."""
        ...


class Storage(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create(self, execution: Execution, fingerprint: str | None = None) -> Execution:
        """Store a new execution, atomically with its idempotency key if it has one.

        When ``execution.idempotency_key`` is set and ``(tenant, key)`` is already stored: with
        the same ``fingerprint`` return the stored execution unchanged; with another raise
        :class:`~engine.IdempotencyConflict`.
        """
        ...

    async def get(self, execution_id: str) -> Execution | None: ...

    async def apply(self, changes: Sequence[Change]) -> None:
        """Apply every change, all or nothing."""
        ...

    async def unfinished(self) -> list[Execution]:
        """Every execution whose status is ``pending`` or ``processing``, oldest first."""
        ...

    async def counts(self) -> dict[str, int]:
        """How many executions are in each status."""
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

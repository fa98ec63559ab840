"""How jobs reach workers: the seam between the :class:`~engine.Engine` and its kind of backend.

The engine's public API (validation, tenants, listeners, webhooks) is the same on every backend;
what differs is who decides that a job is ready and which process runs it:

- :class:`engine.local.LocalDispatch` (memory, SQLite): an in-process scheduler holds the live
  DAG; each unfinished execution is held by one engine under a lease, and all its jobs run
  there.
- :class:`engine.fleet.BoardDispatch` (PostgreSQL): the database is the scheduler; each ready
  job is a row that any engine serving its type claims, so one execution's jobs spread over
  processes and hosts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import anyio.abc

from engine.models import Execution, Progress, StatusReport


class Dispatch(Protocol):
    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Pick up the store's unfinished work and start the tasks that run jobs."""
        ...

    async def drain(self, grace: float) -> int:
        """Take no new job; wait up to ``grace`` seconds for the running ones to finish.
        Returns how many are still running."""
        ...

    async def stop(self) -> None:
        """Hand back what this engine holds, so another engine can take it at once."""
        ...

    async def admit(self, execution: Execution, fingerprint: str | None) -> str:
        """Store a new (validated) execution and make its ready jobs runnable; its id, or the
        id of the execution stored earlier under the same idempotency key."""
        ...

    def live_status(self, execution_id: str, tenant: str | None) -> StatusReport | None:
        """The status of an execution, if it can be told without reading the store."""
        ...

    def live_progress(self, execution_id: str) -> Progress | None:
        """The progress of an unfinished execution, if known without reading the store."""
        ...

    async def cancel(self, execution: Execution) -> None: ...

    async def resume(self, execution: Execution) -> None: ...

    async def hold(self, execution_id: str) -> None:
        """Take what a write to this (ended) execution's outbox needs (``redeliver``)."""
        ...

    async def sweep(self) -> None:
        """One round of housekeeping: leases, rescues, abandoned outbox events."""
        ...

    def stats(self) -> Mapping[str, int]:
        """Counters for ``metrics()``: attempts, retries, jobs_completed, jobs_failed,
        queue_depth, live_executions, live_jobs."""
        ...

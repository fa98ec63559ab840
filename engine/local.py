"""Local dispatch: the in-process scheduler runs every job of the executions this engine holds.

Used by the memory and SQLite backends. Every change goes through :meth:`LocalDispatch.commit`:
the scheduler decides a :class:`~engine.scheduler.Step`, the step is written to the store in one
``apply``, and only then acted on (ready jobs queued, retries timed, running jobs aborted,
listeners told, webhooks sent). Leases (:mod:`engine.leases`) decide which engine holds which
execution when several share one SQLite file.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping

import anyio.abc

from engine.clock import Clock
from engine.delivery import Delivery, notification_for
from engine.errors import InvalidState, LeaseLost
from engine.leases import Ownership
from engine.listeners import Listeners
from engine.models import Ended, Execution, Notification, Progress, StatusReport
from engine.ports import JobQueue, Storage, VideoProvider
from engine.retry import RetryPolicy
from engine.scheduler import Scheduler, Step
from engine.workers import Workers


class LocalDispatch:
    """See the module docstring."""

    def __init__(
        self,
        *,
        storage: Storage,
        queue: JobQueue,
        provider: VideoProvider,
        clock: Clock,
        owner: str,
        concurrency: int,
        retry: RetryPolicy,
        seed: int | None,
        lease: float,
        sweep_interval: float,
        listeners: Listeners,
        delivery: Delivery,
        on_ended: Callable[[Ended], None],
    ) -> None:
        self.storage = storage
        self.queue = queue
        self.clock = clock
        self.owner = owner
        self.concurrency = concurrency
        self.lease = lease
        self.sweep_interval = sweep_interval
        self.listeners = listeners
        self.delivery = delivery
        self._on_ended = on_ended
        self.scheduler = Scheduler(retry=retry, rng=random.Random(seed))
        self.workers = Workers(self.scheduler, queue, provider, clock, self.commit)
        self.ownership = Ownership(
            storage,
            self.scheduler,
            clock,
            owner,
            lease=lease,
            commit=self.commit,
            abort=self.workers.abort,
            send=delivery.send,
        )

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        await self.ownership.claim_and_admit()
        await self.ownership.claim_outbox()
        for _ in range(self.concurrency):
            task_group.start_soon(self.workers.work)
        task_group.start_soon(self.workers.timer)
        task_group.start_soon(self._sweeper)

    async def drain(self, grace: float) -> int:
        # An execution's jobs all run here; leaving hands the unfinished ones back whole.
        return 0

    async def stop(self) -> None:
        await self.ownership.release(self.delivery.cut_short())

    async def _sweeper(self) -> None:
        while True:
            await self.clock.sleep_until(self.clock.now() + self.sweep_interval)
            await self.sweep()

    async def sweep(self) -> None:
        await self.ownership.sweep()

    # --- what the engine's API asks ---------------------------------------------------------------

    async def admit(self, execution: Execution, fingerprint: str | None) -> str:
        now = execution.created_at
        stored = await self.storage.create(
            execution, fingerprint, owner=self.owner, lease_until=now + self.lease
        )
        if stored.id != execution.id:
            return stored.id
        base = None
        base_id = execution.base_execution_id
        if base_id is not None and not self.scheduler.is_live(base_id):
            base = await self.storage.get(base_id)
        await self.commit(self.scheduler.admit(stored, base, now))
        return stored.id

    def live_status(self, execution_id: str, tenant: str | None) -> StatusReport | None:
        return self.scheduler.live_status(execution_id, tenant)

    def live_progress(self, execution_id: str) -> Progress | None:
        return self.scheduler.progress(execution_id)

    async def cancel(self, execution: Execution) -> None:
        if not self.scheduler.is_live(execution.id):
            claimed = await self.ownership.claim_and_admit([execution.id])
            if not claimed:
                raise InvalidState(
                    f"execution {execution.id} is run by another engine; cancel it there"
                )
        await self.commit(self.scheduler.cancel(execution.id, self.clock.now()))

    async def resume(self, execution: Execution) -> None:
        base_id = execution.base_execution_id
        if base_id is not None and not self.scheduler.is_live(base_id):
            base = await self.storage.get(base_id)
            if base is not None and base.status in ("failed", "cancelled"):
                raise InvalidState(f"base execution {base.id} is {base.status}; resume it first")
        if not await self.ownership.claim_and_admit([execution.id], resume=True):
            raise InvalidState(f"execution {execution.id} could not be taken for resuming")

    async def hold(self, execution_id: str) -> None:
        await self.ownership.hold(execution_id)

    def stats(self) -> Mapping[str, int]:
        stats = self.scheduler.stats()
        return {
            "attempts": stats.attempts,
            "retries": stats.retries,
            "jobs_completed": stats.jobs_completed,
            "jobs_failed": stats.jobs_failed,
            "queue_depth": self.queue.depth(),
            "live_executions": stats.live_executions,
            "live_jobs": stats.live_jobs,
        }

    # --- the machinery ----------------------------------------------------------------------------

    async def commit(self, step: Step) -> None:
        """Write a step, then act on it: release ready jobs, schedule retries, abort, notify.

        An execution with a webhook that ends here gets its webhook event queued in the outbox in
        the same write, so the event survives a crash right after it.
        """
        ended = step.ended
        if ended:
            notifications = [notification_for(e) for e in ended]
            step.changes.extend(self.delivery.outbox_changes(notifications))
        if step.changes:
            try:
                await self.storage.apply(step.changes, owner=self.owner)
            except LeaseLost as lost:
                self.ownership.lose(lost.execution_ids)
                _without(step, lost.execution_ids)
                ended = step.ended
                if step.changes:
                    await self.storage.apply(step.changes, owner=self.owner)
        if ended:
            self.scheduler.written(step)
        if step.ready:
            await self.queue.push(step.ready)
        if step.retries:
            self.workers.retry_later(step.retries)
        if step.abort:
            self.workers.abort(step.abort)
        if step.progressed and self.listeners:
            self.listeners.progressed(step.progressed, self.scheduler.progress)
        if ended:
            by_execution = {n.execution_id: n for n in notifications}
            for e in ended:
                self._ended(e, by_execution[e.execution_id])

    def _ended(self, ended: Ended, notification: Notification) -> None:
        self._on_ended(ended)
        self.listeners.ended(ended)
        self.delivery.ended(ended, notification)


def _without(step: Step, execution_ids: Collection[str]) -> None:
    """Drop from ``step`` everything about executions this engine no longer holds."""
    step.changes = [c for c in step.changes if c.execution_id not in execution_ids]
    step.ready = [r for r in step.ready if r[0] not in execution_ids]
    step.retries = [r for r in step.retries if r[1][0] not in execution_ids]
    step.progressed = [e for e in step.progressed if e not in execution_ids]
    step.ended = [e for e in step.ended if e.execution_id not in execution_ids]

"""The Engine: the public API and lifecycle, over the scheduler and the four ports.

An :class:`Engine` owns one anyio task group (entered through an exit stack when the engine is
entered with ``async with``) that runs every task it starts: the workers and the retry timer
(:mod:`engine.workers`), the webhook delivery pool (:mod:`engine.delivery`) and the lease
sweeper (:mod:`engine.leases`). Listeners and user callbacks live in :mod:`engine.listeners`,
request normalisation in :mod:`engine.requests`, the defaults of the factories in
:mod:`engine.wiring`.

Every change goes through :meth:`Engine._commit`: the scheduler decides a :class:`Step`, the step
is written to the store in one ``apply``, and only then acted on (ready jobs queued, retries
timed, running jobs aborted, listeners told, webhooks sent).
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc

from engine import wiring
from engine.clock import Clock, SystemClock
from engine.delivery import Delivery, notification_for
from engine.errors import (
    ConfigError,
    EngineError,
    InvalidState,
    LeaseLost,
    PlanError,
    Problem,
    UnknownExecution,
)
from engine.leases import Ownership, new_owner_name
from engine.listeners import Listener, Listeners, StreamListener, call_soon
from engine.metrics import EngineMetrics, quantile
from engine.models import (
    TERMINAL,
    DeliveryAttempt,
    Ended,
    Execution,
    JobInfo,
    Notification,
    OutboxReset,
    Progress,
    StatusReport,
    Webhook,
)
from engine.plan import ExecutionPlan
from engine.ports import JobQueue, Notifier, Storage, VideoProvider
from engine.requests import event_id, fingerprint, new_execution_id, webhook_from
from engine.retry import RetryPolicy
from engine.scheduler import Scheduler, Step, job_infos
from engine.webhooks import payload_for
from engine.workers import Workers

log = logging.getLogger("engine")


class Engine:
    """Runs executions: ``async with Engine.in_memory(provider=...) as engine: ...``.

    Options: ``concurrency`` (workers, default 4), ``retry`` (a :class:`RetryPolicy`),
    ``clock`` (a :class:`~engine.clock.Clock`; tests pass a ``ManualClock``), ``seed`` (for
    the retry jitter), ``shutdown_grace`` (seconds that leaving ``async with`` waits for
    notifications still being delivered; default 5), ``delivery_concurrency`` (webhook
    deliveries at once; default 32), ``lease`` and ``sweep_interval``.

    Several engines may share one durable store (several processes on one SQLite file). Each
    unfinished execution is held by one engine under a lease of ``lease`` seconds (default 30),
    renewed every ``sweep_interval`` seconds (default 5) in one write for all it holds. Every
    write is fenced: once another engine holds an execution, this one's writes to it are refused
    and it stops working on it. An engine's sweep takes over executions whose lease expired, so
    the work of an engine that died is picked up within ``lease + sweep_interval`` seconds, and
    at once when the dead engine was a process on this host. A dependent execution whose base is
    run by another engine learns of the base's end at its engine's next sweep.
    """

    def __init__(
        self,
        *,
        storage: Storage,
        queue: JobQueue,
        provider: VideoProvider,
        notifier: Notifier | None = None,
        concurrency: int = 4,
        retry: RetryPolicy | None = None,
        clock: Clock | None = None,
        seed: int | None = None,
        shutdown_grace: float = 5.0,
        lease: float = 30.0,
        sweep_interval: float = 5.0,
        owner: str | None = None,
        delivery_concurrency: int = 32,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError("concurrency must be a positive integer")
        if not lease > 0:
            raise ConfigError("lease must be a positive number of seconds")
        if not 0 < sweep_interval < lease:
            raise ConfigError("sweep_interval must be positive and shorter than the lease")
        if (
            isinstance(delivery_concurrency, bool)
            or not isinstance(delivery_concurrency, int)
            or delivery_concurrency < 1
        ):
            raise ConfigError("delivery_concurrency must be a positive integer")
        self.lease = lease
        self.sweep_interval = sweep_interval
        #: This engine's name in the store (see :func:`engine.leases.new_owner_name`).
        self.owner = owner or new_owner_name()
        self.storage = storage
        self.queue = queue
        self.provider = provider
        self.notifier = notifier
        self.concurrency = concurrency
        self.clock: Clock = clock or SystemClock()
        self.shutdown_grace = shutdown_grace
        self.scheduler = Scheduler(retry=retry or RetryPolicy(), rng=random.Random(seed))
        self.listeners = Listeners()
        self.delivery = Delivery(storage, notifier, self.owner, concurrency=delivery_concurrency)
        self.workers = Workers(self.scheduler, queue, provider, self.clock, self._commit)
        self.ownership = Ownership(
            storage,
            self.scheduler,
            self.clock,
            self.owner,
            lease=lease,
            commit=self._commit,
            abort=self.workers.abort,
            send=self.delivery.send,
        )
        self._task_group: anyio.abc.TaskGroup | None = None
        self._stack: AsyncExitStack | None = None
        self._durations: deque[float] = deque(maxlen=10_000)
        self._valid_plans: dict[tuple[int, bool], tuple[ExecutionPlan, tuple[JobInfo, ...]]] = {}

    # --- factories --------------------------------------------------------------------------------

    @classmethod
    def in_memory(
        cls,
        provider: VideoProvider | None = None,
        notifier: Notifier | None = None,
        **options: Any,
    ) -> Engine:
        """An engine whose state lives in this process only.

        Defaults: ``adapters.memory.FakeVideoProvider`` (deterministic, results are not real
        videos) and ``adapters.http.HttpNotifier`` (signed webhooks).
        """
        return cls(
            storage=wiring.memory_storage(keep_journal=options.pop("keep_journal", False)),
            queue=wiring.memory_queue(),
            provider=provider or wiring.fake_provider(),
            notifier=notifier if notifier is not None else wiring.http_notifier(),
            **options,
        )

    @classmethod
    def sqlite(
        cls,
        path: str,
        provider: VideoProvider | None = None,
        notifier: Notifier | None = None,
        **options: Any,
    ) -> Engine:
        """An engine on one SQLite file: every acknowledged execution survives a crash.

        Defaults as for :meth:`in_memory`: the fake provider and ``HttpNotifier``. Store
        options: ``synchronous`` (``"FULL"``) and ``busy_timeout`` (seconds).
        """
        storage_options = {
            key: options.pop(key) for key in ("synchronous", "busy_timeout") if key in options
        }
        return cls(
            storage=wiring.sqlite_storage(path, **storage_options),
            queue=wiring.memory_queue(),
            provider=provider or wiring.fake_provider(),
            notifier=notifier if notifier is not None else wiring.http_notifier(),
            **options,
        )

    # --- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            await self.storage.open()
            stack.push_async_callback(self._close_storage)
            task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(task_group.cancel_scope.cancel)
            self._task_group = task_group
            await task_group.start(self.delivery.run)
            await self.ownership.claim_and_admit()
            await self.ownership.claim_outbox()
            for _ in range(self.concurrency):
                task_group.start_soon(self.workers.work)
            task_group.start_soon(self.workers.timer)
            task_group.start_soon(self._sweeper)
        except BaseException:
            self._task_group = None
            with anyio.CancelScope(shield=True):
                await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack = self._stack
        if stack is None:
            raise InvalidState("the engine is not running: use it as `async with engine:`")
        await self.delivery.drain(self.shutdown_grace)
        self._stack = None
        try:
            # The host's own exception, if any, propagates as it is, not wrapped in a group.
            await stack.aclose()
        finally:
            self._task_group = None
        return None

    async def _close_storage(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.ownership.release()
            finally:
                await self.storage.close()

    def _require_started(self) -> anyio.abc.TaskGroup:
        if self._task_group is None:
            raise InvalidState("the engine is not running: use it as `async with engine:`")
        return self._task_group

    async def _sweeper(self) -> None:
        while True:
            await self.clock.sleep_until(self.clock.now() + self.sweep_interval)
            await self.sweep()

    async def sweep(self) -> None:
        """One round of the lease sweeper (public so tests and hosts can force one)."""
        await self.ownership.sweep()

    # --- the public API ---------------------------------------------------------------------------

    async def submit(
        self,
        plan: ExecutionPlan | Mapping[str, Any],
        *,
        base_execution_id: str | None = None,
        webhook: Webhook | Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        tenant: str | None = None,
    ) -> str:
        """Validate and store an execution, start it, and return its id.

        With ``base_execution_id`` every root job waits for the base's final job and root
        transforms take its video. With ``idempotency_key`` (scoped per ``tenant``) the same key and
        the same request return the same execution; another request raises IdempotencyConflict.
        """
        self._require_started()
        if not isinstance(plan, ExecutionPlan):
            has_base = True if base_execution_id is not None else None
            plan = ExecutionPlan.from_json(plan, has_base=has_base)
        if plan.base_execution_id is not None:
            if base_execution_id not in (None, plan.base_execution_id):
                raise PlanError(
                    [Problem(None, "baseExecutionId", "differs from the plan's baseExecutionId")]
                )
            base_execution_id = plan.base_execution_id
        hook = webhook_from(webhook)
        jobs = self._checked_jobs(plan, has_base=base_execution_id is not None)
        base = None
        if base_execution_id is not None:
            base = await self.storage.get(base_execution_id)
            if base is None or base.tenant != tenant:
                raise UnknownExecution(base_execution_id)
        now = self.clock.now()
        execution = Execution(
            id=new_execution_id(),
            status="pending",
            jobs=jobs,
            created_at=now,
            base_execution_id=base_execution_id,
            webhook=hook,
            tenant=tenant,
            idempotency_key=idempotency_key,
        )
        request_fingerprint = None
        if idempotency_key is not None:
            request_fingerprint = fingerprint(plan, base_execution_id, hook)
        stored = await self.storage.create(
            execution, request_fingerprint, owner=self.owner, lease_until=now + self.lease
        )
        if stored.id != execution.id:
            return stored.id
        if base_execution_id is not None and not self.scheduler.is_live(base_execution_id):
            base = await self.storage.get(base_execution_id)
        await self._commit(self.scheduler.admit(stored, base, now))
        return stored.id

    def _checked_jobs(self, plan: ExecutionPlan, *, has_base: bool) -> tuple[JobInfo, ...]:
        """Validate a plan and make its (immutable) job records, remembering the last few: a
        host that submits one plan object many times pays for this once."""
        key = (id(plan), has_base)
        known = self._valid_plans.get(key)
        if known is not None and known[0] is plan:
            return known[1]
        plan.check(has_base=has_base)
        jobs = job_infos(plan.jobs)
        self._valid_plans[key] = (plan, jobs)
        if len(self._valid_plans) > 64:
            self._valid_plans.pop(next(iter(self._valid_plans)))
        return jobs

    async def get(self, execution_id: str, *, tenant: str | None = None) -> Execution:
        """The stored execution: its jobs with status, attempts and timings."""
        execution = await self.storage.get(execution_id)
        if execution is None or execution.tenant != tenant:
            raise UnknownExecution(execution_id)
        return execution

    async def status(self, execution_id: str, *, tenant: str | None = None) -> StatusReport:
        """The seed's status body for one execution.

        An execution this engine is running is answered from the scheduler's state, without a
        read of the store (status polling is the hottest read there is); any other from the store.
        """
        live = self.scheduler.live_status(execution_id, tenant)
        if live is not None:
            return live
        return (await self.get(execution_id, tenant=tenant)).status_report()

    async def cancel(self, execution_id: str, *, tenant: str | None = None) -> None:
        """Cancel an unfinished execution: its jobs stop, its dependents fail. Ended: no-op."""
        execution = await self.get(execution_id, tenant=tenant)
        if execution.status in TERMINAL:
            return
        if not self.scheduler.is_live(execution_id):
            claimed = await self.ownership.claim_and_admit([execution_id])
            if not claimed:
                raise InvalidState(
                    f"execution {execution_id} is run by another engine; cancel it there"
                )
        await self._commit(self.scheduler.cancel(execution_id, self.clock.now()))

    async def resume(self, execution_id: str, *, tenant: str | None = None) -> None:
        """Run a failed or cancelled execution again from where it stopped.

        Completed jobs are reused; failed and cancelled ones run again (same idempotency keys).
        """
        execution = await self.get(execution_id, tenant=tenant)
        if execution.status not in ("failed", "cancelled"):
            raise InvalidState(
                f"execution {execution_id} is {execution.status}; only failed or cancelled "
                "executions can be resumed"
            )
        base = None
        if execution.base_execution_id is not None:
            base = await self.storage.get(execution.base_execution_id)
            live = self.scheduler.is_live(execution.base_execution_id)
            if not live and base is not None and base.status in ("failed", "cancelled"):
                raise InvalidState(f"base execution {base.id} is {base.status}; resume it first")
        if not await self.ownership.claim_and_admit([execution_id], resume=True):
            raise InvalidState(f"execution {execution_id} could not be taken for resuming")

    async def watch(
        self, execution_id: str, *, tenant: str | None = None
    ) -> AsyncIterator[Progress]:
        """Progress of one execution as it happens, ending with its terminal progress."""
        send, receive = anyio.create_memory_object_stream[Progress | None](math.inf)
        listener = StreamListener(send)
        with send, receive:
            snapshot = await self.subscribe(execution_id, listener, tenant=tenant)
            try:
                if snapshot.status in TERMINAL:
                    yield snapshot.progress()
                    return
                live = self.scheduler.progress(execution_id)
                yield live if live is not None else snapshot.progress()
                async for progress in receive:
                    if progress is None:
                        return
                    yield progress
            finally:
                self.unsubscribe(execution_id, listener)

    async def redeliver(self, execution_id: str, *, tenant: str | None = None) -> None:
        """Send an ended execution's webhook again (same ``webhook-id``), e.g. after the
        receiver was fixed; the attempts are added to its delivery log."""
        execution = await self.get(execution_id, tenant=tenant)
        if execution.status not in TERMINAL or execution.webhook is None:
            raise InvalidState(f"execution {execution_id} has no webhook event to send")
        if self.notifier is None:
            raise InvalidState("this engine has no notifier to send webhooks with")
        event = event_id(execution_id, execution.generation)
        if self.delivery.is_sending(event):
            raise InvalidState(f"the webhook of execution {execution_id} is being delivered now")
        await self.ownership.hold(execution_id)
        await self.storage.apply([OutboxReset(event, execution_id)], owner=self.owner)
        self.delivery.send(
            Notification(
                event_id=event,
                execution_id=execution_id,
                status=execution.status,
                payload=payload_for(
                    execution_id, execution.status, execution.result, execution.error
                ),
                webhook=execution.webhook,
                tenant=execution.tenant,
                attempts_made=await self.delivery.attempts_made(execution, event),
            )
        )

    async def deliveries(
        self, execution_id: str, *, tenant: str | None = None
    ) -> list[DeliveryAttempt]:
        """Every attempt at delivering this execution's webhook, oldest first."""
        await self.get(execution_id, tenant=tenant)
        return await self.storage.deliveries(execution_id)

    async def metrics(self) -> EngineMetrics:
        counts = await self.storage.counts()
        ended = sum(counts.get(s, 0) for s in TERMINAL)
        stats = self.scheduler.stats()
        durations = sorted(self._durations)
        latencies = sorted(self.delivery.latency)
        return EngineMetrics(
            deliveries=await self.storage.outbox_counts(),
            delivery_latency_p50=quantile(latencies, 0.50),
            delivery_latency_p99=quantile(latencies, 0.99),
            executions=counts,
            success_rate=counts.get("completed", 0) / ended if ended else None,
            duration_p50=quantile(durations, 0.50),
            duration_p95=quantile(durations, 0.95),
            attempts=stats.attempts,
            retries=stats.retries,
            jobs_completed=stats.jobs_completed,
            jobs_failed=stats.jobs_failed,
            queue_depth=self.queue.depth(),
            live_executions=stats.live_executions,
            live_jobs=stats.live_jobs,
        )

    # --- events -----------------------------------------------------------------------------------

    async def subscribe(
        self, execution_id: str, listener: Listener, *, tenant: str | None = None
    ) -> Execution:
        """Send ``listener`` this execution's future events; returns the stored snapshot.

        If the snapshot is already terminal, no events will follow.
        """
        self.listeners.add(execution_id, listener)
        try:
            return await self.get(execution_id, tenant=tenant)
        except BaseException:
            self.listeners.remove(execution_id, listener)
            raise

    def unsubscribe(self, execution_id: str, listener: Listener) -> None:
        self.listeners.remove(execution_id, listener)

    def call_soon(self, callback: Callable[[Any], Any], argument: Any) -> None:
        """Run a user's callback (plain or async). Its exceptions are logged, never raised."""
        call_soon(self._require_started(), callback, argument)

    # --- the machinery ----------------------------------------------------------------------------

    async def _commit(self, step: Step) -> None:
        """Write a step, then act on it: release ready jobs, schedule retries, abort, notify.

        An execution with a webhook that ends here gets its webhook event queued in the outbox in
        the same write, so the event survives a crash right after it.
        """
        notifications = [notification_for(ended) for ended in step.ended] if step.ended else []
        if notifications:
            step.changes.extend(self.delivery.outbox_changes(notifications))
        if step.changes:
            try:
                await self.storage.apply(step.changes, owner=self.owner)
            except LeaseLost as lost:
                self.ownership.lose(lost.execution_ids)
                _without(step, lost.execution_ids)
                if step.changes:
                    await self.storage.apply(step.changes, owner=self.owner)
        if step.ended:
            self.scheduler.written(step)
        if step.ready:
            await self.queue.push(step.ready)
        if step.retries:
            self.workers.retry_later(step.retries)
        if step.abort:
            self.workers.abort(step.abort)
        if step.progressed and self.listeners:
            self.listeners.progressed(step.progressed, self.scheduler.progress)
        if step.ended:
            by_execution = {n.execution_id: n for n in notifications}
            for ended in step.ended:
                self._on_ended(ended, by_execution[ended.execution_id])

    def _on_ended(self, ended: Ended, notification: Notification) -> None:
        if ended.status == "completed":
            self._durations.append(ended.completed_at - ended.created_at)
        self.listeners.ended(ended)
        self.delivery.ended(ended, notification)


def _without(step: Step, execution_ids: Collection[str]) -> None:
    """Drop from ``step`` everything about executions this engine no longer holds."""
    step.changes = [c for c in step.changes if c.execution_id not in execution_ids]
    step.ready = [r for r in step.ready if r[0] not in execution_ids]
    step.retries = [r for r in step.retries if r[1][0] not in execution_ids]
    step.progressed = [e for e in step.progressed if e not in execution_ids]
    step.ended = [e for e in step.ended if e.execution_id not in execution_ids]


__all__ = ["Engine", "EngineError", "EngineMetrics", "Listener", "new_execution_id"]

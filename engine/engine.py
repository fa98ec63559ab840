"""The Engine: the scheduler, a pool of workers and the four ports, owned by one task group."""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import os
import random
import secrets
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from types import TracebackType
from typing import Any, Protocol, Self

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.clock import Clock, SystemClock
from engine.errors import (
    ConfigError,
    EngineError,
    InvalidState,
    LeaseLost,
    PlanError,
    Problem,
    ProviderError,
    UnknownExecution,
)
from engine.metrics import EngineMetrics, quantile
from engine.models import (
    TERMINAL,
    DeliveryAttempt,
    DeliveryRecorded,
    Execution,
    JobInfo,
    JobRef,
    Notification,
    OutboxAdd,
    OutboxDone,
    OutboxReset,
    OutboxStatus,
    Progress,
    StatusReport,
    Webhook,
)
from engine.plan import ExecutionPlan
from engine.ports import JobQueue, Notifier, Storage, VideoProvider
from engine.retry import RetryPolicy
from engine.scheduler import Ended, Scheduler, Step, job_infos
from engine.webhooks import payload_for

log = logging.getLogger("engine")


class Listener(Protocol):
    """Receives one execution's events, in order, after they are written."""

    def progress(self, progress: Progress) -> None: ...

    def ended(self, ended: Ended) -> None: ...


class Engine:
    """Runs executions: ``async with Engine.in_memory(provider=...) as engine: ...``.

    Options: ``concurrency`` (workers, default 4), ``retry`` (a :class:`RetryPolicy`),
    ``clock`` (a :class:`~engine.clock.Clock`; tests pass a ``ManualClock``), ``seed`` (for
    the retry jitter), ``shutdown_grace`` (seconds that leaving ``async with`` waits for
    notifications still being delivered; default 5), ``lease`` and ``sweep_interval``.

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
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError("concurrency must be a positive integer")
        if not lease > 0:
            raise ConfigError("lease must be a positive number of seconds")
        if not 0 < sweep_interval < lease:
            raise ConfigError("sweep_interval must be positive and shorter than the lease")
        self.lease = lease
        self.sweep_interval = sweep_interval
        #: This engine's name in the store: ``host:pid:random``, so an engine on the same host can
        #: tell that the process behind a lease is gone and take its work at once.
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.storage = storage
        self.queue = queue
        self.provider = provider
        self.notifier = notifier
        self.concurrency = concurrency
        self.clock: Clock = clock or SystemClock()
        self.scheduler = Scheduler(retry=retry or RetryPolicy(), rng=random.Random(seed))
        self._task_group: anyio.abc.TaskGroup | None = None
        self._running: dict[JobRef, anyio.CancelScope] = {}
        self._retry_heap: list[tuple[float, int, JobRef]] = []
        self._retry_seq = 0
        self._timer_wake = anyio.Event()
        self._listeners: dict[str, list[Listener]] = {}
        self._durations: deque[float] = deque(maxlen=10_000)
        self._delivery_latency: deque[float] = deque(maxlen=10_000)
        self._completed_at: dict[str, float] = {}
        self._sending: set[str] = set()  # webhook events being delivered now
        self._valid_plans: dict[tuple[int, bool], tuple[ExecutionPlan, tuple[JobInfo, ...]]] = {}
        self.shutdown_grace = shutdown_grace
        self._undelivered = 0
        self._delivered = anyio.Event()
        self._notify_send: MemoryObjectSendStream[Notification] | None = None
        self._notify_receive: MemoryObjectReceiveStream[Notification] | None = None

    # --- factories --------------------------------------------------------------------------------

    @classmethod
    def in_memory(
        cls,
        provider: VideoProvider | None = None,
        notifier: Notifier | None = None,
        **options: Any,
    ) -> Engine:
        """An engine whose state lives in this process only. Default provider: the fake one."""
        from adapters.memory import FakeVideoProvider, MemoryQueue, MemoryStorage

        return cls(
            storage=MemoryStorage(keep_journal=options.pop("keep_journal", False)),
            queue=MemoryQueue(),
            provider=provider or FakeVideoProvider(),
            notifier=notifier if notifier is not None else _default_notifier(),
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
        """An engine on one SQLite file: every acknowledged execution survives a crash."""
        from adapters.memory import FakeVideoProvider, MemoryQueue
        from adapters.sqlite import SqliteStorage

        storage_options = {
            key: options.pop(key) for key in ("synchronous", "busy_timeout") if key in options
        }
        return cls(
            storage=SqliteStorage(path, **storage_options),
            queue=MemoryQueue(),
            provider=provider or FakeVideoProvider(),
            notifier=notifier if notifier is not None else _default_notifier(),
            **options,
        )

    # --- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.storage.open()
        self._notify_send, self._notify_receive = anyio.create_memory_object_stream[Notification](
            math.inf
        )
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        try:
            await self._claim_and_admit()
            await self._claim_outbox()
            for _ in range(self.concurrency):
                task_group.start_soon(self._worker)
            task_group.start_soon(self._timer)
            task_group.start_soon(self._notify_loop)
            task_group.start_soon(self._sweeper)
        except BaseException:
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)
            await self.storage.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        task_group = self._require_started()
        with anyio.move_on_after(self.shutdown_grace, shield=True):
            while self._undelivered:
                await self._delivered.wait()
        task_group.cancel_scope.cancel()
        try:
            # The host's own exception, if any, propagates as it is, not wrapped in a group.
            await task_group.__aexit__(None, None, None)
            return None
        finally:
            self._task_group = None
            if self._notify_send is not None:
                self._notify_send.close()
            if self._notify_receive is not None:
                self._notify_receive.close()
            with anyio.CancelScope(shield=True):
                try:
                    await self.storage.release(self.owner)
                finally:
                    await self.storage.close()

    def _require_started(self) -> anyio.abc.TaskGroup:
        if self._task_group is None:
            raise InvalidState("the engine is not running: use it as `async with engine:`")
        return self._task_group

    async def _claim_and_admit(self, ids: list[str] | None = None, *, resume: bool = False) -> int:
        """Take claimable executions from the store and run them; returns how many.

        At start and on every sweep: unheld ones, ones whose lease expired, ones held by an
        engine that was a process on this host and is gone. Bases come before dependents.
        """
        now = self.clock.now()
        dead = _dead_local_holders(await self.storage.holders(), self.owner)
        claimed = await self.storage.claim(
            self.owner, now=now, lease_until=now + self.lease, ids=ids, dead_owners=dead
        )
        for execution in claimed:
            if self.scheduler.is_live(execution.id):
                continue
            if execution.status in TERMINAL and not resume:
                continue  # taken only to be held (cancel of one that just ended)
            base_id = execution.base_execution_id
            base = None
            if base_id is not None and not self.scheduler.is_live(base_id):
                base = await self.storage.get(base_id)
            step = self.scheduler.admit(execution, base, self.clock.now(), resume=resume)
            await self._commit(step)
        if claimed and not resume:
            log.info("%s took %d unfinished executions", self.owner, len(claimed))
        return len(claimed)

    async def _sweeper(self) -> None:
        """Renew leases, notice lost ones, take over abandoned work, poll external bases."""
        while True:
            await self.clock.sleep_until(self.clock.now() + self.sweep_interval)
            await self.sweep()

    async def sweep(self) -> None:
        """One round of the sweeper (public so tests and hosts can force one)."""
        held = await self.storage.renew(self.owner, lease_until=self.clock.now() + self.lease)
        lost = [i for i in self.scheduler.live_executions() if i not in held]
        if lost:
            self._lose(lost)
        await self._claim_and_admit()
        await self._claim_outbox()
        for base_id in list(self.scheduler.external):
            base = await self.storage.get(base_id)
            if base is not None and base.status in TERMINAL:
                step = self.scheduler.base_ended(
                    base_id, base.status, base.result, self.clock.now()
                )
                await self._commit(step)

    async def _claim_outbox(self) -> None:
        """Send the pending webhook events that no live engine is sending (after a crash)."""
        now = self.clock.now()
        dead = _dead_local_holders(await self.storage.holders(), self.owner)
        for notification in await self.storage.claim_outbox(
            self.owner, now=now, lease_until=now + self.lease, dead_owners=dead
        ):
            self._send(notification)

    def _lose(self, execution_ids: Collection[str]) -> None:
        """Another engine holds these now: stop working on them."""
        log.warning("%s lost its lease on %s", self.owner, ", ".join(sorted(execution_ids)))
        for ref in self.scheduler.drop(execution_ids):
            scope = self._running.get(ref)
            if scope is not None:
                scope.cancel()

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
        hook = _webhook(webhook)
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
        fingerprint = None
        if idempotency_key is not None:
            fingerprint = _fingerprint(plan, base_execution_id, hook)
        stored = await self.storage.create(
            execution, fingerprint, owner=self.owner, lease_until=now + self.lease
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
            claimed = await self._claim_and_admit([execution_id])
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
        if not await self._claim_and_admit([execution_id], resume=True):
            raise InvalidState(f"execution {execution_id} could not be taken for resuming")

    async def watch(
        self, execution_id: str, *, tenant: str | None = None
    ) -> AsyncIterator[Progress]:
        """Progress of one execution as it happens, ending with its terminal progress."""
        send, receive = anyio.create_memory_object_stream[Progress | None](math.inf)
        listener = _StreamListener(send)
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
        event_id = f"evt_{execution_id}_{execution.generation}"
        if event_id in self._sending:
            raise InvalidState(f"the webhook of execution {execution_id} is being delivered now")
        now = self.clock.now()
        # Hold the ended execution, so this engine's writes to its outbox are accepted.
        await self.storage.claim(
            self.owner, now=now, lease_until=now + self.lease, ids=[execution_id]
        )
        await self.storage.apply([OutboxReset(event_id, execution_id)], owner=self.owner)
        made = len(
            [d for d in await self.storage.deliveries(execution_id) if d.event_id == event_id]
        )
        self._send(
            Notification(
                event_id=event_id,
                execution_id=execution_id,
                status=execution.status,
                payload=payload_for(
                    execution_id, execution.status, execution.result, execution.error
                ),
                webhook=execution.webhook,
                tenant=execution.tenant,
                attempts_made=made,
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
        latencies = sorted(self._delivery_latency)
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
        self._listeners.setdefault(execution_id, []).append(listener)
        try:
            return await self.get(execution_id, tenant=tenant)
        except BaseException:
            self.unsubscribe(execution_id, listener)
            raise

    def unsubscribe(self, execution_id: str, listener: Listener) -> None:
        listeners = self._listeners.get(execution_id)
        if listeners and listener in listeners:
            listeners.remove(listener)
            if not listeners:
                del self._listeners[execution_id]

    def call_soon(self, callback: Callable[[Any], Any], argument: Any) -> None:
        """Run a user's callback (plain or async). Its exceptions are logged, never raised."""
        try:
            outcome = callback(argument)
        except Exception:
            log.exception("callback %r raised", callback)
            return
        if isinstance(outcome, Awaitable):
            self._require_started().start_soon(_await_logged, outcome, callback)

    # --- the machinery ----------------------------------------------------------------------------

    async def _commit(self, step: Step) -> None:
        """Write a step, then act on it: release ready jobs, schedule retries, abort, notify.

        An execution with a webhook that ends here gets its webhook event queued in the outbox in
        the same write, so the event survives a crash right after it.
        """
        notifications = [self._notification(ended) for ended in step.ended] if step.ended else []
        if notifications and self.notifier is not None:
            step.changes.extend(
                OutboxAdd(n.event_id, n.execution_id, n.status, n.payload)
                for n in notifications
                if n.webhook is not None
            )
        if step.changes:
            try:
                await self.storage.apply(step.changes, owner=self.owner)
            except LeaseLost as lost:
                self._lose(lost.execution_ids)
                self._without(step, lost.execution_ids)
                if step.changes:
                    await self.storage.apply(step.changes, owner=self.owner)
        if step.ended:
            self.scheduler.written(step)
        if step.ready:
            await self.queue.push(step.ready)
        for due, ref in step.retries:
            self._retry_seq += 1
            heapq.heappush(self._retry_heap, (due, self._retry_seq, ref))
            self._timer_wake.set()
        for ref in step.abort:
            scope = self._running.get(ref)
            if scope is not None:
                scope.cancel()
        listeners = self._listeners
        if listeners:
            for execution_id in dict.fromkeys(step.progressed):
                targets = listeners.get(execution_id)
                progress = self.scheduler.progress(execution_id) if targets else None
                if targets and progress is not None:
                    for listener in list(targets):
                        listener.progress(progress)
        if step.ended:
            by_execution = {n.execution_id: n for n in notifications}
            for ended in step.ended:
                self._on_ended(ended, by_execution[ended.execution_id])

    @staticmethod
    def _without(step: Step, execution_ids: Collection[str]) -> None:
        """Drop from ``step`` everything about executions this engine no longer holds."""
        step.changes = [c for c in step.changes if c.execution_id not in execution_ids]
        step.ready = [r for r in step.ready if r[0] not in execution_ids]
        step.retries = [r for r in step.retries if r[1][0] not in execution_ids]
        step.progressed = [e for e in step.progressed if e not in execution_ids]
        step.ended = [e for e in step.ended if e.execution_id not in execution_ids]

    @staticmethod
    def _notification(ended: Ended) -> Notification:
        return Notification(
            event_id=f"evt_{ended.execution_id}_{ended.generation}",
            execution_id=ended.execution_id,
            status=ended.status,
            payload=payload_for(ended.execution_id, ended.status, ended.result, ended.error),
            webhook=ended.webhook,
            tenant=ended.tenant,
        )

    def _on_ended(self, ended: Ended, notification: Notification) -> None:
        if ended.status == "completed":
            self._durations.append(ended.completed_at - ended.created_at)
            self._completed_at[ended.execution_id] = ended.completed_at
        for listener in self._listeners.pop(ended.execution_id, []):
            listener.progress(ended.progress)
            listener.ended(ended)
        self._send(notification)

    def _send(self, notification: Notification) -> None:
        if self.notifier is not None and self._notify_send is not None:
            self._undelivered += 1
            self._notify_send.send_nowait(notification)

    async def _worker(self) -> None:
        queue = self.queue
        while True:
            ref = await queue.pop()
            await self._run(ref)

    async def _run(self, ref: JobRef) -> None:
        started = self.scheduler.start(ref, self.clock.now())
        if started is None:
            return
        request, step = started
        await self._commit(step)
        if not self.scheduler.holds(ref, request.attempt):
            return  # the execution ended (cancelled, failed) while the start was being written
        outcome: Exception | None = None
        with anyio.CancelScope() as scope:
            self._running[ref] = scope
            try:
                video = await self.provider.run(request)
            except Exception as exc:  # every provider failure is recorded, none escapes
                outcome = exc
            finally:
                del self._running[ref]
        if scope.cancelled_caught:
            return
        now = self.clock.now()
        if outcome is None:
            step = self.scheduler.complete(ref, request.attempt, video, now)
        else:
            retryable = not (isinstance(outcome, ProviderError) and not outcome.retryable)
            if not isinstance(outcome, ProviderError):
                log.warning(
                    "job %s/%s attempt %d raised %r",
                    ref[0],
                    ref[1],
                    request.attempt,
                    outcome,
                    exc_info=outcome,
                )
            step = self.scheduler.fail(
                ref, request.attempt, _describe(outcome), retryable=retryable, now=now
            )
        await self._commit(step)

    async def _timer(self) -> None:
        """Release retries when they fall due on the engine's clock."""
        heap = self._retry_heap
        while True:
            if not heap:
                await self._timer_wake.wait()
                self._timer_wake = anyio.Event()
                continue
            due = heap[0][0]
            async with anyio.create_task_group() as race:
                race.start_soon(_sleep_then_cancel, self.clock, due, race.cancel_scope)
                await self._timer_wake.wait()
                race.cancel_scope.cancel()
            if self._timer_wake.is_set():
                self._timer_wake = anyio.Event()
            now = self.clock.now()
            ready: list[JobRef] = []
            while heap and heap[0][0] <= now:
                ready.append(heapq.heappop(heap)[2])
            if ready:
                await self.queue.push(ready)

    async def _notify_loop(self) -> None:
        assert self._notify_receive is not None
        task_group = self._require_started()
        async for notification in self._notify_receive:
            task_group.start_soon(self._deliver, notification)

    async def _deliver(self, notification: Notification) -> None:
        """Hand one event to the notifier; for a webhook, keep its delivery log in the store."""
        assert self.notifier is not None
        durable = notification.webhook is not None
        last: list[DeliveryAttempt] = []
        self._sending.add(notification.event_id)

        async def record(attempt: DeliveryAttempt) -> None:
            await self.storage.apply([DeliveryRecorded(attempt)], owner=self.owner)
            last[:] = [attempt]
            if attempt.outcome != "retry":
                self._sending.discard(notification.event_id)  # a redeliver may start now
            if attempt.outcome == "delivered":
                ended_at = self._completed_at.pop(attempt.execution_id, None)
                if ended_at is not None:
                    self._delivery_latency.append(attempt.at + attempt.latency - ended_at)

        try:
            await self.notifier.notify(notification, record if durable else None)
            if durable and (not last or last[0].outcome != "retry"):
                # A delivery cut short (its last attempt wanted a retry) stays pending, to be
                # sent again; otherwise it is done: delivered, given up, or taken by a notifier.
                status: OutboxStatus = "notified"
                if last:
                    status = "delivered" if last[0].outcome == "delivered" else "failed"
                done = OutboxDone(notification.event_id, notification.execution_id, status)
                await self.storage.apply([done], owner=self.owner)
        except LeaseLost:
            log.warning("another engine took over delivering %s", notification.event_id)
        except Exception:
            log.exception("notifier failed for execution %s", notification.execution_id)
        finally:
            self._sending.discard(notification.event_id)
            self._undelivered -= 1
            self._delivered.set()
            self._delivered = anyio.Event()


class _StreamListener:
    def __init__(self, send: MemoryObjectSendStream[Progress | None]) -> None:
        self._send = send

    def progress(self, progress: Progress) -> None:
        self._send.send_nowait(progress)

    def ended(self, ended: Ended) -> None:
        self._send.send_nowait(None)


async def _sleep_then_cancel(clock: Clock, deadline: float, scope: anyio.CancelScope) -> None:
    await clock.sleep_until(deadline)
    scope.cancel()


async def _await_logged(awaitable: Awaitable[Any], callback: object) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("callback %r raised", callback)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return text if isinstance(exc, ProviderError) and text else f"{type(exc).__name__}: {text}"


def _webhook(webhook: Webhook | Mapping[str, Any] | None) -> Webhook | None:
    if webhook is None or isinstance(webhook, Webhook):
        hook = webhook
    else:
        url, secret = webhook.get("url"), webhook.get("secret")
        if not isinstance(url, str) or (secret is not None and not isinstance(secret, str)):
            raise PlanError([Problem(None, "webhook", "expected {url: string, secret?: string}")])
        hook = Webhook(url, secret)
    if hook is not None:
        from urllib.parse import urlsplit

        parts = urlsplit(hook.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PlanError([Problem(None, "webhook.url", "must be an absolute http or https URL")])
        if hook.secret is not None and not hook.secret:
            raise PlanError([Problem(None, "webhook.secret", "must not be empty")])
    return hook


def _fingerprint(plan: ExecutionPlan, base: str | None, webhook: Webhook | None) -> str:
    digest = hashlib.sha256(plan.fingerprint().encode())
    digest.update(f"|{base}|{webhook.url if webhook else ''}|".encode())
    if webhook is not None and webhook.secret is not None:
        digest.update(hashlib.sha256(webhook.secret.encode()).digest())
    return digest.hexdigest()


def _dead_local_holders(holders: Mapping[str, float], me: str) -> list[str]:
    """Holders that were processes on this host and no longer run."""
    host = socket.gethostname()
    dead = []
    for holder in holders:
        name, _, rest = holder.partition(":")
        pid_text = rest.partition(":")[0]
        if holder == me or name != host or not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.append(holder)
        except PermissionError:
            continue
    return dead


def new_execution_id() -> str:
    return f"exec_{secrets.token_hex(10)}"


def _default_notifier() -> Notifier:
    from adapters.http import HttpNotifier

    return HttpNotifier()


__all__ = ["Engine", "EngineMetrics", "Listener", "EngineError"]

"""The Engine: the public API and lifecycle, the same on every backend.

An :class:`Engine` validates what it is asked (plans, webhooks, tenants), tells listeners and
the notifier of endings, and leaves to its :class:`~engine.dispatch.Dispatch` who runs which job:
the in-process scheduler (:mod:`engine.local`, memory and SQLite) or the database
(:mod:`engine.fleet`, PostgreSQL). It owns one anyio task group, entered through an exit stack
with ``async with``, that runs every task it starts: the webhook delivery pool
(:mod:`engine.delivery`) and the dispatch's workers and sweeper. Listeners and user callbacks
live in :mod:`engine.listeners`, request normalisation in :mod:`engine.requests`, the defaults of
the factories in :mod:`engine.wiring`.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc

from engine import wiring
from engine.catalogue import JOB_TYPES
from engine.clock import Clock, SystemClock
from engine.delivery import Delivery
from engine.dispatch import Dispatch
from engine.errors import (
    ConfigError,
    EngineError,
    InvalidState,
    PlanError,
    Problem,
    UnknownExecution,
)
from engine.fleet import BoardDispatch
from engine.leases import new_owner_name
from engine.listeners import Listener, Listeners, StreamListener, call_soon
from engine.local import LocalDispatch
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
from engine.ports import JobBoard, JobQueue, Notifier, Storage, VideoProvider
from engine.requests import event_id, fingerprint, new_execution_id, webhook_from
from engine.retry import RetryPolicy
from engine.scheduler import Scheduler, job_infos
from engine.webhooks import payload_for

log = logging.getLogger("engine")


class Engine:
    """Runs executions: ``async with Engine.in_memory(provider=...) as engine: ...``.

    Options: ``concurrency`` (workers, default 4), ``retry`` (a :class:`RetryPolicy`),
    ``clock`` (a :class:`~engine.clock.Clock`; tests pass a ``ManualClock``), ``seed`` (for
    the retry jitter), ``shutdown_grace`` (seconds that leaving ``async with`` waits for
    webhooks still being delivered; default 5), ``delivery_concurrency`` (webhook deliveries at
    once; default 32), ``lease`` and ``sweep_interval``.

    Leaving ``async with`` on a durable store (SQLite, PostgreSQL) does not wait for a webhook
    whose receiver failed and whose retry is due later: its event stays ``pending`` in the outbox
    and is sent again when an engine on the store starts (its attempts numbered on). In memory
    there is no outbox to come back to, so leaving waits up to ``shutdown_grace`` for it.

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
        storage: Storage | JobBoard,
        queue: JobQueue | None = None,
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
        board: JobBoard | None = None,
        job_types: Collection[str] | None = None,
        limits: Mapping[str, int] | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        least = 0 if board is not None else 1
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < least:
            raise ConfigError(
                "concurrency must be a whole number >= 0 (0: an API node that runs no job)"
                if board is not None
                else "concurrency must be a positive integer"
            )
        if (job_types is not None or limits is not None) and board is None:
            raise ConfigError("job_types and limits need a shared job board (Engine.postgres)")
        if job_types is not None:
            unknown = sorted(set(job_types) - set(JOB_TYPES))
            if isinstance(job_types, str) or unknown:
                raise ConfigError(
                    f"job_types must be a collection of {', '.join(JOB_TYPES)}; "
                    f"unknown: {', '.join(unknown) if unknown else repr(job_types)}"
                )
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
        self.listeners = Listeners()
        self.delivery = Delivery(storage, notifier, self.owner, concurrency=delivery_concurrency)
        self._local: LocalDispatch | None = None
        dispatch: Dispatch
        if board is not None:
            dispatch = BoardDispatch(
                board=board,
                provider=provider,
                clock=self.clock,
                owner=self.owner,
                concurrency=concurrency,
                retry=retry or RetryPolicy(),
                seed=seed,
                lease=lease,
                sweep_interval=sweep_interval,
                listeners=self.listeners,
                delivery=self.delivery,
                on_ended=self._on_ended,
                job_types=job_types,
                limits=limits,
                poll_interval=poll_interval,
            )
        else:
            if queue is None:
                raise ConfigError("an engine on a local store needs a queue")
            if not isinstance(storage, Storage):
                raise ConfigError("an engine without a job board needs a Storage")
            self._local = LocalDispatch(
                storage=storage,
                queue=queue,
                provider=provider,
                clock=self.clock,
                owner=self.owner,
                concurrency=concurrency,
                retry=retry or RetryPolicy(),
                seed=seed,
                lease=lease,
                sweep_interval=sweep_interval,
                listeners=self.listeners,
                delivery=self.delivery,
                on_ended=self._on_ended,
            )
            dispatch = self._local
        self.dispatch: Dispatch = dispatch
        self._task_group: anyio.abc.TaskGroup | None = None
        self._stack: AsyncExitStack | None = None
        self._durations: deque[float] = deque(maxlen=10_000)
        self._valid_plans: dict[tuple[int, bool], tuple[ExecutionPlan, tuple[JobInfo, ...]]] = {}

    @property
    def scheduler(self) -> Scheduler:
        """The in-process scheduler (memory and SQLite backends)."""
        if self._local is None:
            raise InvalidState("this engine's jobs are dispatched by its store, not a scheduler")
        return self._local.scheduler

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

    @classmethod
    def postgres(
        cls,
        dsn: str,
        provider: VideoProvider | None = None,
        notifier: Notifier | None = None,
        *,
        schema: str = "videoflow",
        job_types: Collection[str] | None = None,
        limits: Mapping[str, int] | None = None,
        **options: Any,
    ) -> Engine:
        """An engine on a PostgreSQL database shared with other engines, on any hosts.

        The database dispatches jobs: any engine whose ``job_types`` include a job's wire type
        may run it (``None``: every type), whoever submitted it. ``concurrency=0`` makes an
        engine that submits, reads, cancels and resumes but runs no job (an API node).
        ``limits={"generate": 4}`` caps the jobs of a type running at once across every engine
        on the database. Pool options: ``pool_min``, ``pool_max``. Defaults as for
        :meth:`in_memory`: the fake provider and ``HttpNotifier``.
        """
        pool = {key: options.pop(key) for key in ("pool_min", "pool_max") if key in options}
        board = wiring.postgres_board(dsn, schema=schema, **pool)
        return cls(
            storage=board,
            board=board,
            provider=provider or wiring.fake_provider(),
            notifier=notifier if notifier is not None else wiring.http_notifier(),
            job_types=job_types,
            limits=limits,
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
            await self.dispatch.start(task_group)
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

    async def drain(self, grace: float = 30.0) -> int:
        """Stop taking new jobs and wait up to ``grace`` seconds for the running ones (a
        graceful stop: what is still running when the engine is left is handed back). Returns
        how many jobs are still running. On a local store (memory, SQLite) jobs are not taken
        one by one, so this returns at once."""
        self._require_started()
        return await self.dispatch.drain(grace)

    async def _close_storage(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.dispatch.stop()
            finally:
                await self.storage.close()

    def _require_started(self) -> anyio.abc.TaskGroup:
        if self._task_group is None:
            raise InvalidState("the engine is not running: use it as `async with engine:`")
        return self._task_group

    async def sweep(self) -> None:
        """One round of the sweeper: leases, take-overs, rescues (tests and hosts may force one)."""
        await self.dispatch.sweep()

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
        given = isinstance(plan, ExecutionPlan)
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
        jobs = self._checked_jobs(plan, has_base=base_execution_id is not None, remember=given)
        if base_execution_id is not None:
            base = await self.storage.get(base_execution_id)
            if base is None or base.tenant != tenant:
                raise UnknownExecution(base_execution_id, field="base_execution_id")
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
        return await self.dispatch.admit(execution, request_fingerprint)

    def _checked_jobs(
        self, plan: ExecutionPlan, *, has_base: bool, remember: bool
    ) -> tuple[JobInfo, ...]:
        """Validate a plan and make its (immutable) job records, remembering the last few plan
        objects a host passed: a host that submits one plan object many times pays for this
        once. Plans parsed from JSON here are not remembered: no one can pass them again, and
        64 large ones (an HTTP server's) would hold hundreds of megabytes."""
        key = (id(plan), has_base)
        known = self._valid_plans.get(key)
        if known is not None and known[0] is plan:
            return known[1]
        plan.check(has_base=has_base)
        jobs = job_infos(plan.jobs)
        if not remember:
            return jobs
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
        live = self.dispatch.live_status(execution_id, tenant)
        if live is not None:
            return live
        return (await self.get(execution_id, tenant=tenant)).status_report()

    async def cancel(self, execution_id: str, *, tenant: str | None = None) -> None:
        """Cancel an unfinished execution: its jobs stop, its dependents fail. Ended: no-op."""
        execution = await self.get(execution_id, tenant=tenant)
        if execution.status in TERMINAL:
            return
        await self.dispatch.cancel(execution)

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
        await self.dispatch.resume(execution)

    async def watch(
        self, execution_id: str, *, tenant: str | None = None
    ) -> AsyncIterator[Progress]:
        """Progress of one execution as it happens, ending with its terminal progress; each
        change once (a progress equal to the one before is not repeated)."""
        send, receive = anyio.create_memory_object_stream[Progress | None](math.inf)
        listener = StreamListener(send)
        with send, receive:
            snapshot = await self.subscribe(execution_id, listener, tenant=tenant)
            try:
                if snapshot.status in TERMINAL:
                    yield snapshot.progress()
                    return
                live = self.dispatch.live_progress(execution_id)
                last = live if live is not None else snapshot.progress()
                yield last
                async for progress in receive:
                    if progress is None:
                        return
                    if progress != last:  # several jobs starting at once change nothing shown
                        last = progress
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
        await self.dispatch.hold(execution_id)
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

    async def metrics(self, *, tenant: str | None = None) -> EngineMetrics:
        """The store's executions by status and their success rate (of ``tenant`` only, if
        given), with this process's counters (which are never per tenant)."""
        counts = await self.storage.counts(tenant=tenant)
        ended = sum(counts.get(s, 0) for s in TERMINAL)
        stats = self.dispatch.stats()
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
            attempts=stats["attempts"],
            retries=stats["retries"],
            jobs_completed=stats["jobs_completed"],
            jobs_failed=stats["jobs_failed"],
            queue_depth=stats["queue_depth"],
            live_executions=stats["live_executions"],
            live_jobs=stats["live_jobs"],
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

    # --- endings --------------------------------------------------------------------------------

    def _on_ended(self, ended: Ended) -> None:
        """An ending was written (the dispatch tells its listeners and the notifier next)."""
        if ended.status == "completed":
            self._durations.append(ended.completed_at - ended.created_at)


__all__ = ["Engine", "EngineError", "EngineMetrics", "Listener", "new_execution_id"]

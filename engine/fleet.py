"""Board dispatch: the database decides readiness; any engine serving a job's type runs it.

Used by the PostgreSQL backend (``Engine.postgres``). This engine:

- registers itself (its id and the job types it runs) and heartbeats once per
  ``heartbeat_interval``: one write for everything it runs, not one per job;
- claims ready jobs in batches, as many as it has free workers (``concurrency``; ``0`` for an
  API node that runs no job), sleeping until a ``ready`` wake-up (LISTEN/NOTIFY) or, as the
  backstop when a wake-up is lost, ``poll_interval`` seconds;
- runs each claimed job in its own cancel scope and reports the outcome fenced on the claim's
  token: a result the database refuses (the job was rescued, cancelled, handed back) is dropped
  and counted (``stale_results``). A report that cannot reach the database is retried until it
  is written or refused, so nothing a provider finished is lost while the server is away;
- stops a running job when a ``cancel`` wake-up names its execution, and rescues the jobs of
  engines whose lease expired, on every sweep.

Retries follow the engine's :class:`~engine.retry.RetryPolicy`: a failed attempt goes back to the
board ``ready`` at its retry time. Webhook events are written by the board in the transaction
that ends an execution; this engine takes them (``claim_outbox``) right after an ending it
wrote, and any engine takes abandoned ones on its sweep.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import anyio
import anyio.abc

from engine.clock import Clock
from engine.delivery import Delivery, notification_for
from engine.errors import ConfigError, ProviderError, StorageError
from engine.listeners import Listeners
from engine.models import (
    Claim,
    Ended,
    Ending,
    Execution,
    JobRef,
    Progress,
    StatusReport,
    Video,
)
from engine.ports import JobBoard, VideoProvider
from engine.retry import RetryPolicy
from engine.workers import describe

log = logging.getLogger("engine")

#: Seconds between tries to write an outcome while the database cannot be reached.
_REPORT_BACKOFF = (0.05, 0.2, 0.5, 1.0, 2.0)

#: The longest the claimer waits for outcomes being written before it claims anyway (seconds).
_DEFER_CLAIM = 0.05


class BoardDispatch:
    """See the module docstring."""

    def __init__(
        self,
        *,
        board: JobBoard,
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
        job_types: Collection[str] | None = None,
        limits: Mapping[str, int] | None = None,
        poll_interval: float = 1.0,
        claim_batch: int = 64,
    ) -> None:
        if not poll_interval > 0:
            raise ConfigError("poll_interval must be a positive number of seconds")
        for kind, cap in (limits or {}).items():
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
                raise ConfigError(f"limits[{kind!r}] must be a whole number >= 0, got {cap!r}")
        self.board = board
        self.provider = provider
        self.clock = clock
        self.owner = owner
        self.concurrency = concurrency
        self.retry = retry
        self.rng = random.Random(seed)
        self.lease = lease
        self.sweep_interval = sweep_interval
        self.listeners = listeners
        self.delivery = delivery
        self._on_ended = on_ended
        self.job_types = None if job_types is None else tuple(sorted(set(job_types)))
        self.limits = dict(limits or {})
        self.poll_interval = poll_interval
        self.claim_batch = claim_batch
        self._task_group: anyio.abc.TaskGroup | None = None
        self._running: dict[JobRef, anyio.CancelScope] = {}
        self._wake = anyio.Event()
        self._reporting = 0  # jobs whose provider call returned, outcome not yet written
        self._reported = anyio.Event()  # set when _reporting falls to 0
        self._counters = {
            "attempts": 0,
            "retries": 0,
            "jobs_completed": 0,
            "jobs_failed": 0,
            "stale_results": 0,
        }
        self._ready_jobs = 0
        self._progress: dict[str, Progress] = {}
        self._draining = False
        self._idle = anyio.Event()

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        self._task_group = task_group
        now = self.clock.now()
        if self.limits:
            await self.board.set_limits(self.limits)
        await self.board.register(self.owner, self.job_types, now=now, lease_until=now + self.lease)
        await self._housekeeping()
        await task_group.start(self._listen)
        task_group.start_soon(self._sweeper)
        if self.concurrency:
            task_group.start_soon(self._claimer)
        task_group.start_soon(self._watch_progress)

    async def drain(self, grace: float) -> int:
        self._draining = True
        self._wake.set()
        with anyio.move_on_after(grace):
            while self._running:
                self._idle = anyio.Event()
                await self._idle.wait()
        return len(self._running)

    async def stop(self) -> None:
        handed_back = await self.board.release(self.owner)
        if handed_back:
            log.info("%s handed back %d jobs", self.owner, handed_back)

    async def _sweeper(self) -> None:
        while True:
            await self.clock.sleep_until(self.clock.now() + self.sweep_interval)
            try:
                await self.sweep()
            except StorageError as exc:
                log.warning("%s: sweep failed, will retry: %s", self.owner, exc)

    async def sweep(self) -> None:
        now = self.clock.now()
        if not await self.board.heartbeat(self.owner, now=now, lease_until=now + self.lease):
            # Presumed dead (a long pause, the server away): our jobs went to other engines and
            # their outcomes will be refused. Stop them and go on as a new registration.
            log.warning("%s was presumed dead; stopping its jobs and registering again", self.owner)
            self._abort(list(self._running))
            await self.board.register(
                self.owner, self.job_types, now=now, lease_until=now + self.lease
            )
        await self._housekeeping()

    async def _housekeeping(self) -> None:
        now = self.clock.now()
        rescued = await self.board.rescue(now=now)
        if rescued:
            log.info("%s rescued %d jobs of engines that stopped heartbeating", self.owner, rescued)
            self._wake.set()
        await self._take_outbox()
        self._ready_jobs = (await self.board.job_counts()).get("ready", 0)

    async def _take_outbox(self) -> None:
        now = self.clock.now()
        for notification in await self.board.claim_outbox(
            self.owner, now=now, lease_until=now + self.lease
        ):
            self.delivery.send(notification)

    # --- wake-ups ---------------------------------------------------------------------------------

    async def _listen(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Follow the board's wake-ups; reconnect (polling meanwhile) when the connection drops."""
        started = False
        delay = 0.1
        while True:
            try:
                async with self.board.listen() as events:
                    if not started:
                        started = True
                        task_status.started()
                    delay = 0.1
                    self._wake.set()  # anything that became ready while we were not listening
                    async for event in events:
                        if event.kind == "ready":
                            if self.concurrency and (
                                self.job_types is None or event.value in self.job_types
                            ):
                                self._wake.set()
                        elif event.kind == "cancel":
                            self._abort([ref for ref in self._running if ref[0] == event.value])
                        elif event.kind == "ended" and self.listeners.has(event.value):
                            await self._tell_ended(event.value)
            except StorageError as exc:
                if not started:
                    raise
                log.warning("%s: lost its wake-up connection, reconnecting: %s", self.owner, exc)
            await anyio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _tell_ended(self, execution_id: str) -> None:
        execution = await self.board.get(execution_id)
        if execution is not None and execution.status in ("completed", "failed", "cancelled"):
            self.listeners.ended(ended_of(execution))

    async def _watch_progress(self) -> None:
        """Poll the progress of executions watched here that run on other engines."""
        while True:
            await anyio.sleep(min(self.poll_interval, 0.5))
            for execution_id in self.listeners.watched():
                try:
                    execution = await self.board.get(execution_id)
                except StorageError:
                    continue
                if execution is None:
                    continue
                if execution.status in ("completed", "failed", "cancelled"):
                    self.listeners.ended(ended_of(execution))
                    continue
                progress = execution.progress()
                if self._progress.get(execution_id) != progress:
                    self._progress[execution_id] = progress
                    self.listeners.progressed([execution_id], self._progress.get)
            for execution_id in list(self._progress):
                if not self.listeners.has(execution_id):
                    del self._progress[execution_id]

    # --- running jobs ---------------------------------------------------------------------------

    async def _claimer(self) -> None:
        """Claim as many ready jobs as there are free workers; run each in its own task."""
        assert self._task_group is not None
        task_group = self._task_group
        deferred = False
        while not self._draining:
            free = self.concurrency - len(self._running)
            claims: list[Claim] = []
            if 0 < free <= self._reporting and not deferred:
                # At least as many slots free up when the outcomes being written commit (group
                # commit: usually one transaction): wait for it, once, and claim for all of them
                # in one transaction rather than a few jobs now and the rest just after.
                deferred = True
                with anyio.move_on_after(_DEFER_CLAIM):
                    await self._reported.wait()
                continue
            deferred = False
            if free > 0:
                self._wake = anyio.Event()
                try:
                    claims = await self.board.claim(
                        self.owner,
                        types=self.job_types,
                        limit=min(free, self.claim_batch),
                        now=self.clock.now(),
                    )
                except StorageError as exc:
                    log.warning("%s: claiming failed, will retry: %s", self.owner, exc)
                    await anyio.sleep(self.poll_interval)
                    continue
                for claim in claims:
                    scope = anyio.CancelScope()
                    self._running[claim.ref] = scope
                    self._counters["attempts"] += 1
                    task_group.start_soon(self._run, claim, scope)
                if len(claims) == min(free, self.claim_batch) and claims:
                    continue  # there may be more
            with anyio.move_on_after(self.poll_interval):
                await self._wake.wait()

    async def _run(self, claim: Claim, scope: anyio.CancelScope) -> None:
        ref = claim.ref
        outcome: Exception | None = None
        video: Video | None = None
        try:
            with scope:
                try:
                    video = await self.provider.run(claim.request)
                except Exception as exc:  # every provider failure is recorded, none escapes
                    outcome = exc
            if scope.cancelled_caught:
                return  # cancelled here, or handed to another engine: its outcome is not ours
            if not self._reporting:
                self._reported = anyio.Event()
            self._reporting += 1
            try:
                if outcome is None:
                    assert video is not None
                    await self._report_completion(claim, video)
                else:
                    await self._report_failure(claim, outcome)
            finally:
                self._reporting -= 1
                if not self._reporting:
                    self._reported.set()
        finally:
            self._running.pop(ref, None)
            self._wake.set()
            if not self._running:
                self._idle.set()

    async def _report_completion(self, claim: Claim, video: Video) -> None:
        outcome = await self._retrying(
            "recording a completion",
            lambda: self.board.complete([(claim, video)], now=self.clock.now()),
        )
        if outcome.refused:
            self._counters["stale_results"] += 1
            log.info("%s: the result of %s/%s was refused (stale claim)", self.owner, *claim.ref)
            return
        self._counters["jobs_completed"] += 1
        await self._after(outcome.ended, progressed=claim.ref[0])

    async def _report_failure(self, claim: Claim, exc: Exception) -> None:
        request = claim.request
        retryable = not (isinstance(exc, ProviderError) and not exc.retryable)
        if not isinstance(exc, ProviderError):
            log.warning(
                "job %s/%s attempt %d raised %r", *claim.ref, request.attempt, exc, exc_info=exc
            )
        now = self.clock.now()
        retry_at = None
        if retryable and self.retry.should_retry(request.attempt):
            retry_at = now + self.retry.delay(request.attempt, self.rng)
        message = describe(exc)
        if retry_at is None:
            attempts = "attempt" if request.attempt == 1 else "attempts"
            message = f"{message} (after {request.attempt} {attempts})"
        outcome = await self._retrying(
            "recording a failure",
            lambda: self.board.fail(claim, message, retry_at=retry_at, now=now),
        )
        if outcome.refused:
            self._counters["stale_results"] += 1
            return
        if retry_at is not None:
            self._counters["retries"] += 1
        else:
            self._counters["jobs_failed"] += 1
        self._abort(outcome.aborted)
        await self._after(outcome.ended, progressed=claim.ref[0])

    async def _retrying(self, doing: str, call: Callable[[], Any]) -> Any:
        """``await call()`` until the database answers (an outcome must not be lost)."""
        attempt = 0
        while True:
            try:
                return await call()
            except StorageError as exc:
                delay = _REPORT_BACKOFF[min(attempt, len(_REPORT_BACKOFF) - 1)]
                attempt += 1
                log.warning("%s: %s failed, retrying in %.2fs: %s", self.owner, doing, delay, exc)
                await anyio.sleep(delay)

    def _abort(self, refs: Sequence[JobRef]) -> None:
        for ref in refs:
            scope = self._running.get(ref)
            if scope is not None:
                scope.cancel()

    async def _after(self, ended: Sequence[Ending], *, progressed: str | None = None) -> None:
        """Tell listeners what an outcome this engine wrote changed; take its webhook events."""
        done = {e.execution_id for e in ended}
        if progressed is not None and progressed not in done and self.listeners.has(progressed):
            execution = await self.board.get(progressed)
            if execution is not None:
                self.listeners.progressed([progressed], lambda _: execution.progress())
        for ending in ended:
            if self.listeners.has(ending.execution_id):
                await self._tell_ended(ending.execution_id)
            self._on_ended(ended_of_ending(ending))
            if ending.webhook is None:
                # No outbox event (it has no webhook): the notifier is told now, by the engine
                # that wrote the ending, as on a local store; not durable there either.
                self.delivery.send(notification_for(ended_of_ending(ending)))
        if any(e.webhook is not None for e in ended):
            await self._take_outbox()

    # --- what the engine's API asks ---------------------------------------------------------------

    async def admit(self, execution: Execution, fingerprint: str | None) -> str:
        stored = await self.board.submit(execution, fingerprint, now=execution.created_at)
        if stored.status in ("completed", "failed", "cancelled") and stored.id == execution.id:
            await self._after([ending_of(stored)])  # e.g. a failed base: base_failed at once
        return stored.id

    def live_status(self, execution_id: str, tenant: str | None) -> StatusReport | None:
        return None  # every engine reads the database: it is the one source of truth

    def live_progress(self, execution_id: str) -> Progress | None:
        return None

    async def cancel(self, execution: Execution) -> None:
        outcome = await self.board.cancel(
            execution.id, now=self.clock.now(), reason="cancelled by request"
        )
        self._abort(outcome.aborted)
        await self._after(outcome.ended)

    async def resume(self, execution: Execution) -> None:
        await self.board.resume(execution.id, now=self.clock.now())
        self._wake.set()

    async def hold(self, execution_id: str) -> None:
        return None  # an OutboxReset written by this engine makes it the event's holder

    def stats(self) -> Mapping[str, int]:
        return {
            **self._counters,
            "queue_depth": self._ready_jobs,
            "live_executions": len({ref[0] for ref in self._running}),
            "live_jobs": len(self._running),
        }


def ending_of(execution: Execution) -> Ending:
    return Ending(
        execution_id=execution.id,
        status=execution.status,
        result=execution.result,
        error=execution.error,
        tenant=execution.tenant,
        webhook=execution.webhook,
        generation=execution.generation,
        created_at=execution.created_at,
        started_at=execution.started_at,
        completed_at=execution.completed_at or execution.created_at,
    )


def ended_of(execution: Execution) -> Ended:
    """What listeners are told of an ended execution, from its stored record."""
    return Ended(
        execution_id=execution.id,
        status=execution.status,
        result=execution.result,
        error=execution.error,
        progress=execution.progress(),
        generation=execution.generation,
        created_at=execution.created_at,
        completed_at=execution.completed_at or execution.created_at,
        webhook=execution.webhook,
        tenant=execution.tenant,
    )


def ended_of_ending(ending: Ending) -> Ended:
    """An :class:`Ended` for the engine's own bookkeeping (durations), from a board ending."""
    return Ended(
        execution_id=ending.execution_id,
        status=ending.status,
        result=ending.result,
        error=ending.error,
        progress=Progress(ending.execution_id, 0, 0, None, 100.0, ending.status),
        generation=ending.generation,
        created_at=ending.created_at,
        completed_at=ending.completed_at,
        webhook=ending.webhook,
        tenant=ending.tenant,
    )

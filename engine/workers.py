"""Workers and retries: take ready jobs off the queue, run them on the provider, report back.

Each of the engine's ``concurrency`` workers pops a job, asks the scheduler to start its next
attempt (which is written before the provider is called), runs the provider inside a cancel
scope that the engine can cancel (a cancelled execution, a lost lease), and hands the outcome
back to the scheduler. A failed attempt that may be retried is put on a timer heap and pushed to
the queue again when it falls due on the engine's clock.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Awaitable, Callable, Iterable

import anyio

from engine.clock import Clock
from engine.errors import ProviderError
from engine.models import JobRef
from engine.ports import JobQueue, VideoProvider
from engine.scheduler import Scheduler, Step

log = logging.getLogger("engine")

Commit = Callable[[Step], Awaitable[None]]


class Workers:
    """The worker pool and the retry timer. See the module docstring."""

    def __init__(
        self,
        scheduler: Scheduler,
        queue: JobQueue,
        provider: VideoProvider,
        clock: Clock,
        commit: Commit,
    ) -> None:
        self.scheduler = scheduler
        self.queue = queue
        self.provider = provider
        self.clock = clock
        self.commit = commit
        self._running: dict[JobRef, anyio.CancelScope] = {}
        self._retry_heap: list[tuple[float, int, JobRef]] = []
        self._retry_seq = 0
        self._timer_wake = anyio.Event()

    def abort(self, refs: Iterable[JobRef]) -> None:
        """Stop these jobs' provider calls, if they are running here."""
        for ref in refs:
            scope = self._running.get(ref)
            if scope is not None:
                scope.cancel()

    def retry_later(self, retries: Iterable[tuple[float, JobRef]]) -> None:
        """Push each job to the queue again at its time on the engine's clock."""
        for due, ref in retries:
            self._retry_seq += 1
            heapq.heappush(self._retry_heap, (due, self._retry_seq, ref))
            self._timer_wake.set()

    async def work(self) -> None:
        """One worker: run jobs until cancelled.

        The worker's cancel scope lives across jobs, not one per job (a scope costs as much as
        the rest of a job's bookkeeping): :meth:`abort` cancels it only while the job is inside
        its provider call, the one place the worker awaits with a job to stop, and the worker
        opens a fresh scope after a cancelled call.
        """
        queue = self.queue
        while True:
            with anyio.CancelScope() as scope:
                while not scope.cancel_called:
                    ref = await queue.pop()
                    await self.run(ref, scope)

    async def run(self, ref: JobRef, scope: anyio.CancelScope) -> None:
        """Run the next attempt of one job, if it may run now.

        ``scope`` (the worker's) is cancelled by :meth:`abort` while the provider call runs. The
        cancellation leaves this method and ends the scope; a provider that swallowed it, or
        returned just before it, has its outcome dropped here (the job was aborted), and the
        worker leaves the cancelled scope before it awaits anything else.
        """
        scheduler = self.scheduler
        started = scheduler.start(ref, self.clock.now())
        if started is None:
            return
        request, step = started
        await self.commit(step)
        if not scheduler.holds(ref, request.attempt):
            return  # the execution ended (cancelled, failed) while the start was being written
        outcome: Exception | None = None
        self._running[ref] = scope
        try:
            video = await self.provider.run(request)
        except Exception as exc:  # every provider failure is recorded, none escapes
            outcome = exc
        finally:
            # No await from here until the scope is left if the call was cancelled.
            del self._running[ref]
        if scope.cancel_called:
            return
        now = self.clock.now()
        if outcome is None:
            step = scheduler.complete(ref, request.attempt, video, now)
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
            step = scheduler.fail(
                ref, request.attempt, describe(outcome), retryable=retryable, now=now
            )
        await self.commit(step)

    async def timer(self) -> None:
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


async def _sleep_then_cancel(clock: Clock, deadline: float, scope: anyio.CancelScope) -> None:
    await clock.sleep_until(deadline)
    scope.cancel()


def describe(exc: BaseException) -> str:
    """A job's error message from the exception its attempt raised."""
    text = str(exc)
    return text if isinstance(exc, ProviderError) and text else f"{type(exc).__name__}: {text}"

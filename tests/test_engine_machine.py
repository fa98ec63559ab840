"""The whole engine as a Hypothesis state machine, on every storage backend at once.

STYLE.md habit 4: one ``RuleBasedStateMachine`` drives an engine per backend (``BACKENDS``) with
the same random steps, checks CONTRACT.md section 7 after each step and checks that the backends
agree.

Each example runs one *world* per backend. A world is an event loop in its own thread (a blocking
portal), a store, the engines that ran on it (the current one, and paused ones whose work another
engine took over), one notifier and one log. Its provider is gated: every call waits until a step
lets it complete or fail, so what runs is decided by the steps alone. After every step each world
runs until it is quiescent (no task can move and no store call is in flight).

Steps: submit a small plan, or a variant of an earlier execution (chains of variants too); let a
running job complete, or fail (retryable, plain exception, or permanent); cancel; resume; move the
clock (retries fall due, leases are renewed); restart (leave ``async with`` and open a new engine,
under a new owner, on the same store: in memory the same store object, on SQLite the same file
opened anew); take over (the current engine pauses, as a process that hangs, and a second engine
with a short lease sweeps its work up once the first one's lease expired: the paused engine is
left running and its later writes must be fenced out); wake a paused engine (its clock catches
up, its sweep finds its leases gone and it must stop); drain (run every job to its end; also at
the end of every example).

Checked after every step, in every world, from a log of the provider calls and of every write
the store accepted (``TrackedStorage`` wraps the store of each engine):

1. A provider call starts only after every job it depends on had its completion written, across
   executions too (a variant's root jobs wait for the base's final job), and only for the
   attempt last written ``processing`` by the same engine, in an execution not ended.
2. A job's completion is written once and never overwritten, and only for an attempt that a step
   let succeed on the engine that wrote it; a taken-over engine has no write accepted on the work
   taken from it; no engine but a paused one is ever fenced out.
3. An ended execution has no unfinished job; a completed one has every job completed; no
   unfinished execution has a failed or cancelled base; an execution ended ``base_failed`` had
   its base failed or cancelled then; every ending is written once and notified once (and no
   other notification is sent). After a drain every execution has ended.
4. Every acknowledged execution is in the store, as the accepted writes left it; every unfinished
   one is run by the current engine, also after a restart or a takeover.

Agreement: execution statuses, errors, generations, results, job statuses and attempt counts,
running provider calls and notifications are the same in every world (executions matched by
submission order, engines by start order).

Hypothesis profiles (``dev``, ``ci``) live in ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Sequence
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Literal, TypeAlias, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import hypothesis
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from attrs import define, field, frozen
from backends import STORES, StoreOpener, WatchedStorage
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from strategies import plans

from adapters.memory import FakeVideoProvider, MemoryQueue, RecordingNotifier
from engine import (
    Engine,
    ExecutionPlan,
    InvalidState,
    ManualClock,
    ProviderError,
    RetryPolicy,
)
from engine.errors import LeaseLost
from engine.models import (
    TERMINAL,
    Change,
    Execution,
    ExecutionUpdate,
    JobRef,
    JobRequest,
    JobUpdate,
    Notification,
    Video,
)
from engine.ports import Storage

T = TypeVar("T")

# --- backends ------------------------------------------------------------------------------------

#: One world per backend; the first is the reference the others must agree with.
BACKENDS: dict[str, Callable[[Path], StoreOpener]] = {store.name: store.opener for store in STORES}

# --- what a world logs ---------------------------------------------------------------------------

#: How a step makes a running provider call fail: a retryable ``ProviderError``, a plain
#: exception (retried too), or a ``ProviderError(retryable=False)``.
FailureKind = Literal["retryable", "crash", "permanent"]


@frozen
class Wrote:
    """The store accepted one ``apply`` of engine ``engine``."""

    engine: int
    changes: tuple[Change, ...]


@frozen
class Fenced:
    """The store refused an ``apply`` of engine ``engine``: it no longer holds these executions."""

    engine: int
    execution_ids: frozenset[str]


@frozen
class Called:
    """Engine ``engine`` called the provider for one attempt of one job."""

    engine: int
    execution_id: str
    job_id: str
    attempt: int


@frozen
class Released:
    """A step let a provider call finish: with a video (``failure`` None) or with a failure."""

    engine: int
    execution_id: str
    job_id: str
    attempt: int
    failure: FailureKind | None


Event: TypeAlias = Wrote | Fenced | Called | Released

#: A running provider call: (engine, execution id, job id, attempt).
GateKey: TypeAlias = tuple[int, str, str, int]
#: The same, with the execution named by its submission index: comparable across worlds.
GateView: TypeAlias = tuple[int, int, str, int]


class ScriptedFailure(ProviderError):
    """A failure a step chose (retryable or not)."""


class ScriptedCrash(RuntimeError):
    """A failure a step chose, as a plain exception (retried)."""


def _failure(kind: FailureKind) -> Exception:
    if kind == "crash":
        return ScriptedCrash("scripted: the worker blew up")
    return ScriptedFailure(f"scripted: {kind}", retryable=kind == "retryable")


# --- the instrumented ports ----------------------------------------------------------------------


class TrackedStorage(WatchedStorage):
    """The store as one engine sees it: logs every accepted ``apply`` (and every fenced one)
    and counts calls in flight, so that the world knows when it is quiescent."""

    def __init__(self, inner: Storage, world: World, engine: int) -> None:
        super().__init__(inner)
        self.world = world
        self.engine = engine

    def enter(self) -> None:
        self.world.enter()

    def leave(self) -> None:
        self.world.leave()

    def applied(self, changes: Sequence[Change]) -> None:
        self.world.log.append(Wrote(self.engine, tuple(changes)))

    def fenced(self, lost: LeaseLost) -> None:
        self.world.log.append(Fenced(self.engine, lost.execution_ids))


class CountingQueue:
    """A :class:`MemoryQueue` that counts pushes and pops as activity."""

    def __init__(self, world: World) -> None:
        self.inner = MemoryQueue()
        self.world = world

    async def push(self, refs: Sequence[JobRef]) -> None:
        self.world.activity += 1
        await self.inner.push(refs)

    async def pop(self) -> JobRef:
        ref = await self.inner.pop()
        self.world.activity += 1
        return ref

    def depth(self) -> int:
        return self.inner.depth()


@define
class Gate:
    opened: anyio.Event
    failure: Exception | None = None


class GatedProvider:
    """A :class:`FakeVideoProvider` whose every call waits at a gate until a step lets it
    through, to return the fake's video or to raise the failure the step chose."""

    def __init__(self, world: World, engine: int) -> None:
        self.world = world
        self.engine = engine
        self.fake = FakeVideoProvider(on_call=self._gate)

    async def _gate(self, request: JobRequest) -> None:
        world = self.world
        key = (self.engine, request.execution_id, request.job_id, request.attempt)
        if key in world.gates:
            world.strange.append(f"attempt {key} was called twice")
        gate = Gate(anyio.Event())
        world.gates[key] = gate
        world.log.append(Called(*key))
        try:
            await gate.opened.wait()
        finally:
            if world.gates.get(key) is gate:
                del world.gates[key]
        if gate.failure is not None:
            raise gate.failure

    async def run(self, request: JobRequest) -> Video:
        try:
            return await self.fake.run(request)
        except (ScriptedFailure, ScriptedCrash):
            raise
        except Exception as exc:
            what = f"{request.execution_id}/{request.job_id} raised {exc!r}"
            self.world.strange.append(what)
            raise


async def _host(
    engine: Engine,
    stop: anyio.Event,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``engine`` until ``stop`` is set: the task that enters ``async with`` must leave it."""
    async with engine:
        task_status.started()
        await stop.wait()


# --- a world -------------------------------------------------------------------------------------

#: Jobs in a plan the machine submits (one more for a final merge): small, so steps go to
#: running them rather than to building them.
MACHINE_JOBS = 5
RETRY_DELAY = 1.0
LEASE, SWEEP_INTERVAL = 30.0, 5.0
#: The engine that takes work over has a short lease.
SHORT_LEASE, SHORT_SWEEP_INTERVAL = 10.0, 2.0
#: Event-loop turns with nothing happening before asking anyio whether every task is blocked.
QUIET_TURNS = 3
SETTLE_ROUNDS = 10_000


@define
class Options:
    concurrency: int
    max_attempts: int


@define(eq=False)
class Slot:
    """One engine of a world."""

    index: int
    owner: str
    engine: Engine
    clock: ManualClock
    lease: float
    stop: anyio.Event
    host: Future[None] | None = None
    stopped: bool = False
    #: Set when another engine took this one's work over: the log position from which its writes
    #: to the executions in ``taken`` must be refused.
    paused_at: int | None = None
    taken: frozenset[str] = frozenset()


@frozen
class Observation:
    """A world's state after a step, read from its store and its current engine."""

    executions: tuple[Execution | None, ...]
    live: frozenset[str]
    gates: tuple[GateView, ...]
    deliveries: tuple[Notification, ...]


@define(eq=False)
class World:
    """One backend's side of an example. Built and changed in its portal's event loop; the
    machine reads it from its own thread only while the loop is quiescent."""

    name: str
    open_store: StoreOpener
    options: Options
    portal: BlockingPortal | None = None
    notifier: RecordingNotifier = field(factory=RecordingNotifier)
    slots: list[Slot] = field(factory=list)
    log: list[Event] = field(factory=list)
    gates: dict[GateKey, Gate] = field(factory=dict)
    #: Execution ids by submission index, and the other way round.
    ids: list[str] = field(factory=list)
    index_of: dict[str, int] = field(factory=dict)
    plans: list[ExecutionPlan] = field(factory=list)
    base_of: list[int | None] = field(factory=list)
    #: The executions as last read from the store; log position read up to; read them all next.
    stored: dict[str, Execution | None] = field(factory=dict)
    observed: int = 0
    reread: bool = True
    inflight: int = 0
    activity: int = 0
    idle: anyio.Event = field(factory=anyio.Event)
    # --- what the checks have read off the log so far ---
    checked: int = 0
    completed: dict[JobRef, int] = field(factory=dict)
    last_job: dict[JobRef, tuple[int, JobUpdate]] = field(factory=dict)
    last_execution: dict[str, ExecutionUpdate] = field(factory=dict)
    endings: Counter[tuple[str, int]] = field(factory=Counter)
    ended: Counter[tuple[str, str]] = field(factory=Counter)
    succeeded: set[GateKey] = field(factory=set)
    #: The job status each released attempt must be written with (by the retry policy).
    expected: dict[GateKey, str] = field(factory=dict)
    #: What no step asked for: a provider call that raised on its own (a missing input, for
    #: instance), or one attempt called twice.
    strange: list[str] = field(factory=list)

    def __attrs_post_init__(self) -> None:
        self.idle.set()

    # --- quiescence (in the loop) -------------------------------------------------------------

    def enter(self) -> None:
        if not self.inflight:
            self.idle = anyio.Event()
        self.inflight += 1
        self.activity += 1

    def leave(self) -> None:
        self.inflight -= 1
        self.activity += 1
        if not self.inflight:
            self.idle.set()

    def _progress(self) -> int:
        return self.activity + len(self.log) + len(self.notifier.deliveries)

    async def settle(self) -> None:
        """Run until quiescent: nothing changed for a few turns, no store call in flight, and
        anyio finds every task blocked."""
        seen, quiet = self._progress(), 0
        for _ in range(SETTLE_ROUNDS):
            if self.inflight:
                await self.idle.wait()
                quiet = 0
                continue
            await anyio.lowlevel.checkpoint()
            now = self._progress()
            if now != seen or self.inflight:
                seen, quiet = now, 0
                continue
            quiet += 1
            if quiet >= QUIET_TURNS:
                await anyio.wait_all_tasks_blocked()
                if self._progress() == seen and not self.inflight:
                    return
                seen, quiet = self._progress(), 0
        raise AssertionError(f"{self.name}: the engine never became quiescent")

    # --- engines ------------------------------------------------------------------------------

    @property
    def current(self) -> Slot:
        return self.slots[-1]

    def sleeper(self) -> Slot | None:
        """The oldest paused engine whose clock lags enough behind for a sweep to fall due."""
        now = self.current.clock.now()
        for slot in self.slots:
            lag = now - slot.clock.now()
            if slot.paused_at is not None and lag >= slot.engine.sweep_interval:
                return slot
        return None

    def _new_slot(self, lease: float, sweep_interval: float, now: float) -> Slot:
        index = len(self.slots)
        owner = f"{self.name}-engine{index}"
        clock = ManualClock(now)
        engine = Engine(
            storage=TrackedStorage(self.open_store(), self, index),
            queue=CountingQueue(self),
            provider=GatedProvider(self, index),
            notifier=self.notifier,
            clock=clock,
            concurrency=self.options.concurrency,
            retry=RetryPolicy(
                max_attempts=self.options.max_attempts, initial_delay=RETRY_DELAY, jitter=False
            ),
            lease=lease,
            sweep_interval=sweep_interval,
            owner=owner,
        )
        slot = Slot(index, owner, engine, clock, lease, anyio.Event())
        self.slots.append(slot)
        return slot

    def start_engine(self, lease: float, sweep_interval: float, now: float) -> Slot:
        portal = self.loop()
        slot = portal.call(self._new_slot, lease, sweep_interval, now)
        slot.host, _ = portal.start_task(_host, slot.engine, slot.stop)
        portal.call(self.settle)
        self.reread = True
        return slot

    def stop_engine(self, slot: Slot) -> None:
        if slot.stopped or slot.host is None:
            return
        slot.stopped = True
        portal = self.loop()
        portal.call(slot.stop.set)
        slot.host.result()
        portal.call(self.settle)

    def stop_all(self) -> None:
        """Stop every engine, the last one first; raise the first error after trying them all."""
        errors: list[BaseException] = []
        for slot in reversed(self.slots):
            try:
                self.stop_engine(slot)
            except BaseException as exc:  # each engine is stopped regardless
                errors.append(exc)
        if errors:
            raise errors[0]

    def check_engines_run(self) -> None:
        """An engine whose task group failed is dead: surface its error."""
        for slot in self.slots:
            if not slot.stopped and slot.host is not None and slot.host.done():
                slot.host.result()
                raise AssertionError(f"{slot.owner} stopped on its own")

    def loop(self) -> BlockingPortal:
        """The portal into this world's event loop."""
        assert self.portal is not None
        return self.portal

    def step(self, action: Callable[[], Awaitable[T]]) -> T:
        """Do one step in this world's loop, then run it until quiescent."""

        async def run() -> T:
            result = await action()
            await self.settle()
            return result

        return self.loop().call(run)

    # --- steps (in the loop) --------------------------------------------------------------------

    async def submit(self, plan: ExecutionPlan, base: int | None, webhook: bool) -> str:
        hook = {"url": f"https://hooks.example.com/{self.name}"} if webhook else None
        base_id = None if base is None else self.ids[base]
        execution_id = await self.current.engine.submit(
            plan, base_execution_id=base_id, webhook=hook
        )
        self.index_of[execution_id] = len(self.ids)
        self.ids.append(execution_id)
        self.plans.append(plan)
        self.base_of.append(base)
        return "submitted"

    async def release(self, view: GateView, failure: FailureKind | None) -> str:
        engine, index, job_id, attempt = view
        key = (engine, self.ids[index], job_id, attempt)
        gate = self.gates[key]
        gate.failure = None if failure is None else _failure(failure)
        self.log.append(Released(*key, failure))
        gate.opened.set()
        return "released"

    async def cancel(self, index: int) -> str:
        await self.current.engine.cancel(self.ids[index])
        return "cancelled"

    async def resume(self, index: int) -> str:
        try:
            await self.current.engine.resume(self.ids[index])
        except InvalidState:
            return "InvalidState"
        return "resumed"

    async def advance(self, seconds: float) -> str:
        self.current.clock.advance(seconds)
        return "advanced"

    async def sweep(self) -> str:
        await self.current.engine.sweep()
        return "swept"

    async def unfinished_ids(self) -> frozenset[str]:
        executions = [await self.current.engine.storage.get(i) for i in self.ids]
        return frozenset(e.id for e in executions if e is not None and e.status not in TERMINAL)

    async def observe(self, *, everything: bool = False) -> Observation:
        """Read the executions the last step wrote to (all of them after a new engine opened
        the store, and when ``everything``), and what runs."""
        if everything or self.reread:
            stale: Collection[str] = self.ids
        else:
            stale = {
                change.execution_id
                for event in self.log[self.observed :]
                if isinstance(event, Wrote)
                for change in event.changes
            }
            stale |= {i for i in self.ids if i not in self.stored}
        for execution_id in stale:
            self.stored[execution_id] = await self.current.engine.storage.get(execution_id)
        self.observed, self.reread = len(self.log), False
        executions = tuple(self.stored[execution_id] for execution_id in self.ids)
        gates = tuple(sorted((e, self.index_of[x], j, a) for e, x, j, a in self.gates))
        return Observation(
            executions=executions,
            live=frozenset(self.current.engine.scheduler.live_executions()),
            gates=gates,
            deliveries=tuple(self.notifier.deliveries),
        )

    # --- checks (in the machine's thread, while the loop is quiescent) ----------------------------

    def base_id(self, execution_id: str) -> str | None:
        base = self.base_of[self.index_of[execution_id]]
        return None if base is None else self.ids[base]

    def status_of(self, execution_id: str) -> str:
        """The status the accepted writes left an execution in."""
        last = self.last_execution.get(execution_id)
        return "pending" if last is None else last.status

    def check_log(self) -> None:
        """Invariants 1 and 2, and the ending half of 3, on what was logged since last time."""
        assert not self.strange, f"{self.name}: {self.strange}"
        log = self.log
        for position in range(self.checked, len(log)):
            event = log[position]
            if isinstance(event, Wrote):
                self._check_write(event, position)
            elif isinstance(event, Fenced):
                slot = self.slots[event.engine]
                assert slot.paused_at is not None, (
                    f"{self.name}: {slot.owner}, never taken over, was fenced out of "
                    f"{sorted(event.execution_ids)}"
                )
                hypothesis.event("a taken-over engine's write was fenced out")
            elif isinstance(event, Called):
                self._check_call(event)
                if event.attempt > 1:
                    hypothesis.event("a job ran again (retried, or rerun after a restart)")
            else:
                key = (event.engine, event.execution_id, event.job_id, event.attempt)
                self.expected[key] = self._outcome(event)
                if event.failure is None:
                    self.succeeded.add(key)
        self.checked = len(log)
        unrecorded = [k for k in self.expected if self.slots[k[0]].paused_at is None]
        assert not unrecorded, f"{self.name}: released attempts {unrecorded} were not recorded"
        self.expected.clear()  # a paused engine's outcomes are fenced out

    def _outcome(self, event: Released) -> str:
        """The job status an attempt's outcome is written with, by the retry policy."""
        if event.failure is None:
            return "completed"
        if event.failure == "permanent" or event.attempt >= self.options.max_attempts:
            return "failed"
        return "pending"

    def _check_write(self, event: Wrote, position: int) -> None:
        slot = self.slots[event.engine]
        for change in event.changes:
            execution_id = change.execution_id
            if slot.paused_at is not None and position > slot.paused_at:
                assert execution_id not in slot.taken, (
                    f"{self.name}: {slot.owner} was taken over, yet its write {change} was accepted"
                )
            if isinstance(change, JobUpdate):
                ref = (execution_id, change.job_id)
                assert ref not in self.completed, (
                    f"{self.name}: invariant 2: {ref} was written {change.status} (attempt "
                    f"{change.attempts}) after its completion was recorded"
                )
                attempt = (event.engine, execution_id, change.job_id, change.attempts)
                if change.status != "processing" and attempt in self.expected:
                    wanted = self.expected.pop(attempt)
                    assert change.status == wanted, (
                        f"{self.name}: attempt {change.attempts} of {ref} ended {wanted} by the "
                        f"retry policy (max_attempts {self.options.max_attempts}), but was "
                        f"written {change.status}"
                    )
                _, before = self.last_job.get(ref, (None, None))
                attempts = 0 if before is None else before.attempts
                step = 1 if change.status == "processing" else 0
                assert change.attempts == attempts + step, (
                    f"{self.name}: {ref} was written {change.status} with attempts "
                    f"{change.attempts} after attempts {attempts}"
                )
                if change.status == "completed":
                    assert attempt in self.succeeded, (
                        f"{self.name}: invariant 2: {ref} was recorded completed by attempt "
                        f"{change.attempts} of {slot.owner}, which no step let succeed"
                    )
                    self.completed[ref] = position
                self.last_job[ref] = (event.engine, change)
            elif isinstance(change, ExecutionUpdate):
                self.last_execution[execution_id] = change
                if change.status not in TERMINAL:
                    continue
                ending = (execution_id, change.generation)
                self.endings[ending] += 1
                assert self.endings[ending] == 1, f"{self.name}: {ending} was written twice"
                self.ended[execution_id, change.status] += 1
                code = None if change.error is None else change.error.code
                hypothesis.event(f"an execution ended {change.status} ({code})")
                if change.error is not None and change.error.code == "base_failed":
                    base = self.base_id(execution_id)
                    assert base is not None and self.status_of(base) in ("failed", "cancelled"), (
                        f"{self.name}: {execution_id} failed base_failed, but its base {base} is "
                        f"{None if base is None else self.status_of(base)}"
                    )

    def _check_call(self, event: Called) -> None:
        execution_id, job_id = event.execution_id, event.job_id
        ref = (execution_id, job_id)
        index = self.index_of[execution_id]
        plan = self.plans[index]
        job = next(job for job in plan.jobs if job.id == job_id)
        writer, last = self.last_job.get(ref, (None, None))
        assert last is not None and writer == event.engine, (
            f"{self.name}: attempt {event.attempt} of {ref} reached engine {event.engine}'s "
            f"provider, but the last write of that job is {last}, by engine {writer}"
        )
        assert (last.status, last.attempts) == ("processing", event.attempt), (
            f"{self.name}: attempt {event.attempt} of {ref} reached the provider, but the last "
            f"write of that job is {last}"
        )
        assert self.status_of(execution_id) not in TERMINAL, (
            f"{self.name}: {ref} started in an execution that is {self.status_of(execution_id)}"
        )
        waits_for = [(execution_id, dep) for dep in job.depends_on]
        base = self.base_of[index]
        if not job.depends_on and base is not None:
            waits_for.append((self.ids[base], self.plans[base].final_job.id))
        for dep in waits_for:
            assert dep in self.completed, (
                f"{self.name}: invariant 1: attempt {event.attempt} of {ref} started before "
                f"{dep} completed"
            )

    def check_state(self, seen: Observation, *, drained: bool = False) -> None:
        """Invariants 3 and 4 on the store, the current engine and the notifications."""
        name = self.name
        unfinished: set[str] = set()
        for index, execution in enumerate(seen.executions):
            execution_id = self.ids[index]
            assert execution is not None, f"{name}: invariant 4: {execution_id} was lost"
            last = self.last_execution.get(execution_id)
            written = ("pending", 0) if last is None else (last.status, last.generation)
            assert (execution.status, execution.generation) == written, (
                f"{name}: {execution_id} is stored {execution.status} (generation "
                f"{execution.generation}), but the accepted writes left it {written}"
            )
            for job in execution.jobs:
                known = self.last_job.get((execution_id, job.id))
                job_written = (
                    ("pending", 0) if known is None else (known[1].status, known[1].attempts)
                )
                assert (job.status, job.attempts) == job_written, (
                    f"{name}: {execution_id}/{job.id} is stored {job.status} after "
                    f"{job.attempts} attempts, but the accepted writes left it {job_written}"
                )
            if execution.status not in TERMINAL:
                unfinished.add(execution_id)
                base = self.base_id(execution_id)
                if base is not None:
                    assert self.status_of(base) not in ("failed", "cancelled"), (
                        f"{name}: invariant 3: {execution_id} is {execution.status} but its "
                        f"base {base} is {self.status_of(base)}"
                    )
                continue
            left = [job.id for job in execution.jobs if job.status not in TERMINAL]
            assert not left, (
                f"{name}: invariant 3: {execution_id} ended with jobs {left} unfinished"
            )
            if execution.status == "completed":
                assert all(job.status == "completed" for job in execution.jobs), execution
                assert execution.result is not None and execution.error is None, execution
            else:
                assert execution.error is not None, execution
                if execution.error.code == "job_failed":
                    failed = execution.job(execution.error.job_id or "")
                    assert failed.status == "failed", execution
        for engine, index, job_id, attempt in seen.gates:
            slot = self.slots[engine]
            assert not slot.stopped, f"{name}: {slot.owner} stopped, yet it runs {job_id}"
            if slot.paused_at is not None:
                continue
            stored = seen.executions[index]
            assert stored is not None
            job = stored.job(job_id)
            assert (job.status, job.attempts) == ("processing", attempt), (
                f"{name}: attempt {attempt} of {stored.id}/{job_id} runs, but the job is stored "
                f"{job.status} after {job.attempts} attempts"
            )
        if drained:
            assert not unfinished, f"{name}: invariant 3: drained, yet {sorted(unfinished)} run"
        assert seen.live == unfinished, (
            f"{name}: invariant 4: unfinished executions {sorted(unfinished)}, but "
            f"{self.current.owner} runs {sorted(seen.live)}"
        )
        event_ids = Counter(n.event_id for n in seen.deliveries)
        twice = [event_id for event_id, n in event_ids.items() if n > 1]
        assert not twice, f"{name}: invariant 3: notified more than once: {twice}"
        notified = Counter((n.execution_id, n.status) for n in seen.deliveries)
        assert notified == self.ended, (
            f"{name}: invariant 3: notifications {dict(notified)} for endings {dict(self.ended)}"
        )

    def digest(self, seen: Observation) -> object:
        """What must be the same in every world, with executions named by submission index."""
        executions = []
        for execution in seen.executions:
            assert execution is not None
            error = execution.error
            result = execution.result
            executions.append(
                (
                    execution.status,
                    None if error is None else (error.code, error.job_id),
                    execution.generation,
                    None if result is None else (result.duration, result.aspect_ratio),
                    tuple((job.id, job.status, job.attempts) for job in execution.jobs),
                )
            )
        notified = sorted((self.index_of[n.execution_id], n.status) for n in seen.deliveries)
        return {"executions": executions, "running": seen.gates, "notified": notified}


# --- the machine ---------------------------------------------------------------------------------

MAX_SUBMISSIONS = 6
MAX_TAKEOVERS = 2
#: Restarts are the dearest step (an engine stops, another opens the store): a few are enough.
MAX_RESTARTS = 4
#: Enough for any retry to fall due (delays 1, 2 with this policy) and for a sweep.
DRAIN_ADVANCE = 2 * SWEEP_INTERVAL
DRAIN_STEPS = 400


class EngineMachine(RuleBasedStateMachine):
    """Drives one world per backend with the same steps; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.stack = contextlib.ExitStack()
        self.worlds: list[World] = []
        self.seen: Observation | None = None  # the reference world's, after the last step
        self.takeovers = 0
        self.restarts = 0
        #: Every step so far passed its checks: teardown may drain and check again.
        self.steady = False

    # --- plumbing ---------------------------------------------------------------------------------

    def each(self, action: Callable[[World], str]) -> str:
        """Apply one step to every world; they must answer alike."""
        self.steady = False
        outcomes = [action(world) for world in self.worlds]
        assert len(set(outcomes)) == 1, f"the worlds answered differently: {outcomes}"
        return outcomes[0]

    def release(self, view: GateView, failure: FailureKind | None) -> None:
        """Let one running provider call finish, in every world."""
        self.each(lambda w: w.step(lambda: w.release(view, failure)))

    @property
    def reference(self) -> Observation:
        assert self.seen is not None
        return self.seen

    def statuses(self, *wanted: str) -> list[int]:
        return [
            index
            for index, execution in enumerate(self.reference.executions)
            if execution is not None and execution.status in wanted
        ]

    def _check(self, *, drained: bool = False) -> None:
        self.steady = False
        digests = []
        for world in self.worlds:
            world.check_engines_run()
            seen = world.loop().call(partial(world.observe, everything=drained))
            world.check_log()
            world.check_state(seen, drained=drained)
            digests.append(world.digest(seen))
            if world is self.worlds[0]:
                self.seen = seen
        for world, digest in zip(self.worlds[1:], digests[1:], strict=True):
            assert digest == digests[0], (
                f"{world.name} disagrees with {self.worlds[0].name}:\n{digest}\n{digests[0]}"
            )
        self.steady = True

    # --- setup and teardown -----------------------------------------------------------------------

    @initialize(concurrency=st.integers(1, 3), max_attempts=st.integers(1, 3))
    def start(self, concurrency: int, max_attempts: int) -> None:
        directory = Path(self.stack.enter_context(tempfile.TemporaryDirectory()))
        options = Options(concurrency, max_attempts)
        for name, backend in BACKENDS.items():
            home = directory / name
            home.mkdir()
            portal = self.stack.enter_context(start_blocking_portal())
            opener = backend(home)
            world = portal.call(World, name, opener, options)
            world.portal = portal
            self.worlds.append(world)
            self.stack.callback(world.stop_all)
            world.start_engine(LEASE, SWEEP_INTERVAL, ManualClock().now())
        self._check()

    def teardown(self) -> None:
        try:
            if self.steady:  # after a failure, only clean up: the failure is reported as it is
                self.drain()
        finally:
            self.stack.close()

    # --- rules -----------------------------------------------------------------------------------

    @precondition(lambda self: len(self.reference.executions) < MAX_SUBMISSIONS)
    @rule(plan=plans(has_base=False, max_jobs=MACHINE_JOBS), webhook=st.booleans())
    def submit(self, plan: ExecutionPlan, webhook: bool) -> None:
        self.each(lambda w: w.step(lambda: w.submit(plan, None, webhook)))

    @precondition(lambda self: 0 < len(self.reference.executions) < MAX_SUBMISSIONS)
    @rule(plan=plans(has_base=True, max_jobs=MACHINE_JOBS), webhook=st.booleans(), data=st.data())
    def submit_variant(self, plan: ExecutionPlan, webhook: bool, data: st.DataObject) -> None:
        base = data.draw(self.some_execution(), label="base")
        hypothesis.event(f"variant of a {self.reference_status(base)} base")
        self.each(lambda w: w.step(lambda: w.submit(plan, base, webhook)))

    def some_execution(self) -> st.SearchStrategy[int]:
        """An earlier submission, often an unfinished one (the more eventful choice)."""
        anyone = st.integers(0, len(self.reference.executions) - 1)
        unfinished = self.statuses("pending", "processing")
        return st.sampled_from(unfinished) | anyone if unfinished else anyone

    def reference_status(self, index: int) -> str:
        execution = self.reference.executions[index]
        assert execution is not None
        return execution.status

    @precondition(lambda self: bool(self.reference.gates))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        self.release(data.draw(st.sampled_from(self.reference.gates), label="running"), None)

    @precondition(lambda self: bool(self.reference.gates))
    @rule(data=st.data(), kind=st.sampled_from(("retryable", "crash", "permanent")))
    def fail(self, data: st.DataObject, kind: FailureKind) -> None:
        self.release(data.draw(st.sampled_from(self.reference.gates), label="running"), kind)

    @precondition(lambda self: bool(self.reference.executions))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        index = data.draw(self.some_execution(), label="execution")
        hypothesis.event(f"cancel a {self.reference_status(index)} execution")
        self.each(lambda w: w.step(lambda: w.cancel(index)))

    @precondition(lambda self: bool(self.statuses("failed", "cancelled")))
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        index = data.draw(st.sampled_from(self.statuses("failed", "cancelled")), label="execution")
        outcome = self.each(lambda w: w.step(lambda: w.resume(index)))
        hypothesis.event(f"resume: {outcome}")

    @rule(seconds=st.sampled_from((RETRY_DELAY, 2 * RETRY_DELAY, SWEEP_INTERVAL, LEASE + 10)))
    def advance_clock(self, seconds: float) -> None:
        self.each(lambda w: w.step(lambda: w.advance(seconds)))

    @precondition(
        lambda self: self.restarts < MAX_RESTARTS and bool(self.statuses("pending", "processing"))
    )
    @rule()
    def restart(self) -> None:
        """Leave ``async with`` and start a new engine (a new owner) on the same store: the
        unfinished work, including jobs that were running, continues there."""
        self.restarts += 1
        if self.reference.gates:
            hypothesis.event("restart with jobs running")

        def restart(world: World) -> str:
            old = world.current
            world.stop_engine(old)
            world.start_engine(old.lease, SWEEP_INTERVAL, old.clock.now())
            return "restarted"

        self.each(restart)

    @precondition(
        lambda self: self.takeovers < MAX_TAKEOVERS and bool(self.statuses("pending", "processing"))
    )
    @rule()
    def take_over(self) -> None:
        """The current engine hangs (its clock stops; it is left running); a second engine on
        the same store, with a short lease, takes its work once its lease expired."""
        self.takeovers += 1

        def take_over(world: World) -> str:
            old = world.current
            old.taken = world.loop().call(world.unfinished_ids)
            old.paused_at = len(world.log)
            world.start_engine(SHORT_LEASE, SHORT_SWEEP_INTERVAL, old.clock.now())
            # Past every lease the old engine holds (it renewed them, at most, at its now).
            world.step(lambda: world.advance(old.lease + 1.0))
            return world.step(world.sweep)

        self.each(take_over)

    @precondition(lambda self: self.worlds[0].sleeper() is not None)
    @rule()
    def wake_paused(self) -> None:
        """The oldest paused engine wakes up: its clock catches up with the current engine's
        (not beyond: the current engine's leases are still valid then). Its sweep finds its
        leases gone: it must stop working on them, with no write accepted."""

        if self.worlds[0].current.engine.scheduler.live_executions():
            hypothesis.event("a paused engine woke up while its work ran elsewhere")

        def wake(world: World) -> str:
            slot = world.sleeper()
            assert slot is not None

            async def catch_up() -> str:
                slot.clock.advance(world.current.clock.now() - slot.clock.now())
                return "woken"

            outcome = world.step(catch_up)
            left = set(slot.engine.scheduler.live_executions()) & slot.taken
            assert not left, f"{world.name}: {slot.owner} still runs {sorted(left)} after waking"
            return outcome

        self.each(wake)

    @rule()
    def drain(self) -> None:
        """Let every running job complete, and retries fall due, until every execution ended."""
        idle = 0  # clock moves in a row that started nothing
        for _ in range(DRAIN_STEPS):
            seen = self.reference
            if seen.gates:
                idle = 0
                self.release(seen.gates[0], None)
            elif self.statuses("pending", "processing"):
                idle += 1
                assert idle <= 2, (
                    "invariant 3: nothing runs and no retry is due, yet executions "
                    f"{self.statuses('pending', 'processing')} (by submission) have not ended"
                )
                self.each(lambda w: w.step(lambda: w.advance(DRAIN_ADVANCE)))
            else:
                break
            self._check()
        else:
            raise AssertionError("the executions did not end")
        self._check(drained=True)

    # --- after every step ------------------------------------------------------------------------

    @invariant()
    def contract_holds_and_worlds_agree(self) -> None:
        self._check()


#: A passing run takes seconds; a failing one replays hundreds of examples while shrinking, and
#: would otherwise hit the suite's 120 s timeout halfway and be reported as flaky.
pytestmark = pytest.mark.timeout(900)

TestEngineMachine = EngineMachine.TestCase
TestEngineMachine.settings = settings(stateful_step_count=30)

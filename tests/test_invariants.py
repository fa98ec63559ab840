"""Property tests of CONTRACT.md section 7, invariants 1, 2, 3 and 5, on every backend.

- ``test_random_executions_keep_invariants``: random forests of executions (plans of 1..50 jobs,
  variants and chains of variants, scripted failures, cancellations, 1..6 workers) run to the end.
  One event log, ordered by a logical counter (its index), records every provider call's start and
  finish, every change written to storage and every cancel request; invariants 1-3 and each
  execution's expected outcome are read off it, the storage journal and the notifier.
- ``test_variants_of_one_base_run_concurrently``: invariant 5, one test per worker count, with a
  barrier that opens only once every variant's root job has started.
- Both properties run on every backend of ``backends.ENGINES`` (``1 / cost`` of the examples on
  each): memory and SQLite watch the store (``LoggedStorage``); on PostgreSQL, where the database
  dispatches the jobs, ``LoggedBoard`` watches the job board instead and writes the same events
  to the log: a claim is a job written ``processing``, a completion is logged when it is asked
  (before its transaction, since a dependent may be claimed before ``complete`` returns) and
  struck off if refused, and each ending an outcome reports is an execution update. The board's
  one schema per test is emptied between examples (``backends._postgres_session``).
- ``TestSchedulerMachine``: a ``RuleBasedStateMachine`` that drives the pure scheduler against a
  model of it (admit, start, complete, fail, stale reports, cancel, delayed writes, and bases run
  by another engine).

Hypothesis profiles (``dev``, ``ci``) live in ``conftest.py``.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Literal, TypeAlias

import anyio
import anyio.lowlevel
import attrs
import hypothesis
import pytest
from attrs import define, field, frozen
from backends import (
    ENGINES,
    EngineBackend,
    EngineSpec,
    Home,
    HomeMaker,
    WatchedBoard,
    WatchedStorage,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from strategies import TRANSFORMS, chain_plans, plans

from adapters.memory import FakeVideoProvider, RecordingNotifier
from engine import (
    Engine,
    ExecutionPlan,
    JobSpec,
    ManualClock,
    ProviderError,
    RetryPolicy,
    Storage,
)
from engine.models import (
    TERMINAL,
    Change,
    Claim,
    CompleteOutcome,
    EndOutcome,
    Execution,
    ExecutionStatus,
    ExecutionUpdate,
    JobRef,
    JobRequest,
    JobStatus,
    JobUpdate,
    Notification,
    Video,
)
from engine.models import Ending as BoardEnding
from engine.ports import JobBoard
from engine.scheduler import Scheduler, SchedulerStats, Step, job_infos

# --- scenarios ----------------------------------------------------------------------------------

FailureKind = Literal["transient", "transient_plain", "permanent"]


@frozen
class Failure:
    """A scripted provider failure of one job: its first ``times`` attempts fail (transient, as
    a retryable ``ProviderError`` or a plain exception), or every attempt fails (permanent)."""

    kind: FailureKind
    times: int

    def fails(self, attempt: int) -> bool:
        return self.kind == "permanent" or attempt <= self.times

    def fatal(self, max_attempts: int) -> bool:
        """Whether the job can never complete under a policy of ``max_attempts``."""
        return self.kind == "permanent" or self.times >= max_attempts

    def error(self) -> Exception:
        if self.kind == "permanent":
            return ProviderError("scripted: rejected", retryable=False)
        if self.kind == "transient":
            return ProviderError("scripted: busy")
        return ConnectionError("scripted: network blip")


#: A pause that waits until every execution submitted so far has ended.
SETTLE = -1


@frozen
class Submit:
    plan: ExecutionPlan
    #: Index of the submission this one is a variant of.
    base: int | None
    failures: Mapping[str, Failure]
    #: Event-loop turns to let pass before submitting, or SETTLE.
    pause: int


@frozen
class Cancel:
    target: int  # index of a submission
    pause: int


Action: TypeAlias = Submit | Cancel


@frozen
class Scenario:
    actions: tuple[Action, ...]
    workers: int
    max_attempts: int
    #: Seeds how many event-loop turns each provider call takes.
    seed: int

    @property
    def submits(self) -> list[Submit]:
        return [action for action in self.actions if isinstance(action, Submit)]


pauses = st.one_of(st.just(0), st.integers(0, 40), st.just(SETTLE))
failures = st.builds(
    Failure,
    kind=st.sampled_from(("transient", "transient_plain", "permanent")),
    times=st.integers(1, 3),
)


@st.composite
def scenarios(draw: st.DrawFn, max_submissions: int = 6) -> Scenario:
    actions: list[Action] = []
    for index in range(draw(st.integers(1, max_submissions))):
        base = draw(st.none() | st.integers(0, index - 1)) if index else None
        plan = draw(plans(has_base=base is not None))
        job_ids = [job.id for job in plan.jobs]
        failing = draw(st.lists(st.tuples(st.sampled_from(job_ids), failures), max_size=2))
        actions.append(Submit(plan, base, dict(failing), draw(pauses)))
        if draw(st.integers(0, 3)) == 0:
            actions.append(Cancel(draw(st.integers(0, index)), draw(pauses)))
    return Scenario(
        tuple(actions),
        workers=draw(st.integers(1, 6)),
        max_attempts=draw(st.integers(1, 4)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


# --- the event log and the instrumented ports ------------------------------------------------


@frozen
class Start:
    """The provider was called for one attempt (logged by the fake's ``on_call`` hook)."""

    execution_id: str
    job_id: str
    attempt: int


@frozen
class Finish:
    """A provider call returned a video, raised, or was cancelled."""

    execution_id: str
    job_id: str
    attempt: int
    outcome: Literal["ok", "error", "cancelled"]


@frozen
class Write:
    """A change the engine applied to storage."""

    change: Change


@frozen
class CancelRequest:
    """The test asked the engine to cancel an execution that was (or was not) live then."""

    execution_id: str
    was_live: bool


@frozen
class CancelDone:
    """The engine's ``cancel`` call for an execution returned. On a store with I/O the
    execution may end on its own while the call reads it: then the cancel finds it ended."""

    execution_id: str


@frozen
class Refused:
    """A completion logged as a ``Write`` when asked, which the job board then refused."""

    change: Change


Event: TypeAlias = Start | Finish | Write | CancelRequest | CancelDone | Refused


class LoggedStorage(WatchedStorage):
    """The store of a run (any backend): logs every change it applies, keeps them in order in
    ``journal``, tracks the status of each execution (an execution with no status written yet is
    pending) and counts calls in flight, so that a wait knows when the engine is stuck rather
    than waiting for a thread (SQLite)."""

    #: Only ``apply`` yields (as before SQLite joined): in memory, nothing happens between a
    #: read and its caller acting on it, so the test's predictions about cancels are exact.
    checkpoint_every_call = False

    def __init__(self, inner: Storage, log: list[Event]) -> None:
        super().__init__(inner)
        self.log = log
        self.journal: list[Change] = []
        self.status: dict[str, str] = {}
        self.inflight = 0
        self.idle = anyio.Event()
        self.idle.set()

    def enter(self) -> None:
        if not self.inflight:
            self.idle = anyio.Event()
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1
        if not self.inflight:
            self.idle.set()

    def applied(self, changes: Sequence[Change]) -> None:
        # ``apply`` yields after every write, as a store with I/O does: it opens the timing
        # windows between a write and the writer acting on it.
        self.journal.extend(changes)
        for change in changes:
            self.log.append(Write(change))
            if isinstance(change, ExecutionUpdate):
                self.status[change.execution_id] = change.status

    def ended(self, execution_ids: Sequence[str]) -> bool:
        return all(self.status.get(i, "pending") in TERMINAL for i in execution_ids)


class LoggedBoard(WatchedBoard):
    """The job board of a run on PostgreSQL: logs what the board did as the store writes
    ``LoggedStorage`` logs would say it (see the module docstring), with ``journal``, ``status``
    and the calls in flight as there. ``cancel_ended`` says, per cancel call, whether that call
    ended its execution (else it had ended already)."""

    def __init__(self, inner: JobBoard, log: list[Event]) -> None:
        super().__init__(inner)
        self.log = log
        self.journal: list[Change] = []
        self.status: dict[str, str] = {}
        self.inflight = 0
        self.idle = anyio.Event()
        self.idle.set()
        self.cancel_ended: list[bool] = []
        self._asked: dict[tuple[str, str, int], int] = {}

    def enter(self) -> None:
        if not self.inflight:
            self.idle = anyio.Event()
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1
        if not self.inflight:
            self.idle.set()

    def _write(self, change: Change) -> None:
        self.log.append(Write(change))
        self.journal.append(change)

    def _ended(self, endings: Sequence[BoardEnding]) -> None:
        for ending in endings:
            self._write(
                ExecutionUpdate(
                    ending.execution_id,
                    ending.status,
                    ending.started_at,
                    ending.completed_at,
                    ending.result,
                    ending.error,
                    ending.generation,
                )
            )
            self.status[ending.execution_id] = ending.status

    def claimed(self, claims: Sequence[Claim]) -> None:
        for claim in claims:
            request = claim.request
            self._write(
                JobUpdate(
                    request.execution_id, request.job_id, "processing", request.attempt, 0, None
                )
            )

    def completing(self, results: Sequence[tuple[Claim, Video]]) -> None:
        for claim, video in results:
            request = claim.request
            self._asked[claim.ref[0], claim.ref[1], request.attempt] = len(self.log)
            self._write(
                JobUpdate(
                    request.execution_id, request.job_id, "completed", request.attempt, 0, 0, video
                )
            )

    def completed(self, results: Sequence[tuple[Claim, Video]], outcome: CompleteOutcome) -> None:
        for claim in outcome.refused:
            key = (claim.ref[0], claim.ref[1], claim.request.attempt)
            position = self._asked.pop(key)
            event = self.log[position]
            assert isinstance(event, Write)
            self.log[position] = Refused(event.change)
            self.journal.remove(event.change)
        self._ended(outcome.ended)

    def failed(self, claim: Claim, retry_at: float | None, outcome: EndOutcome) -> None:
        if not outcome.refused:
            request = claim.request
            status: JobStatus = "pending" if retry_at is not None else "failed"
            self._write(
                JobUpdate(request.execution_id, request.job_id, status, request.attempt, 0, 0)
            )
        self._ended(outcome.ended)

    def cancelled(self, execution_id: str, outcome: EndOutcome) -> None:
        self.cancel_ended.append(any(e.execution_id == execution_id for e in outcome.ended))
        self._ended(outcome.ended)

    async def submit(
        self, execution: Execution, fingerprint: str | None = None, *, now: float
    ) -> Execution:
        stored = await super().submit(execution, fingerprint, now=now)
        if stored.status in TERMINAL:  # e.g. a variant of a failed base: base_failed at once
            self._write(
                ExecutionUpdate(
                    stored.id,
                    stored.status,
                    None,
                    stored.completed_at,
                    None,
                    stored.error,
                    stored.generation,
                )
            )
            self.status[stored.id] = stored.status
        return stored

    def ended(self, execution_ids: Sequence[str]) -> bool:
        return all(self.status.get(i, "pending") in TERMINAL for i in execution_ids)


#: What a run watches: the store, or the job board.
Watched: TypeAlias = LoggedStorage | LoggedBoard


class LoggedProvider:
    """Delegates to a :class:`FakeVideoProvider` and logs how each call finished."""

    def __init__(self, inner: FakeVideoProvider, log: list[Event]) -> None:
        self.inner = inner
        self.log = log

    async def run(self, request: JobRequest) -> Video:
        outcome: Literal["ok", "error", "cancelled"] = "cancelled"
        try:
            video = await self.inner.run(request)
            outcome = "ok"
            return video
        except Exception:
            outcome = "error"
            raise
        finally:
            self.log.append(Finish(request.execution_id, request.job_id, request.attempt, outcome))


#: How many event-loop turns a provider call takes, picked at random per call.
HOLD_TURNS = (0, 0, 1, 2, 3)
#: On a job board, how many seconds it takes besides, picked at random per call.
BOARD_HOLD_SECONDS = (0.0, 0.0, 0.001, 0.003, 0.01)


class ScriptedCalls:
    """The fake provider's ``on_call`` hook: logs the start, holds the job for a few turns of the
    event loop (so that jobs interleave and cancellations land mid-call), then raises the
    scripted failure, if any."""

    def __init__(self, log: list[Event], seed: int, *, board: bool = False) -> None:
        self.log = log
        self.rng = random.Random(seed)
        self.failures: dict[str, Mapping[str, Failure]] = {}
        self.unknown: list[str] = []
        #: On a job board a job may be claimed before ``submit`` returns its id to the test:
        #: the call waits for the test to register the execution (``known``) instead.
        self.board = board
        self.known = anyio.Event()

    def register(self, execution_id: str, failures: Mapping[str, Failure]) -> None:
        self.failures[execution_id] = failures
        self.known.set()
        self.known = anyio.Event()

    async def __call__(self, request: JobRequest) -> None:
        self.log.append(Start(request.execution_id, request.job_id, request.attempt))
        if self.board:
            with anyio.fail_after(HANG_TIMEOUT):
                while request.execution_id not in self.failures:
                    await self.known.wait()
        elif request.execution_id not in self.failures:
            self.unknown.append(request.execution_id)
        for _ in range(self.rng.choice(HOLD_TURNS)):
            await anyio.lowlevel.checkpoint()
        if self.board:  # real time lets other claims and completions interleave
            await anyio.sleep(self.rng.choice(BOARD_HOLD_SECONDS))
        failure = self.failures.get(request.execution_id, {}).get(request.job_id)
        if failure is not None and failure.fails(request.attempt):
            raise failure.error()


#: Seconds before a run that should take milliseconds counts as hung (a safety net only: a
#: stuck engine is detected as soon as every task is blocked).
HANG_TIMEOUT = 20.0


def make_engine(
    log: list[Event],
    hook: Callable[[JobRequest], Awaitable[None]],
    home: Home,
    *,
    workers: int,
    max_attempts: int = 3,
) -> tuple[Engine, Watched, RecordingNotifier]:
    notifier = RecordingNotifier()
    fake = FakeVideoProvider(on_call=hook)
    spec = EngineSpec(
        provider=LoggedProvider(fake, log),
        notifier=notifier,
        concurrency=workers,
        retry=RetryPolicy(max_attempts=max_attempts, initial_delay=0, jitter=False),
        clock=ManualClock(),
    )
    watched: list[Watched] = []

    def watch_store(store: Storage) -> Storage:
        logged = LoggedStorage(store, log)
        watched.append(logged)
        return logged

    def watch_board(board: JobBoard) -> JobBoard:
        logged = LoggedBoard(board, log)
        watched.append(logged)
        return logged

    engine = home.engine(spec, watch_store=watch_store, watch_board=watch_board)
    return engine, watched[0], notifier


#: Real seconds between looks at a run on a job board (it has no way to tell it is stuck).
BOARD_POLL = 0.002


async def run_until(done: Callable[[], bool], storage: Watched, why: Callable[[], str]) -> None:
    """Let the engine run until ``done()``; fail at once if every task is blocked first with no
    store call in flight (the engine is stuck: nothing else can happen). On a job board the
    database works while every task waits for it, and a wake-up travels through the server:
    look every ``BOARD_POLL`` seconds, up to ``HANG_TIMEOUT`` (the run's own timeout)."""
    if isinstance(storage, LoggedBoard):
        while not done():  # noqa: ASYNC110 - what ``done`` reads changes with no event to wait on
            await anyio.sleep(BOARD_POLL)
        return
    log = storage.log
    seen, idle = len(log), 0
    while not done():
        if storage.inflight:
            await storage.idle.wait()
            idle = 0
            continue
        await anyio.lowlevel.checkpoint()
        if len(log) != seen:
            seen, idle = len(log), 0
            continue
        idle += 1
        if idle >= 100:
            await anyio.wait_all_tasks_blocked()
            if len(log) == seen and not done() and not storage.inflight:
                raise AssertionError(f"the engine is stuck: {why()}")
            idle = 0


async def until_ended(storage: Watched, execution_ids: Sequence[str]) -> None:
    """Let the engine run until every execution has ended."""

    def why() -> str:
        return f"executions not ended: {[storage.status.get(i, 'pending') for i in execution_ids]}"

    await run_until(lambda: storage.ended(execution_ids), storage, why)


@frozen
class Run:
    ids: list[str]
    events: list[Event]
    journal: list[Change]
    executions: list[Execution]
    deliveries: list[Notification]
    #: The in-process scheduler's, on a local store (``None`` on a job board).
    stats: SchedulerStats | None
    graph_nodes: list[str]
    unknown_calls: list[str]


async def run_scenario(scenario: Scenario, home: Home) -> Run:
    log: list[Event] = []
    calls = ScriptedCalls(log, scenario.seed, board=not home.local)
    engine, storage, notifier = make_engine(
        log, calls, home, workers=scenario.workers, max_attempts=scenario.max_attempts
    )
    ids: list[str] = []
    with anyio.fail_after(HANG_TIMEOUT):
        async with engine:
            for action in scenario.actions:
                if action.pause == SETTLE:
                    await until_ended(storage, ids)
                for _ in range(max(action.pause, 0)):
                    await anyio.lowlevel.checkpoint()
                if isinstance(action, Submit):
                    base = None if action.base is None else ids[action.base]
                    execution_id = await engine.submit(action.plan, base_execution_id=base)
                    calls.register(execution_id, action.failures)
                    ids.append(execution_id)
                elif isinstance(storage, LoggedBoard):
                    # Nothing is live in this process: the board's cancel says whether it ended
                    # the execution (live then) or found it ended; its ending is logged first.
                    target = ids[action.target]
                    asked = len(storage.cancel_ended)
                    await engine.cancel(target)  # not asked of the board if stored ended
                    log.append(CancelRequest(target, any(storage.cancel_ended[asked:])))
                    log.append(CancelDone(target))
                else:
                    target = ids[action.target]
                    log.append(CancelRequest(target, engine.scheduler.is_live(target)))
                    await engine.cancel(target)
                    log.append(CancelDone(target))
            await until_ended(storage, ids)

            def why() -> str:
                return f"{len(notifier.deliveries)} notifications for {len(ids)} executions"

            await run_until(lambda: len(notifier.deliveries) >= len(ids), storage, why)
            for _ in range(10):  # room for a wrong extra notification to arrive
                await anyio.lowlevel.checkpoint()
            executions = [await engine.get(execution_id) for execution_id in ids]
            stats = engine.scheduler.stats() if home.local else None
            graph_nodes = list(engine.scheduler.graph.nodes) if home.local else []
    return Run(
        ids=ids,
        events=log,
        journal=list(storage.journal),
        executions=executions,
        deliveries=list(notifier.deliveries),
        stats=stats,
        graph_nodes=graph_nodes,
        unknown_calls=calls.unknown,
    )


# --- invariants 1, 2, 3 on random runs ---------------------------------------------------------


@define
class Facts:
    """What a run's log says, indexed for the checks."""

    scenario: Scenario
    run: Run
    specs: dict[str, dict[str, JobSpec]] = field(factory=dict)
    base_of: dict[str, str | None] = field(factory=dict)
    final_of: dict[str, str] = field(factory=dict)
    executions: dict[str, Execution] = field(factory=dict)
    #: Log index of the write that recorded a job's completion.
    completed_at: dict[JobRef, int] = field(factory=dict)
    #: Log index of the write that ended an execution; how many writes did.
    ended_at: dict[str, int] = field(factory=dict)
    endings: Counter[str] = field(factory=Counter)
    #: Jobs the provider was called for.
    started: set[JobRef] = field(factory=set)

    @classmethod
    def of(cls, scenario: Scenario, run: Run) -> Facts:
        facts = cls(scenario, run)
        for index, submit in enumerate(scenario.submits):
            execution_id = run.ids[index]
            facts.specs[execution_id] = {job.id: job for job in submit.plan.jobs}
            facts.base_of[execution_id] = None if submit.base is None else run.ids[submit.base]
            facts.final_of[execution_id] = submit.plan.final_job.id
            facts.executions[execution_id] = run.executions[index]
        for index, event in enumerate(run.events):
            if isinstance(event, Start):
                facts.started.add((event.execution_id, event.job_id))
            if not isinstance(event, Write):
                continue
            change = event.change
            if isinstance(change, JobUpdate) and change.status == "completed":
                facts.completed_at.setdefault((change.execution_id, change.job_id), index)
            elif isinstance(change, ExecutionUpdate) and change.status in TERMINAL:
                facts.endings[change.execution_id] += 1
                facts.ended_at.setdefault(change.execution_id, index)
        return facts


def check_dependencies_complete_first(facts: Facts) -> None:
    """Invariant 1: no job starts (is written ``processing`` or reaches the provider) before
    every job it depends on completed; a variant's root jobs wait for its base's final job."""
    written_attempt: dict[JobRef, int] = {}

    def check_start(ref: JobRef, index: int, how: str) -> None:
        execution_id, job_id = ref
        job = facts.specs[execution_id][job_id]
        waits_for = [(execution_id, dep) for dep in job.depends_on]
        base = facts.base_of[execution_id]
        if not job.depends_on and base is not None:
            waits_for.append((base, facts.final_of[base]))
        for dep in waits_for:
            done = facts.completed_at.get(dep)
            assert done is not None and done < index, (
                f"{ref} was {how} at #{index}, but {dep} completed at #{done}"
            )
        end = facts.ended_at.get(execution_id)
        assert end is None or index < end, (
            f"{ref} was {how} at #{index}, after its execution ended at #{end}"
        )

    for index, event in enumerate(facts.run.events):
        if isinstance(event, Write) and isinstance(event.change, JobUpdate):
            change = event.change
            if change.status == "processing":
                ref = (change.execution_id, change.job_id)
                written_attempt[ref] = change.attempts
                check_start(ref, index, "written as processing")
        elif isinstance(event, Start):
            ref = (event.execution_id, event.job_id)
            assert written_attempt.get(ref) == event.attempt, (
                f"attempt {event.attempt} of {ref} reached the provider at #{index}, but the "
                f"last attempt written as processing is {written_attempt.get(ref)}"
            )
            check_start(ref, index, "sent to the provider")


def check_completion_recorded_once(facts: Facts) -> None:
    """Invariant 2: a job's completion is written once, never overwritten, and comes from a
    successful attempt; attempts of one job run one at a time, numbered 1, 2, ..."""
    completed: set[JobRef] = set()
    for change in facts.run.journal:
        if isinstance(change, JobUpdate):
            ref = (change.execution_id, change.job_id)
            assert ref not in completed, f"{ref} was written {change.status} after it completed"
            if change.status == "completed":
                completed.add(ref)

    attempts: defaultdict[JobRef, list[int]] = defaultdict(list)
    running: dict[JobRef, int] = {}
    succeeded: defaultdict[JobRef, set[int]] = defaultdict(set)
    for index, event in enumerate(facts.run.events):
        if isinstance(event, Start):
            ref = (event.execution_id, event.job_id)
            assert ref not in running, (
                f"attempt {event.attempt} of {ref} started at #{index} while attempt "
                f"{running.get(ref)} still ran"
            )
            assert event.attempt == len(attempts[ref]) + 1, (
                f"{ref} ran attempt {event.attempt} after attempts {attempts[ref]}"
            )
            attempts[ref].append(event.attempt)
            running[ref] = event.attempt
        elif isinstance(event, Finish):
            ref = (event.execution_id, event.job_id)
            assert running.pop(ref, None) == event.attempt
            if event.outcome == "ok":
                succeeded[ref].add(event.attempt)
        elif (
            isinstance(event, Write)
            and isinstance(event.change, JobUpdate)
            and event.change.status == "completed"
        ):
            change = event.change
            ref = (change.execution_id, change.job_id)
            assert change.attempts in succeeded[ref], (
                f"{ref} was written completed by attempt {change.attempts} at #{index}, "
                f"but the successful attempts so far are {sorted(succeeded[ref])}"
            )


def check_nothing_left_waiting(facts: Facts) -> None:
    """Invariant 3: every execution ends once, every job in it ends, a failed job fails its
    execution and cancels what had not run, dependents of a failed or cancelled base fail with
    ``base_failed``, and each execution notifies exactly once."""
    for execution_id, execution in facts.executions.items():
        assert execution.status in TERMINAL, f"{execution_id} is {execution.status}"
        assert facts.endings[execution_id] == 1, (
            f"{execution_id} was ended {facts.endings[execution_id]} times"
        )
        unfinished = [job.id for job in execution.jobs if job.status not in TERMINAL]
        assert not unfinished, f"{execution_id} ended {execution.status} with jobs {unfinished}"
        if execution.status == "completed":
            assert all(job.status == "completed" for job in execution.jobs)
            continue
        failed = [job.id for job in execution.jobs if job.status == "failed"]
        assert len(failed) <= 1, f"{execution_id}: several jobs failed: {failed}"
        if failed:
            assert execution.status == "failed" and execution.error is not None
            assert (execution.error.code, execution.error.job_id) == ("job_failed", failed[0])
        for job in execution.jobs:
            if (execution_id, job.id) not in facts.started:
                assert job.status == "cancelled", (
                    f"{execution_id}/{job.id} never ran but is {job.status}"
                )
        base = facts.base_of[execution_id]
        if base is None:
            continue
        base_status = facts.executions[base].status
        if base_status != "completed" and facts.ended_at[execution_id] > facts.ended_at[base]:
            assert execution.status == "failed" and execution.error is not None, execution
            assert execution.error.code == "base_failed", execution.error

    for execution_id, execution in facts.executions.items():
        base = facts.base_of[execution_id]
        if base is not None and facts.executions[base].status == "completed":
            assert execution.error is None or execution.error.code != "base_failed", execution

    notified = Counter(delivery.execution_id for delivery in facts.run.deliveries)
    assert notified == Counter(facts.run.ids), f"notifications per execution: {notified}"
    for delivery in facts.run.deliveries:
        assert delivery.status == facts.executions[delivery.execution_id].status

    stats = facts.run.stats
    assert facts.run.graph_nodes == [], "ended executions left in the live graph"
    if stats is not None:
        assert (stats.live_executions, stats.live_jobs) == (0, 0), stats


def expected_video(plan: ExecutionPlan, base_video: Video | None) -> tuple[float, str]:
    """Duration and aspect ratio of a plan's final video under FakeVideoProvider's rules."""
    out: dict[str, tuple[float, str]] = {}
    for job in plan.jobs:
        inputs = [out[dep] for dep in job.depends_on]
        if not job.depends_on and job.type in TRANSFORMS:
            assert base_video is not None
            inputs = [(base_video.duration, base_video.aspect_ratio)]
        params = job.params
        if job.type == "generate":
            video = (float(params["duration"]), str(params["aspectRatio"]))
        elif job.type == "merge":
            duration = sum(d for d, _ in inputs)
            if params["transition"] != "none":
                overlap = min(float(params["transitionDuration"]), min(d for d, _ in inputs))
                duration -= (len(inputs) - 1) * overlap
            video = (duration, inputs[0][1])
        elif job.type == "reframe":
            video = (inputs[0][0], str(params["aspectRatio"]))
        else:
            video = inputs[0]
        out[job.id] = (round(video[0], 6), video[1])
    return out[plan.final_job.id]


def check_outcomes(facts: Facts) -> None:
    """Each execution ends as its script says: cancelled if cancelled while live, else
    ``base_failed`` if its base did not complete, else ``job_failed`` if a job can never succeed
    (a permanent failure or more transient ones than attempts), else completed with the video
    FakeVideoProvider's rules give."""
    scenario, run = facts.scenario, facts.run
    cancelled = {
        event.execution_id
        for event in run.events
        if isinstance(event, CancelRequest) and event.was_live
    }
    #: Log windows (request, return) of the cancel calls made while their execution was live.
    windows: defaultdict[str, list[tuple[int, int]]] = defaultdict(list)
    asked: dict[str, int] = {}
    for position, event in enumerate(run.events):
        if isinstance(event, CancelRequest) and event.was_live:
            asked[event.execution_id] = position
        elif isinstance(event, CancelDone) and event.execution_id in asked:
            windows[event.execution_id].append((asked.pop(event.execution_id), position))
    for index, submit in enumerate(scenario.submits):
        execution_id = run.ids[index]
        execution = facts.executions[execution_id]
        base = facts.base_of[execution_id]
        fatal = {
            job_id
            for job_id, failure in submit.failures.items()
            if failure.fatal(scenario.max_attempts)
        }
        expected: tuple[str, str | None]
        if base is not None and facts.executions[base].status != "completed":
            expected = ("failed", "base_failed")
        elif fatal:
            expected = ("failed", "job_failed")
        else:
            expected = ("completed", None)
        error = execution.error
        got = (execution.status, None if error is None else error.code)
        if execution_id in cancelled:
            ended = facts.ended_at[execution_id]
            if got[0] == "cancelled" or not any(a < ended < b for a, b in windows[execution_id]):
                # Live when the cancel was asked for, and not ended on its own while the cancel
                # call read it (never in memory: nothing yields there before the cancel).
                expected = ("cancelled", "cancelled")
        assert got == expected, f"submission {index} ({execution_id}): {got} != {expected}"
        if expected[1] == "job_failed":
            assert error is not None and error.job_id in fatal, (error, fatal)
        if execution.status == "completed":
            assert execution.result is not None
            base_video = None if base is None else facts.executions[base].result
            duration, aspect = expected_video(submit.plan, base_video)
            assert execution.result.duration == pytest.approx(duration)
            assert execution.result.aspect_ratio == aspect


def available(backend: EngineBackend) -> EngineBackend:
    """Skip the tests of a backend this machine lacks (CI fails earlier: ``pg_support``)."""
    reason = backend.unavailable()
    if reason is not None:
        pytest.skip(reason)
    return backend


@pytest.mark.parametrize("backend", ENGINES, ids=lambda backend: backend.name)
def test_random_executions_keep_invariants(backend: EngineBackend) -> None:
    with available(backend).session() as fresh:

        @settings(max_examples=backend.examples(settings().max_examples))
        @given(scenario=scenarios())
        def check(scenario: Scenario) -> None:
            with fresh() as home:
                run = anyio.run(run_scenario, scenario, home)
            check_run(scenario, run)

        check()


def check_run(scenario: Scenario, run: Run) -> None:
    """Invariants 1-3 and the expected outcomes, read off one run."""
    facts = Facts.of(scenario, run)
    assert not run.unknown_calls, "a job ran before the test knew its execution"
    check_dependencies_complete_first(facts)
    check_completion_recorded_once(facts)
    check_nothing_left_waiting(facts)
    check_outcomes(facts)
    for execution in run.executions:
        code = execution.error.code if execution.error else None
        hypothesis.event(f"execution ended {execution.status}" + (f" ({code})" if code else ""))
    if any(isinstance(e, Finish) and e.outcome == "cancelled" for e in run.events):
        hypothesis.event("a running job was aborted")
    if any(isinstance(e, Start) and e.attempt > 1 for e in run.events):
        hypothesis.event("a job was retried")
    if any(
        s.base is not None and scenario.submits[s.base].base is not None for s in scenario.submits
    ):
        hypothesis.event("a chain of variants")


# --- invariant 5 ---------------------------------------------------------------------------------


class RootBarrier:
    """An ``on_call`` hook that holds every variant's root job until all of them have started:
    an engine that ran the variants one at a time would never open it."""

    def __init__(self, log: list[Event]) -> None:
        self.log = log
        self.roots: set[JobRef] = set()
        self.started: set[JobRef] = set()
        self.open = anyio.Event()
        #: Set once every variant is submitted: until then the base's jobs wait, so that on a
        #: store with I/O (slow submissions) the base is still running when its variants come.
        self.submitted = anyio.Event()

    async def __call__(self, request: JobRequest) -> None:
        self.log.append(Start(request.execution_id, request.job_id, request.attempt))
        await self.submitted.wait()
        ref = (request.execution_id, request.job_id)
        if ref in self.roots:
            self.started.add(ref)
            if self.started == self.roots:
                self.open.set()
            await self.open.wait()


#: Seconds for every variant's root job to start (a safety net: an engine that runs them one at
#: a time is caught as soon as every task is blocked).
BARRIER_TIMEOUT = 5.0


async def run_base_and_variants(
    base_plan: ExecutionPlan,
    variant_plans: Sequence[ExecutionPlan],
    workers: int,
    home: Home,
) -> tuple[list[Event], str, list[JobRef], list[Execution]]:
    log: list[Event] = []
    barrier = RootBarrier(log)
    engine, storage, _ = make_engine(log, barrier, home, workers=workers)
    with anyio.fail_after(HANG_TIMEOUT):
        async with engine:
            base = await engine.submit(base_plan)
            variants = [await engine.submit(plan, base_execution_id=base) for plan in variant_plans]
            # Every variant was admitted while its base still ran: it has to wait for it.
            if home.local:
                assert engine.scheduler.is_live(base)
            else:
                assert (await engine.get(base)).status not in TERMINAL
            roots = [(v, plan.jobs[0].id) for v, plan in zip(variants, variant_plans, strict=True)]
            barrier.roots = set(roots)
            barrier.submitted.set()
            with anyio.fail_after(BARRIER_TIMEOUT):

                def why() -> str:
                    return f"{len(barrier.started)} of {len(roots)} variant roots started"

                await run_until(barrier.open.is_set, storage, why)
            await until_ended(storage, [base, *variants])
            executions = [await engine.get(execution_id) for execution_id in [base, *variants]]
    return log, base, roots, executions


@pytest.mark.parametrize("workers", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("backend", ENGINES, ids=lambda backend: backend.name)
def test_variants_of_one_base_run_concurrently(backend: EngineBackend, workers: int) -> None:
    per_worker_count = max(5, settings().max_examples // 4)
    with available(backend).session() as fresh:

        @settings(max_examples=backend.examples(per_worker_count, floor=2))
        @given(data=st.data())
        def check(data: st.DataObject) -> None:
            check_variants_overlap(data, workers, fresh)

        check()


def check_variants_overlap(data: st.DataObject, workers: int, fresh: HomeMaker) -> None:
    """One example of ``test_variants_of_one_base_run_concurrently``."""
    base_plan = data.draw(plans(has_base=False, max_jobs=12), label="base plan")
    count = data.draw(st.integers(2, workers), label="variants")
    variant_plans = [data.draw(chain_plans(), label=f"variant {i}") for i in range(count)]

    with fresh() as home:
        events, base, roots, executions = anyio.run(
            run_base_and_variants, base_plan, variant_plans, workers, home
        )

    assert [execution.status for execution in executions] == ["completed"] * (count + 1)
    final = (base, base_plan.final_job.id)
    base_done = next(
        index
        for index, event in enumerate(events)
        if isinstance(event, Write)
        and isinstance(event.change, JobUpdate)
        and (event.change.execution_id, event.change.job_id) == final
        and event.change.status == "completed"
    )
    root_starts = [
        index
        for index, event in enumerate(events)
        if isinstance(event, Start) and (event.execution_id, event.job_id) in roots
    ]
    root_finishes = [
        index
        for index, event in enumerate(events)
        if isinstance(event, Finish) and (event.execution_id, event.job_id) in roots
    ]
    assert len(root_starts) == len(root_finishes) == count
    assert base_done < min(root_starts), "a variant started before its base's final job completed"
    assert max(root_starts) < min(root_finishes), "the variants' root jobs did not overlap"


# --- the scheduler as a state machine ------------------------------------------------------------

MACHINE_RETRY = RetryPolicy(max_attempts=3, initial_delay=0, jitter=False)
MACHINE_EXECUTIONS = 10
MACHINE_LIVE_EXECUTIONS = 4
MACHINE_EXTERNAL_BASES = 2


@define
class ModelJob:
    spec: JobSpec
    status: str = "pending"
    attempts: int = 0
    result: Video | None = None


@define
class ModelExecution:
    id: str
    base: str | None
    jobs: dict[str, ModelJob]
    final: str
    #: "live" or the terminal status.
    status: str = "live"
    #: Admitted while its base was live: its root jobs wait for the base's final job.
    waits_for_base: bool = False
    result: Video | None = None

    @property
    def live(self) -> bool:
        return self.status == "live"


@define
class ModelExternal:
    """A base execution run by another engine: this scheduler only hears how it ends."""

    id: str
    status: str = "live"
    result: Video | None = None


Ending: TypeAlias = tuple[str, str, str | None]


def _stored_with(execution: Execution, change: object) -> Execution:
    """``execution`` as a store holds it after ``change`` (only job and execution updates
    concern the scheduler)."""
    if isinstance(change, ExecutionUpdate):
        return attrs.evolve(
            execution,
            status=change.status,
            started_at=change.started_at,
            completed_at=change.completed_at,
            result=change.result,
            error=change.error,
            generation=change.generation,
        )
    if not isinstance(change, JobUpdate):
        return execution
    jobs = tuple(
        attrs.evolve(
            job,
            status=change.status,
            attempts=change.attempts,
            started_at=change.started_at,
            finished_at=change.finished_at,
            result=change.result,
            error=change.error,
        )
        if job.id == change.job_id
        else job
        for job in execution.jobs
    )
    return attrs.evolve(execution, jobs=jobs)


class SchedulerMachine(RuleBasedStateMachine):
    """Drives :class:`Scheduler` with random events and checks every step against a model.

    Steps are written to a simulated store later, by their own rule, as a slow storage would:
    a variant admitted in between must still see its base's ending. Some variants wait for a
    base run by another engine (``external``), whose ending the scheduler is told of.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scheduler = Scheduler(retry=MACHINE_RETRY, rng=random.Random(0))
        self.now = 1_000.0
        self.model: dict[str, ModelExecution] = {}
        self.external: dict[str, ModelExternal] = {}
        self.stored: dict[str, Execution] = {}
        self.unwritten: list[Step] = []
        #: Jobs the scheduler said were ready (or due for retry) and that have not started since.
        self.reported: set[JobRef] = set()
        self.completions: Counter[JobRef] = Counter()

    # --- model queries --------------------------------------------------------------------------

    def tick(self) -> float:
        self.now += 1.0
        return self.now

    def job(self, ref: JobRef) -> ModelJob:
        return self.model[ref[0]].jobs[ref[1]]

    def is_ready(self, ref: JobRef) -> bool:
        execution = self.model[ref[0]]
        job = execution.jobs[ref[1]]
        if not execution.live or job.status != "pending":
            return False
        if not job.spec.depends_on:
            return not execution.waits_for_base
        return all(execution.jobs[dep].status == "completed" for dep in job.spec.depends_on)

    def refs(self) -> list[JobRef]:
        return [(e.id, job_id) for e in self.model.values() for job_id in e.jobs]

    def ready_refs(self) -> list[JobRef]:
        return [ref for ref in self.refs() if self.is_ready(ref)]

    def unready_refs(self) -> list[JobRef]:
        return [ref for ref in self.refs() if not self.is_ready(ref)]

    def running_refs(self) -> list[JobRef]:
        return [
            ref
            for ref in self.refs()
            if self.model[ref[0]].live and self.job(ref).status == "processing"
        ]

    def stale_reports(self) -> list[tuple[JobRef, int]]:
        """(job, attempt) pairs whose result the scheduler must ignore."""
        out: list[tuple[JobRef, int]] = []
        for ref in self.refs():
            job = self.job(ref)
            if job.attempts == 0:
                continue
            if self.model[ref[0]].live and job.status == "processing":
                out.append((ref, job.attempts + 1))
                if job.attempts > 1:
                    out.append((ref, job.attempts - 1))
            else:
                out.append((ref, job.attempts))
        return out

    def base_status(self, base: str) -> str:
        """ "live" or the terminal status of a base, run here or elsewhere."""
        known = self.model.get(base)
        return known.status if known is not None else self.external[base].status

    def base_result(self, base: str) -> Video | None:
        known = self.model.get(base)
        return known.result if known is not None else self.external[base].result

    def waiting_on(self, base: str) -> list[ModelExecution]:
        """The live executions whose root jobs wait for ``base``'s final job."""
        return [e for e in self.model.values() if e.live and e.waits_for_base and e.base == base]

    def expected_inputs(self, ref: JobRef) -> tuple[Video, ...]:
        execution = self.model[ref[0]]
        job = self.job(ref)
        if job.spec.depends_on:
            inputs = [execution.jobs[dep].result for dep in job.spec.depends_on]
        elif job.spec.type in TRANSFORMS:
            assert execution.base is not None
            inputs = [self.base_result(execution.base)]
        else:
            inputs = []
        assert all(video is not None for video in inputs)
        return tuple(video for video in inputs if video is not None)

    def end(
        self, execution_id: str, status: str, code: str | None
    ) -> tuple[list[Ending], set[JobRef]]:
        """End an execution in the model and, unless it completed, every live execution that
        (transitively) waits for it. Returns the endings and the running jobs to abort."""
        endings: list[Ending] = [(execution_id, status, code)]
        if status != "completed":
            frontier = [execution_id]
            while frontier:
                base = frontier.pop()
                for dependent in self.waiting_on(base):  # one base each: no repeats
                    hypothesis.event("machine: an ending failed a waiting variant")
                    endings.append((dependent.id, "failed", "base_failed"))
                    frontier.append(dependent.id)
        aborted: set[JobRef] = set()
        for ending_id, ending_status, _ in endings:
            execution = self.model[ending_id]
            execution.status = ending_status
            for job in execution.jobs.values():
                if job.status == "processing":
                    aborted.add((ending_id, job.spec.id))
                if job.status in ("pending", "processing"):
                    job.status = "cancelled"
            self.reported = {ref for ref in self.reported if ref[0] != ending_id}
        return endings, aborted

    def check_step(
        self,
        step: Step,
        *,
        ready: set[JobRef] | None = None,
        endings: Sequence[Ending] = (),
        aborted: set[JobRef] | None = None,
        retries: set[JobRef] | None = None,
    ) -> None:
        assert len(step.ready) == len(set(step.ready)), f"reported twice: {step.ready}"
        assert set(step.ready) == (ready or set())
        got = [(e.execution_id, e.status, e.error.code if e.error else None) for e in step.ended]
        assert got[:1] == list(endings[:1]) and sorted(got) == sorted(endings), (got, endings)
        assert set(step.abort) == (aborted or set())
        assert {ref for _, ref in step.retries} == (retries or set())
        assert all(due == self.now for due, _ in step.retries), "the policy has no delay"
        for ref in [*step.ready, *(ref for _, ref in step.retries)]:
            assert ref not in self.reported, f"{ref} was reported ready twice"
            assert self.is_ready(ref), f"{ref} was reported ready but is not"
            self.reported.add(ref)
        for change in step.changes:
            if isinstance(change, JobUpdate):
                ref = (change.execution_id, change.job_id)
                assert self.completions[ref] == 0, (
                    f"{ref} changed to {change.status} after it completed"
                )
                if change.status == "completed":
                    self.completions[ref] += 1
        self.unwritten.append(step)

    # --- rules ----------------------------------------------------------------------------------

    def may_admit(self) -> bool:
        """Few executions, so that steps go to their jobs rather than to admitting more."""
        live = sum(e.live for e in self.model.values())
        return len(self.model) < MACHINE_EXECUTIONS and live < MACHINE_LIVE_EXECUTIONS

    @precondition(may_admit)
    @rule(plan=plans(has_base=False, max_jobs=8))
    def admit(self, plan: ExecutionPlan) -> None:
        self._admit(plan, None)

    @precondition(lambda self: bool(self.model) and self.may_admit())
    @rule(plan=plans(has_base=True, max_jobs=6), data=st.data())
    def admit_variant(self, plan: ExecutionPlan, data: st.DataObject) -> None:
        base = data.draw(st.sampled_from(sorted(self.model)), label="base")
        self._admit(plan, base)

    def _admit(self, plan: ExecutionPlan, base: str | None) -> None:
        now = self.tick()
        execution_id = f"exec_{len(self.model) + 1}"
        execution = Execution(
            id=execution_id,
            status="pending",
            jobs=job_infos(plan.jobs),
            created_at=now,
            base_execution_id=base,
        )
        self.stored[execution_id] = execution  # the engine stores it, then admits it
        # As the engine does: the stored base, which may lag behind the scheduler.
        step = self.scheduler.admit(execution, None if base is None else self.stored[base], now)
        jobs = {job.id: ModelJob(job) for job in plan.jobs}
        model = ModelExecution(execution_id, base, jobs, plan.final_job.id)
        self.model[execution_id] = model
        endings: list[Ending] = []
        if base is not None:
            status = self.base_status(base)
            if base in self.model and status != "live" and self.stored[base].status != status:
                hypothesis.event("machine: variant admitted before its base's ending was written")
            if status == "live":
                model.waits_for_base = True
            elif status != "completed":
                endings, _ = self.end(execution_id, "failed", "base_failed")
        ready = {(execution_id, job_id) for job_id in jobs if self.is_ready((execution_id, job_id))}
        self.check_step(step, ready=ready, endings=endings)

    @precondition(lambda self: self.may_admit() and len(self.external) < MACHINE_EXTERNAL_BASES)
    @rule(plan=plans(has_base=True, max_jobs=6), data=st.data())
    def admit_variant_of_external_base(self, plan: ExecutionPlan, data: st.DataObject) -> None:
        new = f"ext_{len(self.external) + 1}"
        base = data.draw(st.sampled_from([*sorted(self.external), new]), label="external base")
        if base == new:
            self.external[base] = ModelExternal(base)
            self.stored[base] = Execution(base, "processing", (), self.now)
        self._admit(plan, base)

    @precondition(lambda self: any(e.status == "live" for e in self.external.values()))
    @rule(data=st.data(), status=st.sampled_from(("completed", "failed", "cancelled")))
    def external_base_ends(self, data: st.DataObject, status: ExecutionStatus) -> None:
        live = sorted(e.id for e in self.external.values() if e.status == "live")
        base = self.external[data.draw(st.sampled_from(live), label="external base")]
        result = Video(f"fake://{base.id}", 2.0, "1:1") if status == "completed" else None
        base.status, base.result = status, result
        self.stored[base.id] = attrs.evolve(self.stored[base.id], status=status, result=result)
        step = self.scheduler.base_ended(base.id, status, result, self.tick())
        ready: set[JobRef] = set()
        endings: list[Ending] = []
        for dependent in self.waiting_on(base.id):
            hypothesis.event(f"machine: an external base {status} with a variant waiting")
            if status == "completed":
                dependent.waits_for_base = False
                ready |= {
                    (dependent.id, j) for j in dependent.jobs if self.is_ready((dependent.id, j))
                }
            else:
                endings += self.end(dependent.id, "failed", "base_failed")[0]
        self.check_step(step, ready=ready, endings=endings)

    @precondition(lambda self: bool(self.ready_refs()))
    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        self.start_job(data.draw(st.sampled_from(self.ready_refs()), label="job"))

    def start_job(self, ref: JobRef) -> None:
        assert ref in self.reported, f"{ref} is ready but was never reported ready"
        started = self.scheduler.start(ref, self.tick())
        assert started is not None, f"{ref} is ready but did not start"
        request, step = started
        job = self.job(ref)
        job.status = "processing"
        job.attempts += 1
        self.reported.discard(ref)
        assert request.attempt == job.attempts
        assert request.inputs == self.expected_inputs(ref)
        assert request.idempotency_key == f"{ref[0]}/{ref[1]}"
        self.check_step(step)

    @precondition(lambda self: bool(self.unready_refs()))
    @rule(data=st.data())
    def start_unready(self, data: st.DataObject) -> None:
        ref = data.draw(st.sampled_from(self.unready_refs()), label="job")
        assert self.scheduler.start(ref, self.tick()) is None, f"{ref} started but is not ready"

    @precondition(lambda self: bool(self.running_refs()))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        self.complete_job(data.draw(st.sampled_from(self.running_refs()), label="job"))

    def complete_job(self, ref: JobRef) -> None:
        execution = self.model[ref[0]]
        job = self.job(ref)
        video = Video(f"fake://{ref[0]}/{ref[1]}/{job.attempts}", float(job.attempts), "16:9")
        step = self.scheduler.complete(ref, job.attempts, video, self.tick())
        job.status = "completed"
        job.result = video
        ready = {
            (execution.id, other.spec.id)
            for other in execution.jobs.values()
            if ref[1] in other.spec.depends_on and self.is_ready((execution.id, other.spec.id))
        }
        endings: list[Ending] = []
        if ref[1] == execution.final:
            execution.result = video
            for dependent in self.waiting_on(execution.id):
                hypothesis.event("machine: a base's completion released a variant")
                dependent.waits_for_base = False
                ready |= {
                    (dependent.id, job_id)
                    for job_id in dependent.jobs
                    if self.is_ready((dependent.id, job_id))
                }
            endings, _ = self.end(execution.id, "completed", None)
        self.check_step(step, ready=ready, endings=endings)
        if endings:
            assert step.ended[0].result == video

    def progressing(self) -> list[str]:
        return sorted({ref[0] for ref in [*self.ready_refs(), *self.running_refs()]})

    @precondition(lambda self: bool(self.progressing()))
    @rule(data=st.data())
    def run_execution(self, data: st.DataObject) -> None:
        """Start and complete every job of one execution, as far as it can go now."""
        execution_id = data.draw(st.sampled_from(self.progressing()), label="execution")
        while self.model[execution_id].live:
            running = [ref for ref in self.running_refs() if ref[0] == execution_id]
            ready = [ref for ref in self.ready_refs() if ref[0] == execution_id]
            if running:
                self.complete_job(running[0])
            elif ready:
                self.start_job(ready[0])
            else:
                break

    @precondition(lambda self: bool(self.running_refs()))
    @rule(data=st.data(), retryable=st.booleans())
    def fail(self, data: st.DataObject, retryable: bool) -> None:
        ref = data.draw(st.sampled_from(self.running_refs()), label="job")
        job = self.job(ref)
        step = self.scheduler.fail(ref, job.attempts, "boom", retryable=retryable, now=self.tick())
        if retryable and job.attempts < MACHINE_RETRY.max_attempts:
            job.status = "pending"
            self.check_step(step, retries={ref})
            return
        job.status = "failed"
        endings, aborted = self.end(ref[0], "failed", "job_failed")
        self.check_step(step, endings=endings, aborted=aborted)
        error = step.ended[0].error
        assert error is not None and error.job_id == ref[1]

    @precondition(lambda self: bool(self.stale_reports()))
    @rule(data=st.data(), outcome=st.sampled_from(("complete", "fail", "fail permanently")))
    def report_stale_attempt(self, data: st.DataObject, outcome: str) -> None:
        ref, attempt = data.draw(st.sampled_from(self.stale_reports()), label="stale attempt")
        before = self.scheduler.stats()
        now = self.tick()
        if outcome == "complete":
            video = Video(f"fake://stale/{ref[0]}/{ref[1]}/{attempt}", 1.0, "16:9")
            step = self.scheduler.complete(ref, attempt, video, now)
        else:
            retryable = outcome == "fail"
            step = self.scheduler.fail(ref, attempt, "late", retryable=retryable, now=now)
        assert not (step.changes or step.ready or step.retries or step.ended or step.abort), (
            f"a stale report of attempt {attempt} of {ref} changed something"
        )
        after = self.scheduler.stats()
        assert after == attrs.evolve(before, stale_results=before.stale_results + 1)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        execution_id = data.draw(st.sampled_from(sorted(self.model)), label="execution")
        step = self.scheduler.cancel(execution_id, self.tick())
        if not self.model[execution_id].live:
            assert not (step.changes or step.ended), "cancelling an ended execution changed it"
            return
        endings, aborted = self.end(execution_id, "cancelled", "cancelled")
        self.check_step(step, endings=endings, aborted=aborted)

    @precondition(lambda self: bool(self.unwritten))
    @rule()
    def write(self) -> None:
        step = self.unwritten.pop(0)
        for change in step.changes:
            self.stored[change.execution_id] = _stored_with(
                self.stored[change.execution_id], change
            )
        self.scheduler.written(step)

    # --- invariants -----------------------------------------------------------------------------

    @invariant()
    def readiness_is_consistent(self) -> None:
        """Reported ready (and not started since) exactly when every dependency completed."""
        reported = {
            ref
            for ref in self.reported
            if self.model[ref[0]].live and self.job(ref).status == "pending"
        }
        assert reported == set(self.ready_refs())

    @invariant()
    def no_job_completed_twice(self) -> None:
        assert all(count == 1 for count in self.completions.values())

    @invariant()
    def dependents_of_ended_executions_ended(self) -> None:
        for execution in self.model.values():
            if execution.live and execution.base is not None:
                status = self.base_status(execution.base)
                assert status in ("live", "completed"), (
                    f"{execution.id} is live but its base {execution.base} is {status}"
                )
            assert self.scheduler.is_live(execution.id) == execution.live, execution.id

    @invariant()
    def live_graph_holds_only_unfinished_work(self) -> None:
        live = {e.id for e in self.model.values() if e.live}
        external = {
            e.base
            for e in self.model.values()
            if e.live and e.waits_for_base and e.base in self.external
        }
        assert self.scheduler.external == external
        assert set(self.scheduler.graph.nodes) == live | external
        edges = {(e.base, e.id) for e in self.model.values() if e.live and e.waits_for_base}
        assert set(self.scheduler.graph.edges) == edges
        stats = self.scheduler.stats()
        unfinished = sum(
            1
            for e in self.model.values()
            if e.live
            for job in e.jobs.values()
            if job.status in ("pending", "processing")
        )
        assert (stats.live_executions, stats.live_jobs) == (len(live), unfinished)
        for execution_id in live:
            progress = self.scheduler.progress(execution_id)
            assert progress is not None
            done = sum(job.status == "completed" for job in self.model[execution_id].jobs.values())
            assert progress.completed_jobs == done


TestSchedulerMachine = SchedulerMachine.TestCase

"""The scheduler: the live DAG of unfinished work, across executions.

A pure, synchronous state machine. The engine feeds it events (a job started, completed, failed;
an execution was admitted or cancelled) and it answers with a :class:`Step`: the changes to write
to storage, the jobs that became ready, retries to schedule, running jobs to abort and executions
that ended. It never awaits, so one event's effects are decided atomically.

Two networkx graphs model the work:

- Each plan's jobs form a :class:`networkx.DiGraph` (an edge ``a -> b``: ``b`` waits for ``a``;
  edge data ``slot``: the index of ``a``'s video among ``b``'s inputs). It is computed once per
  plan shape (:class:`PlanShape`) and shared by every execution of that shape.
- The live executions form a DiGraph too: an edge ``base -> dependent`` joins a base execution's
  final job to every root job of the dependent execution (cross-execution edges).

Each unfinished job keeps a count of its unmet dependencies, so readiness is decided when a
dependency completes, never by re-scanning. An ended execution leaves the live graph and the
scheduler at once: they hold unfinished work only.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, cast

import networkx as nx
from attrs import define, field, frozen

from engine.catalogue import TRANSFORMS
from engine.models import (
    TERMINAL,
    Change,
    Ended,
    ErrorInfo,
    Execution,
    ExecutionStatus,
    ExecutionUpdate,
    JobInfo,
    JobRef,
    JobRequest,
    JobStatus,
    JobUpdate,
    Progress,
    StatusReport,
    Video,
    Webhook,
    percent,
)
from engine.retry import RetryPolicy


@frozen
class PlanShape:
    """The dependency structure of a plan, shared by every execution with the same jobs and edges.

    ``graph`` holds job ids; ``successors[i]`` lists ``(j, slot)``: job ``j`` takes job ``i``'s
    video as input number ``slot``. ``in_degree[i]`` is how many jobs job ``i`` waits for.
    """

    graph: nx.DiGraph
    ids: tuple[str, ...]
    index: dict[str, int]
    successors: tuple[tuple[tuple[int, int], ...], ...]
    in_degree: tuple[int, ...]
    roots: tuple[int, ...]
    final: int

    @classmethod
    def of(cls, jobs: Sequence[JobInfo]) -> PlanShape:
        graph = nx.DiGraph()
        graph.add_nodes_from(job.id for job in jobs)
        graph.add_edges_from(
            (dep, job.id, {"slot": slot}) for job in jobs for slot, dep in enumerate(job.depends_on)
        )
        ids = tuple(job.id for job in jobs)
        index = {job_id: i for i, job_id in enumerate(ids)}
        successors = tuple(
            tuple((index[succ], data["slot"]) for succ, data in graph.succ[job_id].items())
            for job_id in ids
        )
        sinks = [i for i, job_id in enumerate(ids) if graph.out_degree(job_id) == 0]
        return cls(
            graph=graph,
            ids=ids,
            index=index,
            successors=successors,
            in_degree=tuple(len(job.depends_on) for job in jobs),
            roots=tuple(i for i, job in enumerate(jobs) if not job.depends_on),
            final=sinks[-1],
        )


_NO_INPUTS: list[Video | None] = []


def _given(inputs: list[Video | None]) -> tuple[Video, ...]:
    """The videos a job was given (all of them once it is ready, bar a variant's root transform
    whose base ended without one)."""
    if None not in inputs:
        return cast("tuple[Video, ...]", tuple(inputs))
    return tuple(v for v in inputs if v is not None)


class Step:
    """What one event changed. The engine writes ``changes`` before acting on the rest."""

    __slots__ = ("abort", "changes", "ended", "progressed", "ready", "retries")

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.ready: list[JobRef] = []
        self.retries: list[tuple[float, JobRef]] = []
        self.abort: list[JobRef] = []
        self.progressed: list[str] = []
        self.ended: list[Ended] = []

    def extend(self, other: Step) -> None:
        self.changes.extend(other.changes)
        self.ready.extend(other.ready)
        self.retries.extend(other.retries)
        self.abort.extend(other.abort)
        self.progressed.extend(other.progressed)
        self.ended.extend(other.ended)


class _Job:
    __slots__ = (
        "attempts",
        "error",
        "execution_id",
        "finished_at",
        "id",
        "inputs",
        "params",
        "result",
        "started_at",
        "status",
        "type",
        "waiting",
    )

    def __init__(self, execution_id: str, info: JobInfo, waiting: int) -> None:
        self.execution_id = execution_id
        self.id = info.id
        self.type = info.type
        self.params = info.params
        self.status: JobStatus = info.status
        self.attempts = info.attempts
        self.waiting = waiting
        # A job without dependencies shares one empty list (never grown: inputs are set by
        # index, or the list replaced); most jobs of a plan are roots.
        self.inputs: list[Video | None] = (
            [None] * len(info.depends_on) if info.depends_on else _NO_INPUTS
        )
        self.started_at = info.started_at
        self.finished_at = info.finished_at
        self.result = info.result
        self.error = info.error

    def update(self) -> JobUpdate:
        return JobUpdate(
            self.execution_id,
            self.id,
            self.status,
            self.attempts,
            self.started_at,
            self.finished_at,
            self.result,
            self.error,
        )


@define(slots=True, eq=False)
class _Execution:
    id: str
    shape: PlanShape
    status: ExecutionStatus
    jobs: list[_Job]
    created_at: float
    started_at: float | None
    generation: int
    webhook: Webhook | None
    tenant: str | None
    completed: int
    running: dict[str, None] = field(factory=dict)

    def progress(self) -> Progress:
        total = len(self.jobs)
        current = next(iter(self.running), None)
        return Progress(
            self.id, self.completed, total, current, percent(self.completed, total), self.status
        )


@frozen
class SchedulerStats:
    attempts: int
    retries: int
    jobs_completed: int
    jobs_failed: int
    stale_results: int
    live_executions: int
    live_jobs: int


@define
class Scheduler:
    """The live DAG. See the module docstring."""

    retry: RetryPolicy = field(factory=RetryPolicy)
    rng: random.Random = field(factory=random.Random)
    #: Live executions; an edge ``base -> dependent`` is a cross-execution dependency. A base
    #: run by another engine is a node too, listed in ``external``, until its outcome is known.
    graph: nx.DiGraph = field(factory=nx.DiGraph, init=False)
    external: set[str] = field(factory=set, init=False)
    _executions: dict[str, _Execution] = field(factory=dict, init=False)
    _shapes: OrderedDict[tuple[Any, ...], PlanShape] = field(factory=OrderedDict, init=False)
    # Executions that ended but whose ending the engine has not yet written: what a dependent
    # admitted in that window must see.
    _unwritten_endings: dict[str, Ended] = field(factory=dict, init=False)
    _last_shape: tuple[Sequence[JobInfo], PlanShape] | None = field(default=None, init=False)
    _live_jobs: int = field(default=0, init=False)
    _attempts: int = field(default=0, init=False)
    _retries: int = field(default=0, init=False)
    _completed: int = field(default=0, init=False)
    _failed: int = field(default=0, init=False)
    _stale: int = field(default=0, init=False)

    # --- queries --------------------------------------------------------------------------------

    def is_live(self, execution_id: str) -> bool:
        return execution_id in self._executions

    def holds(self, ref: JobRef, attempt: int) -> bool:
        """Whether ``attempt`` of the job is the one running now."""
        live = self._executions.get(ref[0])
        if live is None:
            return False
        job = live.jobs[live.shape.index[ref[1]]]
        return job.status == "processing" and job.attempts == attempt

    def progress(self, execution_id: str) -> Progress | None:
        live = self._executions.get(execution_id)
        return None if live is None else live.progress()

    def live_status(self, execution_id: str, tenant: str | None) -> StatusReport | None:
        """The status of a live execution of ``tenant``; ``None`` if it is not live here."""
        live = self._executions.get(execution_id)
        if live is None or live.tenant != tenant:
            return None
        progress = live.progress()
        return StatusReport(
            status=progress.status,
            progress=progress.percent,
            total_jobs=progress.total_jobs,
            completed_jobs=progress.completed_jobs,
            current_job=progress.current_job,
        )

    def live_executions(self) -> list[str]:
        return list(self._executions)

    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            attempts=self._attempts,
            retries=self._retries,
            jobs_completed=self._completed,
            jobs_failed=self._failed,
            stale_results=self._stale,
            live_executions=len(self._executions),
            live_jobs=self._live_jobs,
        )

    def written(self, step: Step) -> None:
        """The engine has written ``step.changes``: endings no longer need remembering here."""
        for ended in step.ended:
            self._unwritten_endings.pop(ended.execution_id, None)

    def shape(self, jobs: Sequence[JobInfo]) -> PlanShape:
        """The shared shape of these jobs (cached by identity, then by structure)."""
        last = self._last_shape
        if last is not None and last[0] is jobs:
            return last[1]
        key = tuple((job.id, job.depends_on) for job in jobs)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = PlanShape.of(jobs)
            if len(self._shapes) > 256:
                self._shapes.popitem(last=False)
        self._last_shape = (jobs, shape)
        return shape

    # --- events ---------------------------------------------------------------------------------

    def admit(
        self, execution: Execution, base: Execution | None, now: float, *, resume: bool = False
    ) -> Step:
        """Add an execution's unfinished jobs to the live work.

        Used for new executions, for ones recovered from a durable store (a job that was
        ``processing`` in a dead process runs again) and for ``resume`` (failed and cancelled jobs
        run again). Completed jobs are reused: their videos feed their dependents.
        ``base`` is the stored base execution, consulted when the base is not live here.
        """
        step = Step()
        if execution.id in self._executions:
            return step
        status: ExecutionStatus = execution.status
        generation = execution.generation + 1 if resume else execution.generation
        infos = execution.jobs
        shape = self.shape(infos)
        jobs = [_Job(execution.id, info, 0) for info in infos]
        done = 0
        for i, job in enumerate(jobs):
            if job.status == "completed":
                done += 1
                for successor, slot in shape.successors[i]:
                    jobs[successor].inputs[slot] = job.result
            else:
                job.waiting += shape.in_degree[i]
        for i, job in enumerate(jobs):
            if job.status == "completed":
                for successor, _ in shape.successors[i]:
                    jobs[successor].waiting -= 1
            elif job.status != "pending":
                job.status = "pending"
                job.finished_at = None
                step.changes.append(job.update())
        if resume or status in TERMINAL:
            status = "processing" if done else "pending"
        if status != execution.status or generation != execution.generation:
            step.changes.append(
                ExecutionUpdate(
                    execution.id, status, execution.started_at, None, None, None, generation
                )
            )
        live = _Execution(
            id=execution.id,
            shape=shape,
            status=status,
            jobs=jobs,
            created_at=execution.created_at,
            started_at=execution.started_at,
            generation=generation,
            webhook=execution.webhook,
            tenant=execution.tenant,
            completed=done,
        )
        self._executions[execution.id] = live
        self._live_jobs += len(jobs) - done
        self.graph.add_node(execution.id)
        self.external.discard(execution.id)
        if execution.base_execution_id is not None:
            blocked = self._link_base(live, execution.base_execution_id, base)
            if blocked is not None:
                message = f"base execution {execution.base_execution_id} {blocked}"
                error = ErrorInfo("base_failed", message)
                step.extend(self._end(live, "failed", None, error, now))
                return step
        for job in jobs:
            if job.status == "pending" and job.waiting == 0:
                step.ready.append((execution.id, job.id))
        step.progressed.append(execution.id)
        return step

    def _link_base(self, live: _Execution, base_id: str, base: Execution | None) -> str | None:
        """Make ``live``'s roots wait for the base's final video. Returns why not, if it failed."""
        roots = [live.jobs[i] for i in live.shape.roots if live.jobs[i].status != "completed"]
        if not roots:
            return None
        ending = self._unwritten_endings.get(base_id)
        outcome: tuple[str, Video | None] | None = None
        if base_id in self._executions:
            outcome = None
        elif ending is not None:
            outcome = (ending.status, ending.result)
        elif base is not None and base.status in TERMINAL:
            outcome = (base.status, base.result)
        if outcome is None:
            if base_id not in self._executions:
                self.external.add(base_id)
            self.graph.add_edge(base_id, live.id)
            for job in roots:
                if job.type in TRANSFORMS:
                    job.inputs = [None]
                job.waiting += 1
            return None
        status, result = outcome
        if status != "completed":
            return status
        for job in roots:
            if job.type in TRANSFORMS:
                job.inputs = [result]
        return None

    def start(self, ref: JobRef, now: float) -> tuple[JobRequest, Step] | None:
        """A worker took ``ref``: start its next attempt, or ``None`` if it must not run now."""
        live = self._executions.get(ref[0])
        if live is None:
            return None
        job = live.jobs[live.shape.index[ref[1]]]
        if job.status != "pending" or job.waiting:
            return None
        job.status = "processing"
        job.attempts += 1
        job.started_at = now
        job.finished_at = None
        self._attempts += 1
        live.running[job.id] = None
        step = Step()
        if live.status == "pending":
            live.status = "processing"
            live.started_at = now
            step.changes.append(
                ExecutionUpdate(live.id, "processing", now, None, None, None, live.generation)
            )
        step.changes.append(job.update())
        step.progressed.append(live.id)
        request = JobRequest(
            execution_id=ref[0],
            job_id=ref[1],
            type=job.type,
            params=job.params,
            inputs=_given(job.inputs),
            attempt=job.attempts,
            idempotency_key=f"{ref[0]}/{ref[1]}",
        )
        return request, step

    def complete(self, ref: JobRef, attempt: int, video: Video, now: float) -> Step:
        """Record a result. Only the attempt that holds the job counts; any other is ignored."""
        step = Step()
        found = self._current(ref, attempt)
        if found is None:
            return step
        live, index, job = found
        job.status = "completed"
        job.result = video
        job.error = None
        job.finished_at = now
        live.completed += 1
        del live.running[job.id]
        self._completed += 1
        self._live_jobs -= 1
        step.changes.append(job.update())
        jobs = live.jobs
        for successor, slot in live.shape.successors[index]:
            waiting = jobs[successor]
            waiting.inputs[slot] = video
            waiting.waiting -= 1
            if waiting.waiting == 0 and waiting.status == "pending":
                step.ready.append((live.id, waiting.id))
        if index == live.shape.final:
            self._release_dependents(live.id, video, step)
            step.extend(self._end(live, "completed", video, None, now))
        else:
            step.progressed.append(live.id)
        return step

    def base_ended(
        self, base_id: str, status: ExecutionStatus, result: Video | None, now: float
    ) -> Step:
        """A base run by another engine ended: release or fail the dependents waiting here."""
        step = Step()
        if base_id not in self.external:
            return step
        if status == "completed" and result is not None:
            self._release_dependents(base_id, result, step)
        elif status in TERMINAL:
            for dependent_id in list(self.graph.succ[base_id]):
                dependent = self._executions.get(dependent_id)
                if dependent is not None:
                    error = ErrorInfo("base_failed", f"base execution {base_id} {status}")
                    step.extend(self._end(dependent, "failed", None, error, now))
        else:
            return step
        self.external.discard(base_id)
        if base_id in self.graph:
            self.graph.remove_node(base_id)
        return step

    def drop(self, execution_ids: Iterable[str]) -> list[JobRef]:
        """Forget executions another engine now holds; returns their running jobs, to abort.

        Dependents still waiting here keep waiting, on an external base.
        """
        running: list[JobRef] = []
        for execution_id in execution_ids:
            live = self._executions.pop(execution_id, None)
            if live is None:
                continue
            running.extend((execution_id, job_id) for job_id in live.running)
            self._live_jobs -= sum(
                1 for job in live.jobs if job.status in ("pending", "processing")
            )
            if self.graph.out_degree(execution_id):
                self.external.add(execution_id)
                for base_id in list(self.graph.pred[execution_id]):
                    self.graph.remove_edge(base_id, execution_id)
                    self._prune_external(base_id)
            else:
                self._remove_node(execution_id)
        return running

    def _remove_node(self, execution_id: str) -> None:
        bases = list(self.graph.pred[execution_id])
        self.graph.remove_node(execution_id)
        for base_id in bases:
            self._prune_external(base_id)

    def _prune_external(self, base_id: str) -> None:
        if base_id in self.external and not self.graph.out_degree(base_id):
            self.external.discard(base_id)
            self.graph.remove_node(base_id)

    def _release_dependents(self, base_id: str, video: Video, step: Step) -> None:
        for dependent_id in self.graph.succ[base_id]:
            dependent = self._executions[dependent_id]
            for i in dependent.shape.roots:
                job = dependent.jobs[i]
                if job.status == "completed":
                    continue
                if job.type in TRANSFORMS:
                    job.inputs[0] = video
                job.waiting -= 1
                if job.waiting == 0 and job.status == "pending":
                    step.ready.append((dependent_id, job.id))

    def fail(self, ref: JobRef, attempt: int, message: str, *, retryable: bool, now: float) -> Step:
        """An attempt failed: retry it later, or fail the job and its execution."""
        step = Step()
        found = self._current(ref, attempt)
        if found is None:
            return step
        live, _, job = found
        del live.running[job.id]
        job.finished_at = now
        job.error = ErrorInfo("job_failed", message, job.id)
        if retryable and self.retry.should_retry(job.attempts):
            job.status = "pending"
            self._retries += 1
            step.changes.append(job.update())
            step.retries.append((now + self.retry.delay(job.attempts, self.rng), ref))
            step.progressed.append(live.id)
            return step
        job.status = "failed"
        self._failed += 1
        self._live_jobs -= 1
        step.changes.append(job.update())
        attempts = "attempt" if job.attempts == 1 else "attempts"
        error = ErrorInfo("job_failed", f"{message} (after {job.attempts} {attempts})", job.id)
        step.extend(self._end(live, "failed", None, error, now))
        return step

    def cancel(self, execution_id: str, now: float, reason: str = "cancelled by request") -> Step:
        live = self._executions.get(execution_id)
        if live is None:
            return Step()
        return self._end(live, "cancelled", None, ErrorInfo("cancelled", reason), now)

    # --- internals ------------------------------------------------------------------------------

    def _current(self, ref: JobRef, attempt: int) -> tuple[_Execution, int, _Job] | None:
        live = self._executions.get(ref[0])
        if live is not None:
            index = live.shape.index[ref[1]]
            job = live.jobs[index]
            if job.status == "processing" and job.attempts == attempt:
                return live, index, job
        self._stale += 1
        return None

    def _end(
        self,
        live: _Execution,
        status: ExecutionStatus,
        result: Video | None,
        error: ErrorInfo | None,
        now: float,
    ) -> Step:
        """End ``live`` and, unless it completed, every execution that depends on it."""
        step = Step()
        ending: list[tuple[_Execution, ExecutionStatus, ErrorInfo | None]] = [(live, status, error)]
        if status != "completed":
            for dependent_id in self._dependents_in_order(live.id):
                dependent = self._executions[dependent_id]
                base_id = next(iter(self.graph.pred[dependent_id]))
                how = status if base_id == live.id else "failed"
                message = f"base execution {base_id} {how}"
                ending.append((dependent, "failed", ErrorInfo("base_failed", message)))
        for execution, e_status, e_error in ending:
            for job in execution.jobs:
                if job.status in ("pending", "processing"):
                    if job.status == "processing":
                        step.abort.append((execution.id, job.id))
                        job.finished_at = now
                    job.status = "cancelled"
                    self._live_jobs -= 1
                    step.changes.append(job.update())
            execution.status = e_status
            execution.running.clear()
            e_result = result if execution is live else None
            step.changes.append(
                ExecutionUpdate(
                    execution.id,
                    e_status,
                    execution.started_at,
                    now,
                    e_result,
                    e_error,
                    execution.generation,
                )
            )
            ended = Ended(
                execution_id=execution.id,
                status=e_status,
                result=e_result,
                error=e_error,
                progress=execution.progress(),
                generation=execution.generation,
                created_at=execution.created_at,
                completed_at=now,
                webhook=execution.webhook,
                tenant=execution.tenant,
            )
            step.ended.append(ended)
            self._unwritten_endings[execution.id] = ended
        for execution, _, _ in ending:
            del self._executions[execution.id]
            self._remove_node(execution.id)
        return step

    def _dependents_in_order(self, execution_id: str) -> list[str]:
        """Every execution that waits on this one, directly or through others, bases first."""
        dependents = nx.descendants(self.graph, execution_id)
        if not dependents:
            return []
        position = {execution_id: i for i, execution_id in enumerate(self._executions)}
        subgraph = self.graph.subgraph(dependents)
        order: list[str] = list(
            nx.lexicographical_topological_sort(subgraph, key=lambda n: position.get(n, -1))
        )
        return order


def job_infos(plan_jobs: Iterable[Any]) -> tuple[JobInfo, ...]:
    """Fresh, pending :class:`JobInfo` records for a plan's jobs."""
    return tuple(JobInfo(job.id, job.type, job.params, tuple(job.depends_on)) for job in plan_jobs)

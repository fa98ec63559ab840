"""In-memory storage: executions in a dict, for tests and single-process embedding."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import attrs
from attrs import define, field

from engine.errors import IdempotencyConflict, StorageError
from engine.models import Change, Execution, ExecutionUpdate, JobInfo, JobUpdate

_UNFINISHED = frozenset({"pending", "processing"})


@define
class MemoryStorage:
    """Keeps every execution in memory. Nothing survives the process.

    ``journal`` records every applied change, in order, for tests that check what was written
    (a job's completion must be written exactly once, for instance); ``keep_journal=False``
    turns it off for long-running use.
    """

    keep_journal: bool = True
    journal: list[Change] = field(factory=list, init=False)
    _executions: dict[str, Execution] = field(factory=dict, init=False)
    # Job updates not yet folded into the stored snapshot; folded lazily on read, so a write is
    # one dict assignment.
    _pending: dict[str, dict[str, JobUpdate]] = field(factory=dict, init=False)
    _idempotency: dict[tuple[str | None, str], tuple[str, str | None]] = field(
        factory=dict, init=False
    )
    _counts: Counter[str] = field(factory=Counter, init=False)
    _job_ids: dict[str, frozenset[str]] = field(factory=dict, init=False)

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def create(self, execution: Execution, fingerprint: str | None = None) -> Execution:
        if execution.idempotency_key is not None:
            scope = (execution.tenant, execution.idempotency_key)
            known = self._idempotency.get(scope)
            if known is not None:
                existing_id, existing_fingerprint = known
                if existing_fingerprint != fingerprint:
                    raise IdempotencyConflict(
                        f"idempotency key {execution.idempotency_key!r} was already used "
                        "with a different request"
                    )
                return self._snapshot(existing_id)
            self._idempotency[scope] = (execution.id, fingerprint)
        self._executions[execution.id] = execution
        self._pending[execution.id] = {}
        self._job_ids[execution.id] = frozenset(job.id for job in execution.jobs)
        self._counts[execution.status] += 1
        return execution

    async def get(self, execution_id: str) -> Execution | None:
        if execution_id not in self._executions:
            return None
        return self._snapshot(execution_id)

    def _snapshot(self, execution_id: str) -> Execution:
        execution = self._executions[execution_id]
        updates = self._pending[execution_id]
        if updates:
            jobs = tuple(
                _job_with(job, updates[job.id]) if job.id in updates else job
                for job in execution.jobs
            )
            execution = attrs.evolve(execution, jobs=jobs)
            self._executions[execution_id] = execution
            updates.clear()
        return execution

    async def apply(self, changes: Sequence[Change]) -> None:
        self._check_targets(changes)
        for change in changes:
            if isinstance(change, JobUpdate):
                self._pending[change.execution_id][change.job_id] = change
            else:
                self._apply_execution(change)
        if self.keep_journal:
            self.journal.extend(changes)

    def _check_targets(self, changes: Sequence[Change]) -> None:
        """Refuse the whole ``apply`` (all or nothing) when a change names nothing stored."""
        missing: list[str] = []
        for change in changes:
            job_ids = self._job_ids.get(change.execution_id)
            if job_ids is None:
                missing.append(f"execution {change.execution_id!r}")
            elif isinstance(change, JobUpdate) and change.job_id not in job_ids:
                missing.append(f"job {change.job_id!r} of execution {change.execution_id!r}")
        if missing:
            raise StorageError(
                f"cannot apply changes: no such {', '.join(dict.fromkeys(missing))}; "
                "nothing was applied"
            )

    def _apply_execution(self, change: ExecutionUpdate) -> None:
        execution = self._executions[change.execution_id]
        self._counts[execution.status] -= 1
        self._counts[change.status] += 1
        self._executions[change.execution_id] = attrs.evolve(
            execution,
            status=change.status,
            started_at=change.started_at,
            completed_at=change.completed_at,
            result=change.result,
            error=change.error,
            generation=change.generation,
        )

    async def unfinished(self) -> list[Execution]:
        return [self._snapshot(e.id) for e in self._executions.values() if e.status in _UNFINISHED]

    async def counts(self) -> dict[str, int]:
        return {status: n for status, n in self._counts.items() if n}

    def reset(self) -> None:
        self.journal.clear()
        self._executions.clear()
        self._pending.clear()
        self._idempotency.clear()
        self._counts.clear()
        self._job_ids.clear()


def _job_with(job: JobInfo, change: JobUpdate) -> JobInfo:
    return attrs.evolve(
        job,
        status=change.status,
        attempts=change.attempts,
        started_at=change.started_at,
        finished_at=change.finished_at,
        result=change.result,
        error=change.error,
    )

"""In-memory storage: executions in a dict, for tests and single-process embedding."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Collection, Iterator, Sequence

import attrs
from attrs import define, field

from engine.errors import IdempotencyConflict, LeaseLost, StorageError
from engine.models import (
    Change,
    DeliveryAttempt,
    DeliveryRecorded,
    Execution,
    ExecutionStatus,
    ExecutionUpdate,
    JobInfo,
    JobUpdate,
    Notification,
    OutboxAdd,
    OutboxDone,
    OutboxReset,
    OutboxStatus,
)

_UNFINISHED = frozenset({"pending", "processing"})

_OutboxChange = OutboxAdd | DeliveryRecorded | OutboxDone | OutboxReset


@define
class _Event:
    """One webhook event of the outbox. ``payload`` is kept as JSON, as a durable store would,
    so every notification built from it has a fresh copy."""

    execution_id: str
    status: ExecutionStatus
    payload: str
    seq: int
    state: OutboxStatus = "pending"


@define
class MemoryStorage:
    """Keeps every execution in memory. Nothing survives the process.

    ``journal`` records every applied change, in order, for tests that check what was written
    (a job's completion must be written exactly once, for instance); ``keep_journal=False``
    turns it off for long-running use.

    Several engines in one process may share one instance: executions are held, leased and
    fenced as the :class:`~engine.ports.Storage` port says. Ownership choices, the same as
    :class:`~adapters.sqlite.SqliteStorage`'s:

    - ``create`` with an ``owner`` and no ``lease_until`` holds the execution with no expiry
      (``holders()`` reports ``math.inf``) until it is released or claimed from a dead owner.
    - A finished execution stays held by its last holder (its late writes are still accepted);
      ``release(owner)`` without ``ids`` gives up the unfinished executions only, since a hold
      on a finished one blocks no claim. ``release(owner, ids)`` gives up those ids, finished
      or not.
    - ``claim`` with ``limit <= 0`` takes nothing.

    The webhook outbox behaves as SQLite's does: an ``OutboxAdd`` payload must be JSON (it is
    stored as JSON, so notifications carry a copy), an event id is added once, and the delivery
    log is kept per execution.
    """

    #: Nothing outlives the process (see :attr:`engine.ports.Store.durable`).
    durable = False

    keep_journal: bool = True
    journal: list[Change] = field(factory=list, init=False)
    _executions: dict[str, Execution] = field(factory=dict, init=False)
    # Job updates not yet folded into the stored snapshot; folded lazily on read, so a write is
    # one dict assignment.
    _pending: dict[str, dict[str, JobUpdate]] = field(factory=dict, init=False)
    # The same for execution updates: the last one not yet folded in, and each one's status.
    _pending_executions: dict[str, ExecutionUpdate] = field(factory=dict, init=False)
    _status: dict[str, ExecutionStatus] = field(factory=dict, init=False)
    _idempotency: dict[tuple[str | None, str], tuple[str, str | None]] = field(
        factory=dict, init=False
    )
    _counts: Counter[str] = field(factory=Counter, init=False)
    _tenant_counts: Counter[tuple[str | None, str]] = field(factory=Counter, init=False)
    _job_ids: dict[str, frozenset[str]] = field(factory=dict, init=False)
    _last_job_ids: tuple[tuple[JobInfo, ...], frozenset[str]] | None = field(
        default=None, init=False
    )
    # Creation order, for "oldest first".
    _seq: dict[str, int] = field(factory=dict, init=False)
    # Executions pending or processing.
    _open: set[str] = field(factory=set, init=False)
    # Who holds each held execution (finished or not), and until when.
    _holder: dict[str, str] = field(factory=dict, init=False)
    _lease: dict[str, float] = field(factory=dict, init=False)
    # The unfinished executions each engine holds: what renew() and holders() read (with the
    # pending events, for the finished executions that still have some).
    _held: dict[str, set[str]] = field(factory=dict, init=False)
    # The webhook outbox: every event by id, the pending ones, attempts logged per event, the
    # delivery log per execution, and events per outbox status.
    _events: dict[str, _Event] = field(factory=dict, init=False)
    _pending_events: set[str] = field(factory=set, init=False)
    _attempts: Counter[str] = field(factory=Counter, init=False)
    _deliveries: dict[str, list[DeliveryAttempt]] = field(factory=dict, init=False)
    _outbox_counts: Counter[str] = field(factory=Counter, init=False)

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def create(
        self,
        execution: Execution,
        fingerprint: str | None = None,
        *,
        owner: str | None = None,
        lease_until: float | None = None,
    ) -> Execution:
        execution_id = execution.id
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
        if execution_id in self._executions:
            raise StorageError(f"cannot create execution {execution_id!r}: the id is taken")
        if execution.idempotency_key is not None:
            self._idempotency[execution.tenant, execution.idempotency_key] = (
                execution_id,
                fingerprint,
            )
        self._executions[execution_id] = execution
        self._pending[execution_id] = {}
        self._status[execution_id] = execution.status
        self._job_ids[execution_id] = self._job_id_set(execution.jobs)
        self._seq[execution_id] = len(self._seq)
        self._counts[execution.status] += 1
        self._tenant_counts[execution.tenant, execution.status] += 1
        unfinished = execution.status in _UNFINISHED
        if unfinished:
            self._open.add(execution_id)
        if owner is not None:
            lease = math.inf if lease_until is None else lease_until
            self._hold(execution_id, owner, lease, unfinished)
        return execution

    def _job_id_set(self, jobs: tuple[JobInfo, ...]) -> frozenset[str]:
        """The ids of ``jobs``, shared by executions of one plan (the engine hands them the same
        job records): one set, not one per execution."""
        last = self._last_job_ids
        if last is not None and last[0] is jobs:
            return last[1]
        ids = frozenset(job.id for job in jobs)
        self._last_job_ids = (jobs, ids)
        return ids

    async def get(self, execution_id: str) -> Execution | None:
        if execution_id not in self._executions:
            return None
        return self._snapshot(execution_id)

    def _snapshot(self, execution_id: str) -> Execution:
        execution = self._executions[execution_id]
        updates = self._pending[execution_id]
        change = self._pending_executions.pop(execution_id, None)
        if updates or change is not None:
            jobs = execution.jobs
            if updates:
                jobs = tuple(
                    _job_with(job, updates[job.id]) if job.id in updates else job for job in jobs
                )
                updates.clear()
            if change is None:
                execution = attrs.evolve(execution, jobs=jobs)
            else:
                execution = attrs.evolve(
                    execution,
                    jobs=jobs,
                    status=change.status,
                    started_at=change.started_at,
                    completed_at=change.completed_at,
                    result=change.result,
                    error=change.error,
                    generation=change.generation,
                )
            self._executions[execution_id] = execution
        return execution

    async def apply(self, changes: Sequence[Change], *, owner: str | None = None) -> None:
        added = iter(self._check_targets(changes, owner))
        pending = self._pending
        for change in changes:
            if isinstance(change, JobUpdate):
                pending[change.execution_id][change.job_id] = change
            elif isinstance(change, ExecutionUpdate):
                self._apply_execution(change)
            else:
                self._apply_outbox(change, added)
        if self.keep_journal:
            self.journal.extend(changes)

    def _check_targets(self, changes: Sequence[Change], owner: str | None) -> Sequence[str]:
        """:meth:`_check_all`, with a fast path for the common call: job and execution updates
        of held executions (two per job run), which adds no event and allocates nothing."""
        job_ids_of = self._job_ids
        holder = self._holder
        checked = None
        for change in changes:
            if isinstance(change, JobUpdate):
                job_ids = job_ids_of.get(change.execution_id)
                if job_ids is None or change.job_id not in job_ids:
                    break
            elif not isinstance(change, ExecutionUpdate) or change.execution_id not in job_ids_of:
                break
            if owner is not None and change.execution_id != checked:
                checked = change.execution_id
                if holder.get(checked) != owner:
                    break
        else:
            return ()
        return self._check_all(changes, owner)

    def _check_all(self, changes: Sequence[Change], owner: str | None) -> list[str]:
        """Refuse the whole ``apply`` (all or nothing) when a change names nothing stored, or,
        with ``owner``, an execution ``owner`` does not hold, or an added event's payload is not
        JSON; return the added events' payloads (as stored).

        An unknown execution is reported first, then executions not held, then unknown jobs
        and webhook events, and added event ids that are taken (the order in which the SQLite
        store finds them). Outbox changes are checked in order: an event added earlier in the
        same call exists for the changes after it.
        """
        missing: list[str] = []
        taken: list[str] = []
        unknown_execution = False
        lost: list[str] = []
        job_ids_of = self._job_ids
        holder = self._holder
        events = self._events
        added: dict[str, str] = {}  # events added by this call: their executions
        payloads: list[str] = []
        checked = None  # the last execution checked: consecutive changes often share one
        for change in changes:
            execution_id = change.execution_id
            job_ids = job_ids_of.get(execution_id)
            if job_ids is None:
                missing.append(f"execution {execution_id!r}")
                unknown_execution = True
                continue
            if isinstance(change, JobUpdate):
                if change.job_id not in job_ids:
                    missing.append(f"job {change.job_id!r} of execution {execution_id!r}")
            elif isinstance(change, OutboxAdd):
                payloads.append(_payload(change))
                if change.event_id in events or change.event_id in added:
                    taken.append(repr(change.event_id))
                else:
                    added[change.event_id] = execution_id
            elif not isinstance(change, ExecutionUpdate):
                event_id = _event_id(change)
                known = events.get(event_id)
                of = known.execution_id if known is not None else added.get(event_id)
                if of != execution_id:
                    missing.append(f"webhook event {event_id!r} of execution {execution_id!r}")
            if owner is not None and execution_id != checked:
                checked = execution_id
                if holder.get(execution_id) != owner:
                    lost.append(execution_id)
        if lost and not unknown_execution:
            raise LeaseLost(lost)
        if missing:
            raise StorageError(
                f"cannot apply changes: no such {', '.join(dict.fromkeys(missing))}; "
                "nothing was applied"
            )
        if taken:
            raise StorageError(
                f"cannot apply changes: webhook event {', '.join(dict.fromkeys(taken))} already "
                "exists (an event is added once; OutboxReset sends it again); nothing was applied"
            )
        return payloads

    def _apply_execution(self, change: ExecutionUpdate) -> None:
        execution_id = change.execution_id
        status = self._status
        before, after = status[execution_id], change.status
        status[execution_id] = after
        tenant = self._executions[execution_id].tenant
        self._counts[before] -= 1
        self._counts[after] += 1
        self._tenant_counts[tenant, before] -= 1
        self._tenant_counts[tenant, after] += 1
        if (before in _UNFINISHED) != (after in _UNFINISHED):
            self._reopen(execution_id, after in _UNFINISHED)
        self._pending_executions[execution_id] = change  # folded in on the next read

    def _apply_outbox(self, change: _OutboxChange, payloads: Iterator[str]) -> None:
        if isinstance(change, OutboxAdd):
            event = _Event(change.execution_id, change.status, next(payloads), len(self._events))
            self._events[change.event_id] = event
            self._pending_events.add(change.event_id)
            self._outbox_counts["pending"] += 1
        elif isinstance(change, DeliveryRecorded):
            attempt = change.attempt
            self._attempts[attempt.event_id] += 1
            self._deliveries.setdefault(attempt.execution_id, []).append(attempt)
        elif isinstance(change, OutboxDone):
            self._set_state(change.event_id, change.status)
        else:
            self._set_state(change.event_id, "pending")

    def _set_state(self, event_id: str, state: OutboxStatus) -> None:
        event = self._events[event_id]
        self._outbox_counts[event.state] -= 1
        self._outbox_counts[state] += 1
        event.state = state
        if state == "pending":
            self._pending_events.add(event_id)
        else:
            self._pending_events.discard(event_id)

    def _reopen(self, execution_id: str, unfinished: bool) -> None:
        """An execution became unfinished again (``unfinished``), or finished."""
        holder = self._holder.get(execution_id)
        if unfinished:
            self._open.add(execution_id)
            if holder is not None:
                self._held.setdefault(holder, set()).add(execution_id)
        else:
            self._open.discard(execution_id)
            if holder is not None:
                self._drop_held(holder, execution_id)

    # --- ownership ------------------------------------------------------------------------------

    async def claim(
        self,
        owner: str,
        *,
        now: float,
        lease_until: float,
        limit: int | None = None,
        ids: Collection[str] | None = None,
        dead_owners: Collection[str] = (),
    ) -> list[Execution]:
        if limit is not None and limit <= 0:
            return []
        takeable = {*dead_owners, owner} if ids is not None else set(dead_owners)
        holder, lease, open_ = self._holder, self._lease, self._open

        def claimable(execution_id: str) -> bool:
            held_by = holder.get(execution_id)
            return held_by is None or held_by in takeable or lease[execution_id] < now

        if ids is None:
            chosen = [i for i in open_ if claimable(i)]
        else:
            chosen = [
                i for i in dict.fromkeys(ids) if i in self._seq and (i not in open_ or claimable(i))
            ]
        chosen.sort(key=self._seq.__getitem__)
        if limit is not None:
            del chosen[limit:]
        for execution_id in chosen:
            self._hold(execution_id, owner, lease_until, execution_id in open_)
        return [self._snapshot(execution_id) for execution_id in chosen]

    async def renew(self, owner: str, *, lease_until: float) -> set[str]:
        lease, holder, events = self._lease, self._holder, self._events
        for event_id in self._pending_events:  # finished executions with events to deliver
            execution_id = events[event_id].execution_id
            if holder.get(execution_id) == owner:
                lease[execution_id] = lease_until
        held = self._held.get(owner)
        if not held:
            return set()
        for execution_id in held:
            lease[execution_id] = lease_until
        return set(held)

    async def release(self, owner: str, ids: Collection[str] | None = None) -> None:
        if ids is None:
            targets: Collection[str] = self._held.pop(owner, ())
        else:
            targets = [i for i in dict.fromkeys(ids) if self._holder.get(i) == owner]
        for execution_id in targets:
            del self._holder[execution_id]
            del self._lease[execution_id]
            self._drop_held(owner, execution_id)

    async def holders(self) -> dict[str, float]:
        lease, holder, events, open_ = self._lease, self._holder, self._events, self._open
        latest = {owner: max(lease[i] for i in held) for owner, held in self._held.items()}
        for event_id in self._pending_events:  # finished executions with events to deliver
            execution_id = events[event_id].execution_id
            owner = holder.get(execution_id)
            if owner is not None and execution_id not in open_:
                latest[owner] = max(latest.get(owner, -math.inf), lease[execution_id])
        return latest

    async def claim_outbox(
        self,
        owner: str,
        *,
        now: float,
        lease_until: float,
        dead_owners: Collection[str] = (),
    ) -> list[Notification]:
        takeable = set(dead_owners)
        holder, lease, events, open_ = self._holder, self._lease, self._events, self._open
        taken: dict[str, bool] = {}  # each execution once: claimable or not
        chosen: list[tuple[str, _Event]] = []
        for event_id in sorted(self._pending_events, key=lambda e: events[e].seq):
            event = events[event_id]
            execution_id = event.execution_id
            if execution_id in open_:  # unfinished: claim() takes it over, with its events
                continue
            if execution_id not in taken:
                held_by = holder.get(execution_id)
                taken[execution_id] = (
                    held_by is None or held_by in takeable or lease[execution_id] < now
                )
            if taken[execution_id]:
                chosen.append((event_id, event))
        for execution_id, claimable in taken.items():
            if claimable:
                self._hold(execution_id, owner, lease_until, unfinished=False)
        notifications = []
        for event_id, event in chosen:
            execution = self._executions[event.execution_id]
            notifications.append(
                Notification(
                    event_id=event_id,
                    execution_id=event.execution_id,
                    status=event.status,
                    payload=json.loads(event.payload),
                    webhook=execution.webhook,
                    tenant=execution.tenant,
                    attempts_made=self._attempts[event_id],
                )
            )
        return notifications

    def _hold(self, execution_id: str, owner: str, lease_until: float, unfinished: bool) -> None:
        previous = self._holder.get(execution_id)
        if previous is not None and previous != owner:
            self._drop_held(previous, execution_id)
        self._holder[execution_id] = owner
        self._lease[execution_id] = lease_until
        if unfinished:
            self._held.setdefault(owner, set()).add(execution_id)

    def _drop_held(self, owner: str, execution_id: str) -> None:
        held = self._held.get(owner)
        if held is not None:
            held.discard(execution_id)
            if not held:
                del self._held[owner]

    # --- reads ----------------------------------------------------------------------------------

    async def unfinished(self) -> list[Execution]:
        return [self._snapshot(i) for i in sorted(self._open, key=self._seq.__getitem__)]

    async def counts(self, *, tenant: str | None = None) -> dict[str, int]:
        if tenant is None:
            return {status: n for status, n in self._counts.items() if n}
        return {status: n for (t, status), n in self._tenant_counts.items() if n and t == tenant}

    async def deliveries(self, execution_id: str) -> list[DeliveryAttempt]:
        return list(self._deliveries.get(execution_id, ()))

    async def outbox_counts(self) -> dict[str, int]:
        return {status: n for status, n in self._outbox_counts.items() if n}

    def holder(self, execution_id: str) -> str | None:
        """Which engine holds the execution now (finished or not), or ``None``; for tests."""
        return self._holder.get(execution_id)

    def reset(self) -> None:
        self.journal.clear()
        self._executions.clear()
        self._pending.clear()
        self._pending_executions.clear()
        self._status.clear()
        self._idempotency.clear()
        self._counts.clear()
        self._tenant_counts.clear()
        self._job_ids.clear()
        self._last_job_ids = None
        self._seq.clear()
        self._open.clear()
        self._holder.clear()
        self._lease.clear()
        self._held.clear()
        self._events.clear()
        self._pending_events.clear()
        self._attempts.clear()
        self._deliveries.clear()
        self._outbox_counts.clear()


def _event_id(change: _OutboxChange) -> str:
    return change.attempt.event_id if isinstance(change, DeliveryRecorded) else change.event_id


def _payload(change: OutboxAdd) -> str:
    """The event's payload as compact JSON, as SQLite stores it (and refuses what it refuses)."""
    try:
        return json.dumps(dict(change.payload), separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise StorageError(
            f"cannot store the payload of webhook event {change.event_id!r}: it is not JSON ({exc})"
        ) from exc


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

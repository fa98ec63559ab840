"""A job board on PostgreSQL: the database decides readiness, any engine serving a type claims.

Every job of every execution is a row. A job is ``ready`` once each of its dependencies
completed: the transaction that records a completion also counts down its dependents'
``waiting`` (in-plan edges and cross-execution edges alike: each root of a dependent execution
depends on its base's final job) and turns those at zero ``ready``. A failed or cancelled
execution fails its dependents (``base_failed``), transitively, in the same transaction. So no
job is claimable before all its dependencies completed, whatever the interleaving of hosts.

Claims are batched (``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n)``), each
attempt gets a fresh random claim token, and an outcome is accepted only with the job's current
token (fencing): a zombie's result after a rescue is refused and counted. Leases are per
engine, not per job: one heartbeat write per engine per interval keeps every job it holds.

Per-type limits (``claim(..., limits={"generate": 4})``) are enforced in the claiming
transaction: it takes an advisory transaction lock per limited type, counts that type's
``processing`` jobs (the count is the truth: no counter to drift), and claims at most the rest.

Completions are group-committed: concurrent ``complete`` calls share one transaction, with one
statement per kind of change for the whole batch (arrays through ``unnest``). The caller whose
write is queued first while no one writes becomes the writer; it commits every queued write (up
to :data:`MAX_GROUP`) and hands the role to the oldest caller still waiting. No background
task: ``open`` and ``close`` may be called from any task.

Wake-ups: the transaction that makes work ready sends ``pg_notify('<schema>_ready', type)``;
ending an execution with running jobs sends ``<schema>_cancel`` (execution id); every ending
sends ``<schema>_ended`` (execution id). NOTIFY is delivered at commit, so a listener never sees
work before it is claimable. :meth:`PostgresBoard.listen` yields them from a dedicated
connection. Notifications can be lost (a dropped connection): polling remains the backstop.

Every psycopg error is translated at this boundary into :class:`~engine.errors.StorageError`.
"""

from __future__ import annotations

import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import psycopg
from attrs import define, field
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool

from adapters.postgres import sql
from adapters.postgres.connect import (
    check_schema_name,
    connect,
    connect_error,
    migrate,
    storage_error,
)
from engine import wire
from engine.catalogue import JOB_TYPES, TRANSFORMS
from engine.errors import (
    ConfigError,
    IdempotencyConflict,
    InvalidState,
    StorageError,
    UnknownExecution,
)
from engine.models import (
    BoardEvent,
    BoardEventKind,
    Change,
    Claim,
    CompleteOutcome,
    DeliveryAttempt,
    DeliveryRecorded,
    Ending,
    EndOutcome,
    EngineInfo,
    ErrorInfo,
    Execution,
    ExecutionStatus,
    JobInfo,
    JobRef,
    JobRequest,
    JobStatus,
    Notification,
    OutboxDone,
    OutboxReset,
    OutboxStatus,
    Video,
    Webhook,
)
from engine.webhooks import payload_for

T = TypeVar("T")
Conn = psycopg.AsyncConnection[Any]

#: The most completions one group-commit transaction takes.
MAX_GROUP = 2000

#: How many times a transaction is run again after a deadlock or a serialization failure.
_RETRIES = 8

#: The board's job statuses as the engine's models name them.
_JOB_STATUS: Mapping[str, JobStatus] = {
    "waiting": "pending",
    "ready": "pending",
    "processing": "processing",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _error_json(error: ErrorInfo | None) -> str | None:
    return None if error is None else _dumps(wire.to_json(error))


def _video(obj: Any) -> Video | None:
    return None if obj is None else wire.from_json(obj, Video)


def _error(obj: Any) -> ErrorInfo | None:
    return None if obj is None else wire.from_json(obj, ErrorInfo)


def _webhook(url: str | None, secret: str | None) -> Webhook | None:
    return None if url is None else Webhook(url, secret)


@define
class _Pending:
    """One ``complete`` call waiting for the writer."""

    results: Sequence[tuple[Claim, Video]]
    now: float
    wake: anyio.Event = field(factory=anyio.Event)
    taken: bool = False
    done: bool = False
    refused: list[Claim] = field(factory=list)
    ended: list[Ending] = field(factory=list)
    error: BaseException | None = None


@define
class _Changes:
    """What one transaction did beyond its rows: endings, aborts and the notifications to send."""

    schema: str
    ended: list[Ending] = field(factory=list)
    aborted: list[JobRef] = field(factory=list)
    ready_types: set[str] = field(factory=set)
    cancelled: list[str] = field(factory=list)

    def notifications(self) -> tuple[list[str], list[str]]:
        channels: list[str] = []
        payloads: list[str] = []
        for kind, values in (
            ("ready", sorted(self.ready_types)),
            ("cancel", self.cancelled),
            ("ended", [e.execution_id for e in self.ended]),
        ):
            for value in values:
                channels.append(f"{self.schema}_{kind}")
                payloads.append(value)
        return channels, payloads


@define
class PostgresBoard:
    """Executions and their jobs on PostgreSQL, shared by any number of engines.

    ``PostgresBoard(dsn, schema="videoflow")``; ``await open()`` (or ``async with``) connects,
    migrates the schema and opens a pool of ``pool_min``..``pool_max`` connections.
    """

    #: What is written outlives the process (see :attr:`engine.ports.Store.durable`).
    durable = True

    dsn: str
    schema: str = field(default="videoflow", kw_only=True)
    pool_min: int = field(default=1, kw_only=True)
    pool_max: int = field(default=10, kw_only=True)
    _pool: AsyncConnectionPool[Any] | None = field(default=None, init=False)
    _q: dict[str, str] = field(factory=dict, init=False)
    _queue: deque[_Pending] = field(factory=deque, init=False)
    _writing: bool = field(default=False, init=False)
    #: Outcomes refused because their claim was stale (zombie attempts), since ``open``.
    refused_total: int = field(default=0, init=False)
    #: Transactions that recorded completions (group commit: usually far fewer than calls).
    complete_transactions: int = field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        check_schema_name(self.schema)
        if self.pool_min < 1 or self.pool_max < self.pool_min:
            raise ConfigError("PostgresBoard needs 1 <= pool_min <= pool_max")
        quoted = f'"{self.schema}"'
        self._q = {
            name: value.replace("{s}", quoted)
            for name, value in vars(sql).items()
            if name.isupper() and isinstance(value, str)
        }

    # --- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, migrate the schema (once, whatever the number of concurrent openers) and
        open the pool. A :class:`StorageError` says what is wrong with the server or DSN."""
        if self._pool is not None:
            return
        conn = await connect(self.dsn)
        try:
            await migrate(conn, self.schema)
        except psycopg.Error as exc:
            raise storage_error(self.schema, "migrating the schema", exc) from exc
        finally:
            await conn.close()
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.dsn,
            min_size=self.pool_min,
            max_size=self.pool_max,
            kwargs={"autocommit": True},
            open=False,
            name=f"videoflow-{self.schema}",
        )
        try:
            await pool.open(wait=True, timeout=30)
        except psycopg.Error as exc:
            await pool.close()
            raise connect_error(self.dsn, exc) from exc
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def __aenter__(self) -> PostgresBoard:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _require_pool(self) -> AsyncConnectionPool[Any]:
        if self._pool is None:
            raise StorageError(f"PostgreSQL board {self.schema!r} is not open")
        return self._pool

    async def _tx(self, op: str, body: Callable[[Conn], Awaitable[T]]) -> T:
        """Run ``body`` in one transaction; again after a deadlock or serialization failure."""
        pool = self._require_pool()
        for attempt in range(_RETRIES):
            try:
                async with pool.connection() as conn, conn.transaction():
                    return await body(conn)
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure) as exc:
                if attempt == _RETRIES - 1:
                    raise storage_error(self.schema, op, exc) from exc
                await anyio.sleep(0.001 * (attempt + 1))
            except psycopg.Error as exc:
                raise storage_error(self.schema, op, exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _read(self, op: str, query: str, params: Sequence[Any] = ()) -> list[Any]:
        pool = self._require_pool()
        try:
            async with pool.connection() as conn:
                cur = await conn.execute(query, params)
                rows: list[Any] = await cur.fetchall()
                return rows
        except psycopg.Error as exc:
            raise storage_error(self.schema, op, exc) from exc

    async def _notify(self, conn: Conn, changes: _Changes) -> None:
        channels, payloads = changes.notifications()
        if channels:
            await conn.execute(self._q["NOTIFY"], (channels, payloads))

    # --- submit -----------------------------------------------------------------------------

    async def submit(
        self, execution: Execution, fingerprint: str | None = None, *, now: float
    ) -> Execution:
        """Store a new execution and its jobs in one transaction; return it as stored.

        With an idempotency key already used in the tenant's scope: the same ``fingerprint``
        returns the stored execution, another raises :class:`IdempotencyConflict` (the unique
        index decides, so two nodes submitting at once create one execution). With a base: an
        unknown one (or another tenant's) raises :class:`UnknownExecution`; a completed base
        releases the roots at once; a failed or cancelled one stores this execution ``failed``
        (``base_failed``); an unfinished one makes the roots wait for its final job.
        """
        if not execution.jobs:
            raise StorageError(f"execution {execution.id} has no jobs")

        async def body(conn: Conn) -> tuple[Execution | None, str | None, _Changes]:
            return await self._submit(conn, execution, fingerprint, now)

        stored, existing, _ = await self._tx(f"submitting {execution.id}", body)
        if existing is not None:
            found = await self.get(existing)
            if found is None:  # pragma: no cover - executions are never deleted
                raise StorageError(f"execution {existing} vanished")
            return found
        assert stored is not None
        return stored

    async def _submit(
        self, conn: Conn, execution: Execution, fingerprint: str | None, now: float
    ) -> tuple[Execution | None, str | None, _Changes]:
        q = self._q
        changes = _Changes(self.schema)
        base_status: str | None = None
        base_final = ""
        base_id = execution.base_execution_id
        if base_id is not None:
            cur = await conn.execute(q["LOCK_BASE"], (base_id,))
            row = await cur.fetchone()
            if row is None or row[1] != execution.tenant:
                raise UnknownExecution(base_id, field="base_execution_id")
            base_status, _, base_final = row
        failed = base_status in ("failed", "cancelled")
        error = (
            ErrorInfo("base_failed", f"base execution {base_id} {base_status}") if failed else None
        )
        status: ExecutionStatus = "failed" if failed else "pending"
        webhook = execution.webhook
        cur = await conn.execute(
            q["INSERT_EXECUTION"],
            (
                execution.id,
                execution.tenant,
                execution.idempotency_key,
                fingerprint,
                status,
                base_id,
                execution.final_job_id,
                None if webhook is None else webhook.url,
                None if webhook is None else webhook.secret,
                _error_json(error),
                execution.created_at,
                now if failed else None,
                execution.generation,
            ),
        )
        if await cur.fetchone() is None:
            key = execution.idempotency_key
            tenant = execution.tenant
            cur = await conn.execute(q["FIND_KEY"], (tenant is None, tenant or "", key))
            row = await cur.fetchone()
            if row is None:  # pragma: no cover - ON CONFLICT only fires on that index
                raise StorageError(f"execution {execution.id}: conflict without a stored key")
            if row[1] != fingerprint:
                raise IdempotencyConflict(
                    f"idempotency key {key!r} was used with another request (execution {row[0]})"
                )
            return None, str(row[0]), changes

        base_done = base_status == "completed"
        ids, positions, types, params, depends, statuses, waits = [], [], [], [], [], [], []
        d_exec, d_job, d_of_exec, d_of_job, d_slot = [], [], [], [], []
        for position, job in enumerate(execution.jobs):
            waiting = len(job.depends_on)
            for slot, dep in enumerate(job.depends_on):
                d_exec.append(execution.id)
                d_job.append(dep)
                d_of_exec.append(execution.id)
                d_of_job.append(job.id)
                d_slot.append(slot)
            if base_id is not None and not job.depends_on:
                d_exec.append(base_id)
                d_job.append(base_final)
                d_of_exec.append(execution.id)
                d_of_job.append(job.id)
                d_slot.append(0 if job.type in TRANSFORMS else -1)
                waiting += 0 if base_done else 1
            if failed:
                job_status = "cancelled"
            else:
                job_status = "ready" if waiting == 0 else "waiting"
                if waiting == 0:
                    changes.ready_types.add(job.type)
            ids.append(job.id)
            positions.append(position)
            types.append(job.type)
            params.append(_dumps(dict(job.params)))
            depends.append(_dumps(list(job.depends_on)))
            statuses.append(job_status)
            waits.append(waiting)
        await conn.execute(
            q["INSERT_JOBS"],
            (execution.id, now, ids, positions, types, params, depends, statuses, waits),
        )
        if d_exec:
            await conn.execute(q["INSERT_DEPS"], (d_exec, d_job, d_of_exec, d_of_job, d_slot))
        jobs = tuple(
            JobInfo(
                job.id,
                job.type,
                job.params,
                tuple(job.depends_on),
                "cancelled" if failed else "pending",
            )
            for job in execution.jobs
        )
        stored = Execution(
            id=execution.id,
            status=status,
            jobs=jobs,
            created_at=execution.created_at,
            base_execution_id=base_id,
            webhook=webhook,
            error=error,
            completed_at=now if failed else None,
            tenant=execution.tenant,
            idempotency_key=execution.idempotency_key,
            generation=execution.generation,
        )
        if failed:
            changes.ended.append(
                Ending(
                    execution.id,
                    "failed",
                    None,
                    error,
                    execution.tenant,
                    webhook,
                    execution.generation,
                    execution.created_at,
                    None,
                    now,
                )
            )
            await self._write_outbox(conn, changes.ended, now)
        await self._notify(conn, changes)
        return stored, None, changes

    # --- claim ------------------------------------------------------------------------------

    async def set_limits(self, limits: Mapping[str, int]) -> None:
        """Set the fleet-wide caps on running jobs per type (types not named keep theirs).

        Every claim of every engine on this database reads them (the ``limits`` table).
        """
        for kind, cap in limits.items():
            if kind not in JOB_TYPES:
                raise ConfigError(f"limits: unknown job type {kind!r}")
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
                raise ConfigError(f"limits[{kind!r}] must be a whole number >= 0, got {cap!r}")
        if not limits:
            return
        kinds = sorted(limits)

        async def body(conn: Conn) -> None:
            await conn.execute(self._q["SET_LIMITS"], (kinds, [limits[k] for k in kinds]))

        await self._tx("setting limits", body)

    async def limits(self) -> dict[str, int]:
        """The fleet-wide caps on running jobs per type."""
        rows = await self._read("reading limits", self._q["READ_LIMITS"], (list(JOB_TYPES),))
        return {str(t): int(n) for t, n in rows}

    async def claim(
        self,
        engine_id: str,
        *,
        types: Collection[str] | None = None,
        limit: int,
        now: float,
    ) -> list[Claim]:
        """Claim up to ``limit`` ready jobs of ``types`` (``None``: every type), oldest first.

        A type with a cap (:meth:`set_limits`) has at most that many jobs running at once
        across every engine on the database: the claim takes the type's advisory lock, counts
        its running jobs and claims at most the rest. The engine must be registered
        (:meth:`register`) and heartbeating, or :meth:`rescue` hands its jobs to others.
        """
        if limit <= 0:
            return []
        wanted = sorted(set(JOB_TYPES if types is None else types))

        async def body(conn: Conn) -> list[Claim]:
            quotas = {t: limit for t in wanted}
            cur = await conn.execute(self._q["READ_LIMITS"], (wanted,))
            caps = {str(t): int(n) for t, n in await cur.fetchall()}
            if caps:
                limited = sorted(caps)
                keys = [f"videoflow-limit:{self.schema}:{t}" for t in limited]
                await conn.execute(self._q["LOCK_LIMITS"], (keys,))
                cur = await conn.execute(self._q["COUNT_RUNNING"], (limited,))
                running = {str(t): int(n) for t, n in await cur.fetchall()}
                for t in limited:
                    quotas[t] = max(0, min(limit, caps[t] - running.get(t, 0)))
            open_types = [t for t in wanted if quotas[t] > 0]
            if not open_types:
                return []
            cur = await conn.execute(
                self._q["CLAIM"],
                {
                    "types": open_types,
                    "quotas": [quotas[t] for t in open_types],
                    "now": now,
                    "limit": limit,
                    "engine": engine_id,
                },
            )
            claims = []
            for (
                execution_id,
                job_id,
                type_,
                params,
                attempts,
                token,
                inputs,
            ) in await cur.fetchall():
                request = JobRequest(
                    execution_id=execution_id,
                    job_id=job_id,
                    type=type_,
                    params=params,
                    inputs=tuple(wire.from_json(v, Video) for v in inputs if v is not None),
                    attempt=attempts,
                    idempotency_key=f"{execution_id}/{job_id}",
                )
                claims.append(Claim(request, token))
            return claims

        return await self._tx("claiming jobs", body)

    # --- complete (group commit) ------------------------------------------------------------

    async def complete(
        self, results: Sequence[tuple[Claim, Video]], *, now: float
    ) -> CompleteOutcome:
        """Record results, fenced on their claims; concurrent calls share one transaction.

        In that transaction the dependents count down (and turn ``ready`` at zero), a final
        job's completion completes its execution (webhook event in the outbox) and releases the
        roots of executions based on it. Returns the refused claims and the executions that
        ended; the refused are counted in :attr:`refused_total`.
        """
        if not results:
            return CompleteOutcome((), ())
        entry = _Pending(results, now)
        self._queue.append(entry)
        try:
            while not entry.done:
                if self._writing:
                    await entry.wake.wait()
                    entry.wake = anyio.Event()
                    continue
                self._writing = True
                try:
                    with anyio.CancelScope(shield=True):
                        # Let the callers already scheduled (the other jobs of a claimed batch,
                        # finishing in this same loop iteration) queue up first: one
                        # transaction for all of them rather than one for the first alone.
                        await anyio.lowlevel.checkpoint()
                        batch: list[_Pending] = []
                        count = 0
                        while self._queue and (not batch or count < MAX_GROUP):
                            item = self._queue.popleft()
                            item.taken = True
                            batch.append(item)
                            count += len(item.results)
                        await self._write_batch(batch)
                finally:
                    self._writing = False
                    if self._queue:
                        self._queue[0].wake.set()
        finally:
            if not entry.taken:
                with contextlib.suppress(ValueError):
                    self._queue.remove(entry)
        if entry.error is not None:
            raise entry.error
        return CompleteOutcome(tuple(entry.refused), tuple(entry.ended))

    async def _write_batch(self, batch: list[_Pending]) -> None:
        try:
            result = await self._tx("recording completions", lambda c: self._complete(c, batch))
        except BaseException as exc:
            for item in batch:
                item.error = exc
                item.done = True
                item.wake.set()
            if not isinstance(exc, Exception):
                raise
            return
        refused, ended = result
        self.complete_transactions += 1
        self.refused_total += sum(len(r) for r in refused.values())
        by_item: dict[int, list[Ending]] = {}
        for item_index, e in ended:
            by_item.setdefault(item_index, []).append(e)
        for index, item in enumerate(batch):
            item.refused = refused.get(index, [])
            item.ended = by_item.get(index, [])
            item.done = True
            item.wake.set()

    async def _complete(
        self, conn: Conn, batch: list[_Pending]
    ) -> tuple[dict[int, list[Claim]], list[tuple[int, Ending]]]:
        q = self._q
        now = batch[-1].now
        owner: dict[tuple[str, str, str], int] = {}
        claims: dict[tuple[str, str, str], Claim] = {}
        refused: dict[int, list[Claim]] = {}
        rows: list[list[Any]] = []
        for index, item in enumerate(batch):
            for claim, video in item.results:
                key = (claim.request.execution_id, claim.request.job_id, claim.token)
                if key in owner:  # the same claim twice: the second is stale
                    refused.setdefault(index, []).append(claim)
                    continue
                owner[key] = index
                claims[key] = claim
                rows.append([*key, wire.to_json(video)])
        cur = await conn.execute(q["COMPLETE_JOBS"], (_dumps(rows), now))
        accepted = await cur.fetchall()
        done_keys = {(e, j, t) for e, j, t, _ in accepted}
        for key, index in owner.items():
            if key not in done_keys:
                refused.setdefault(index, []).append(claims[key])
        changes = _Changes(self.schema)
        ended: list[tuple[int, Ending]] = []
        finals = [(e, j, t) for e, j, t, final in accepted if final]
        if finals:
            video_of = {(e, j, t): v for e, j, t, v in rows}
            cur = await conn.execute(
                q["COMPLETE_EXECUTIONS"],
                (now, [k[0] for k in finals], [_dumps(video_of[k]) for k in finals]),
            )
            index_of = {k[0]: owner[k] for k in finals}
            for (
                ex_id,
                tenant,
                url,
                secret,
                generation,
                created,
                started,
                result,
            ) in await cur.fetchall():
                e = Ending(
                    ex_id,
                    "completed",
                    wire.from_json(result, Video),
                    None,
                    tenant,
                    _webhook(url, secret),
                    generation,
                    created,
                    started,
                    now,
                )
                changes.ended.append(e)
                ended.append((index_of[ex_id], e))
        if accepted:
            cur = await conn.execute(
                q["RELEASE_DEPENDENTS"],
                ([a[0] for a in accepted], [a[1] for a in accepted], now),
            )
            changes.ready_types.update(t for t, s in await cur.fetchall() if s == "ready")
        await self._write_outbox(conn, changes.ended, now)
        await self._notify(conn, changes)
        return refused, ended

    async def _write_outbox(self, conn: Conn, ended: Sequence[Ending], now: float) -> None:
        """Queue the webhook event of each ending that has a webhook."""
        rows = [e for e in ended if e.webhook is not None]
        if not rows:
            return
        await conn.execute(
            self._q["INSERT_OUTBOX"],
            (
                now,
                [e.event_id for e in rows],
                [e.execution_id for e in rows],
                [e.status for e in rows],
                [_dumps(payload_for(e.execution_id, e.status, e.result, e.error)) for e in rows],
            ),
        )

    # --- fail, cancel, resume ---------------------------------------------------------------

    async def fail(
        self, claim: Claim, message: str, *, retry_at: float | None, now: float
    ) -> EndOutcome:
        """Record a failed attempt, fenced on its claim.

        With ``retry_at`` the job is ``ready`` again from then (the engine's retry policy
        decides when, and whether). Without, the job fails, its execution fails
        (``job_failed``), its other unfinished jobs are cancelled and every execution based on
        it fails (``base_failed``), transitively, with a webhook event for each ending.
        """
        execution_id, job_id = claim.ref
        error = ErrorInfo("job_failed", message, job_id)

        async def body(conn: Conn) -> EndOutcome:
            if retry_at is not None:
                cur = await conn.execute(
                    self._q["RETRY_JOB"],
                    (retry_at, _error_json(error), now, execution_id, job_id, claim.token),
                )
                row = await cur.fetchone()
                if row is None:
                    return EndOutcome(True, (), ())
                if retry_at <= now:
                    await self._notify(conn, _Changes(self.schema, ready_types={row[0]}))
                return EndOutcome(False, (), ())
            cur = await conn.execute(
                self._q["FAIL_JOB"],
                (_error_json(error), now, execution_id, job_id, claim.token),
            )
            if await cur.fetchone() is None:
                return EndOutcome(True, (), ())
            changes = await self._end(conn, execution_id, "failed", error, now)
            return EndOutcome(False, tuple(changes.ended), tuple(changes.aborted))

        outcome = await self._tx(f"failing {execution_id}/{job_id}", body)
        if outcome.refused:
            self.refused_total += 1
        return outcome

    async def cancel(self, execution_id: str, *, now: float, reason: str) -> EndOutcome:
        """Cancel an unfinished execution: its jobs are cancelled (the running ones are returned
        in ``aborted`` and announced on the cancel channel) and its dependents fail. An ended
        execution is left as it is (nothing ended); an unknown one is
        :class:`UnknownExecution`."""
        error = ErrorInfo("cancelled", reason)

        async def body(conn: Conn) -> EndOutcome:
            changes = await self._end(conn, execution_id, "cancelled", error, now)
            if not changes.ended:
                cur = await conn.execute(self._q["LOCK_EXECUTION"], (execution_id,))
                if await cur.fetchone() is None:
                    raise UnknownExecution(execution_id)
            return EndOutcome(False, tuple(changes.ended), tuple(changes.aborted))

        return await self._tx(f"cancelling {execution_id}", body)

    async def _end(
        self, conn: Conn, execution_id: str, status: ExecutionStatus, error: ErrorInfo, now: float
    ) -> _Changes:
        """End an execution and, unless it completed, every live execution based on it.

        Level by level: each level's rows are taken (UPDATE) before the next level is read, in
        a statement of its own, so a dependent whose submit held its base's row (FOR SHARE) is
        seen once that submit committed.
        """
        q = self._q
        changes = _Changes(self.schema)
        level: list[tuple[str, str, ErrorInfo]] = [(execution_id, status, error)]
        while level:
            cur = await conn.execute(
                q["END_EXECUTIONS"],
                (
                    now,
                    [x[0] for x in level],
                    [x[1] for x in level],
                    [_error_json(x[2]) for x in level],
                ),
            )
            rows = {r[0]: r for r in await cur.fetchall()}
            ids: list[str] = []
            for ex_id, _, _ in level:  # keep the order: bases before dependents
                row = rows.get(ex_id)
                if row is None:
                    continue
                _, e_status, tenant, url, secret, generation, created, started, e_error = row
                ids.append(ex_id)
                changes.ended.append(
                    Ending(
                        ex_id,
                        e_status,
                        None,
                        _error(e_error),
                        tenant,
                        _webhook(url, secret),
                        generation,
                        created,
                        started,
                        now,
                    )
                )
            if not ids:
                break
            cur = await conn.execute(q["LIVE_DEPENDENTS"], (ids,))
            level = []
            for dep_id, base in await cur.fetchall():
                how = status if base == execution_id else "failed"
                level.append(
                    (dep_id, "failed", ErrorInfo("base_failed", f"base execution {base} {how}"))
                )
        if not changes.ended:
            return changes
        cur = await conn.execute(q["CANCEL_JOBS"], ([e.execution_id for e in changes.ended], now))
        for ex_id, job_id, previous in await cur.fetchall():
            if previous == "processing":
                changes.aborted.append((ex_id, job_id))
        changes.aborted.sort()
        changes.cancelled = sorted({ex_id for ex_id, _ in changes.aborted})
        await self._write_outbox(conn, changes.ended, now)
        await self._notify(conn, changes)
        return changes

    async def resume(self, execution_id: str, *, now: float) -> Execution:
        """Run a failed or cancelled execution again from where it stopped.

        Completed jobs are kept (their videos feed their dependents); the others wait again
        for their unmet dependencies, or are ready. The generation goes up by one, so the next
        ending has a webhook event of its own. A failed or cancelled base must be resumed
        first (:class:`InvalidState`).
        """

        async def body(conn: Conn) -> None:
            cur = await conn.execute(self._q["LOCK_EXECUTION"], (execution_id,))
            row = await cur.fetchone()
            if row is None:
                raise UnknownExecution(execution_id)
            status, base_id = row
            if status not in ("failed", "cancelled"):
                raise InvalidState(
                    f"execution {execution_id} is {status}; only failed or cancelled "
                    "executions can be resumed"
                )
            if base_id is not None:
                cur = await conn.execute(self._q["LOCK_BASE"], (base_id,))
                base = await cur.fetchone()
                if base is not None and base[0] in ("failed", "cancelled"):
                    raise InvalidState(f"base execution {base_id} is {base[0]}; resume it first")
            cur = await conn.execute(self._q["RESUME_JOBS"], {"id": execution_id, "now": now})
            changes = _Changes(self.schema)
            changes.ready_types.update(t for t, s in await cur.fetchall() if s == "ready")
            await conn.execute(self._q["RESUME_EXECUTION"], (execution_id,))
            await self._notify(conn, changes)

        await self._tx(f"resuming {execution_id}", body)
        found = await self.get(execution_id)
        assert found is not None
        return found

    # --- engines and leases -----------------------------------------------------------------

    async def register(
        self,
        engine_id: str,
        job_types: Collection[str] | None = None,
        *,
        now: float,
        lease_until: float,
    ) -> None:
        """Announce an engine and the job types it runs, leased until ``lease_until``."""
        types = sorted(JOB_TYPES if job_types is None else job_types)

        async def body(conn: Conn) -> None:
            await conn.execute(self._q["REGISTER"], (engine_id, types, now, now, lease_until))

        await self._tx(f"registering engine {engine_id}", body)

    async def heartbeat(self, engine_id: str, *, now: float, lease_until: float) -> bool:
        """Extend an engine's lease, and with it the hold on every job it runs: one write.

        ``False``: the engine was presumed dead (its lease expired and it was removed; its jobs
        went to others, so their outcomes will be refused). Register again to go on.
        """

        async def body(conn: Conn) -> bool:
            cur = await conn.execute(self._q["HEARTBEAT"], (now, lease_until, engine_id))
            return cur.rowcount == 1

        return await self._tx(f"heartbeat of engine {engine_id}", body)

    async def rescue(self, *, now: float) -> int:
        """Hand back the jobs of engines whose lease expired (or that are gone); return how many.

        The jobs are ``ready`` again with the same idempotency key; their attempts were counted
        when claimed, so the rerun is the next attempt. Expired engines are removed.
        """

        async def body(conn: Conn) -> int:
            cur = await conn.execute(self._q["RESCUE"], {"now": now})
            counts = {str(t): int(n) for t, n in await cur.fetchall()}
            await self._notify(conn, _Changes(self.schema, ready_types=set(counts)))
            return sum(counts.values())

        return await self._tx("rescuing jobs", body)

    async def release(self, engine_id: str) -> int:
        """Graceful shutdown: hand back the engine's claimed jobs and webhook events at once and
        remove it. Returns how many jobs were handed back."""

        async def body(conn: Conn) -> int:
            cur = await conn.execute(self._q["RELEASE"], {"engine": engine_id})
            counts = {str(t): int(n) for t, n in await cur.fetchall()}
            await self._notify(conn, _Changes(self.schema, ready_types=set(counts)))
            return sum(counts.values())

        return await self._tx(f"releasing engine {engine_id}", body)

    # --- reads ------------------------------------------------------------------------------

    async def get(self, execution_id: str) -> Execution | None:
        """An execution with its jobs in plan order, or ``None``."""
        rows = await self._read(f"reading {execution_id}", self._q["GET"], (execution_id,))
        if not rows:
            return None
        head = rows[0]
        jobs = tuple(
            JobInfo(
                id=r[13],
                type=r[14],
                params=r[15],
                depends_on=tuple(r[16]),
                status=_JOB_STATUS[r[17]],
                attempts=r[18],
                started_at=r[19],
                finished_at=r[20],
                result=_video(r[21]),
                error=_error(r[22]),
            )
            for r in rows
            if r[13] is not None
        )
        return Execution(
            id=head[0],
            status=head[1],
            jobs=jobs,
            created_at=head[2],
            base_execution_id=head[3],
            webhook=_webhook(head[4], head[5]),
            result=_video(head[6]),
            error=_error(head[7]),
            started_at=head[8],
            completed_at=head[9],
            tenant=head[10],
            idempotency_key=head[11],
            generation=head[12],
        )

    async def counts(self, *, tenant: str | None = None) -> dict[str, int]:
        """Executions per status, of every tenant or of ``tenant``."""
        if tenant is None:
            rows = await self._read("counting executions", self._q["COUNTS"])
        else:
            rows = await self._read("counting executions", self._q["COUNTS_OF_TENANT"], (tenant,))
        return {str(s): int(n) for s, n in rows}

    async def job_counts(self) -> dict[str, int]:
        """Jobs per board status (``waiting``, ``ready``, ``processing``, ...)."""
        rows = await self._read("counting jobs", self._q["JOB_COUNTS"])
        return {str(s): int(n) for s, n in rows}

    async def running_by_type(self) -> dict[str, int]:
        """Jobs running now (claimed, not finished) per wire type, across every engine."""
        rows = await self._read("counting running jobs", self._q["RUNNING_BY_TYPE"])
        return {str(t): int(n) for t, n in rows}

    async def engines(self, *, now: float) -> list[EngineInfo]:
        """The engines whose lease has not expired, with how many jobs each runs."""
        rows = await self._read("listing engines", self._q["ENGINES"], (now,))
        return [EngineInfo(r[0], tuple(r[1]), r[2], r[3], r[4], int(r[5])) for r in rows]

    # --- the outbox -------------------------------------------------------------------------

    async def apply(self, changes: Sequence[Change], *, owner: str | None = None) -> None:
        """The outbox's part of the store port: delivery attempts, events done, events reset.

        An ``OutboxReset`` (``Engine.redeliver``) makes ``owner`` the event's holder. Job and
        execution changes are not written this way on a job board (its own operations do).
        """
        for change in changes:
            if isinstance(change, DeliveryRecorded):
                await self.record_delivery(change.attempt)
            elif isinstance(change, OutboxDone):
                await self.outbox_done(change.event_id, change.status)
            elif isinstance(change, OutboxReset):
                await self._reset_event(change, owner)
            else:
                raise StorageError(
                    f"a job board writes {type(change).__name__} through its own operations"
                )

    async def _reset_event(self, change: OutboxReset, owner: str | None) -> None:
        async def body(conn: Conn) -> None:
            cur = await conn.execute(
                self._q["OUTBOX_RESET"], (owner, change.event_id, change.execution_id)
            )
            if cur.rowcount != 1:
                raise StorageError(f"no webhook event {change.event_id} to deliver again")

        await self._tx(f"resetting webhook event {change.event_id}", body)

    async def claim_outbox(
        self,
        engine_id: str,
        *,
        now: float,
        lease_until: float,
        dead_owners: Collection[str] = (),
        limit: int = 100,
    ) -> list[Notification]:
        """Take pending webhook events of ended executions that no live engine holds, oldest
        first. An event stays held while its claim has not expired or its holder heartbeats.
        (``dead_owners`` is for the port's sake: a board knows the dead by their leases.)"""

        async def body(conn: Conn) -> list[Notification]:
            cur = await conn.execute(
                self._q["CLAIM_OUTBOX"],
                {"now": now, "limit": limit, "engine": engine_id, "lease": lease_until},
            )
            rows = sorted(await cur.fetchall())
            return [
                Notification(
                    event_id=r[1],
                    execution_id=r[2],
                    status=r[3],
                    payload=r[4],
                    webhook=_webhook(r[5], r[6]),
                    tenant=r[7],
                    attempts_made=int(r[8]),
                )
                for r in rows
            ]

        return await self._tx("claiming webhook events", body)

    async def record_delivery(self, attempt: DeliveryAttempt) -> None:
        """Append one delivery attempt to its event's log."""

        async def body(conn: Conn) -> None:
            await conn.execute(
                self._q["RECORD_DELIVERY"],
                (
                    attempt.event_id,
                    attempt.execution_id,
                    attempt.url,
                    attempt.attempt,
                    attempt.at,
                    attempt.status_code,
                    attempt.error,
                    attempt.latency,
                    attempt.outcome,
                    attempt.retry_at,
                ),
            )

        await self._tx(f"recording a delivery of {attempt.event_id}", body)

    async def outbox_done(self, event_id: str, status: OutboxStatus) -> None:
        """The notifier is done with an event: ``delivered``, ``failed`` or ``notified``."""
        if status == "pending":
            raise ConfigError("outbox_done takes a final status, not 'pending'")

        async def body(conn: Conn) -> None:
            await conn.execute(self._q["OUTBOX_DONE"], (status, event_id))

        await self._tx(f"finishing webhook event {event_id}", body)

    async def deliveries(self, execution_id: str) -> list[DeliveryAttempt]:
        """The delivery log of an execution's webhook events, oldest first."""
        rows = await self._read("reading deliveries", self._q["DELIVERIES"], (execution_id,))
        return [DeliveryAttempt(*r) for r in rows]

    async def outbox(self, execution_id: str) -> list[tuple[str, str, str, Mapping[str, Any]]]:
        """An execution's webhook events: ``(event_id, execution_status, status, payload)``."""
        rows = await self._read("reading the outbox", self._q["OUTBOX_ROWS"], (execution_id,))
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def outbox_counts(self) -> dict[str, int]:
        rows = await self._read("counting webhook events", self._q["OUTBOX_COUNTS"])
        return {str(s): int(n) for s, n in rows}

    # --- wake-ups ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def listen(self) -> AsyncIterator[AsyncIterator[BoardEvent]]:
        """``async with board.listen() as events: async for event in events: ...``

        A dedicated connection LISTENs on the board's three channels; the events are wake-ups
        only (see :class:`BoardEvent`): keep polling as the backstop.
        """
        conn = await connect(self.dsn)
        kinds: dict[str, BoardEventKind] = {
            f"{self.schema}_{k}": k for k in ("ready", "cancel", "ended")
        }
        try:
            try:
                for channel in kinds:
                    await conn.execute(f'LISTEN "{channel}"')
            except psycopg.Error as exc:
                raise storage_error(self.schema, "listening", exc) from exc

            async def events() -> AsyncIterator[BoardEvent]:
                try:
                    async for note in conn.notifies():
                        kind = kinds.get(note.channel)
                        if kind is not None:
                            yield BoardEvent(kind, note.payload)
                except psycopg.Error as exc:
                    raise storage_error(self.schema, "listening", exc) from exc

            yield events()
        finally:
            await conn.close()

"""The backends every engine-level test runs on, and wrappers that watch a store or a board.

``STORES`` lists the local stores (memory, SQLite): engines with an in-process scheduler over a
:class:`Storage`. ``ENGINES`` lists every backend as an :class:`EngineBackend`, which knows how to
build an engine on it (a local store, or a PostgreSQL job board that dispatches jobs itself) in a
fresh, empty place per example: the invariant properties (``test_invariants.py``) run on each in
turn, and the engine state machine (``test_engine_machine.py``) runs a world on each and checks
they agree. A new backend is one more entry in ``ENGINES`` (and in ``STORES`` if it is a store).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterator,
    Mapping,
    Sequence,
)
from pathlib import Path
from typing import TypeAlias, TypeVar

import anyio
import anyio.lowlevel
from attrs import define, frozen

from adapters.memory import MemoryQueue, MemoryStorage
from adapters.sqlite import SqliteStorage
from engine import Engine, Execution, Notification, RetryPolicy, Storage
from engine.clock import Clock
from engine.errors import LeaseLost
from engine.models import (
    BoardEvent,
    Change,
    Claim,
    CompleteOutcome,
    DeliveryAttempt,
    EndOutcome,
    EngineInfo,
    Video,
)
from engine.ports import JobBoard, JobQueue, Notifier, VideoProvider

T = TypeVar("T")

#: Gives the store of each new engine on one backend (the same data every time).
StoreOpener: TypeAlias = Callable[[], Storage]


@frozen
class StoreBackend:
    """One storage backend: ``opener(directory)`` sets up an empty store in a fresh directory
    and returns what opens it for each engine; property tests run ``1 / cost`` of the profile's
    examples on it (each costs that many times an in-memory one, roughly)."""

    name: str
    opener: Callable[[Path], StoreOpener]
    cost: int = 1

    def examples(self, max_examples: int, *, floor: int = 5) -> int:
        """How many of ``max_examples`` a property runs on this backend."""
        return max(floor, max_examples // self.cost)


def _memory(directory: Path) -> StoreOpener:
    store = MemoryStorage(keep_journal=False)  # one object, shared by every engine
    return lambda: store


def _sqlite(directory: Path) -> StoreOpener:
    path = directory / "engine.db"
    # NORMAL: a process crash loses nothing in WAL mode (only a power loss would); spares fsyncs.
    return lambda: SqliteStorage(path, synchronous="NORMAL")


#: Every backend; the first is the reference the others must agree with.
STORES: tuple[StoreBackend, ...] = (
    StoreBackend("memory", _memory),
    StoreBackend("sqlite", _sqlite, cost=4),
)


class WatchedStorage:
    """A store that tells a test what goes on in it: every ``apply`` it accepted
    (:meth:`applied`) or refused because the writer lost its lease (:meth:`fenced`), and when a
    call is in flight (:meth:`enter`, :meth:`leave`), so a test knows when the engine is
    quiescent (an ``aiosqlite`` call waits for a thread: the loop looks idle while it runs).
    Subclasses override the hooks; the store's behaviour is the inner one's."""

    #: Yield to the event loop after every call, as a store with I/O does (``apply`` always
    #: yields): opens the windows between a call and its caller acting on it, in memory too.
    checkpoint_every_call = True

    def __init__(self, inner: Storage) -> None:
        self.inner = inner

    @property
    def durable(self) -> bool:
        return self.inner.durable

    def enter(self) -> None:
        """A call starts."""

    def leave(self) -> None:
        """A call ended."""

    def applied(self, changes: Sequence[Change]) -> None:
        """The store accepted ``changes`` (one ``apply``)."""

    def fenced(self, lost: LeaseLost) -> None:
        """The store refused an ``apply``: the writer no longer holds ``lost.execution_ids``."""

    async def _call(self, call: Awaitable[T]) -> T:
        self.enter()
        try:
            return await call
        finally:
            self.leave()
            if self.checkpoint_every_call:
                await anyio.lowlevel.checkpoint()

    async def open(self) -> None:
        await self._call(self.inner.open())

    async def close(self) -> None:
        await self._call(self.inner.close())

    async def create(
        self,
        execution: Execution,
        fingerprint: str | None = None,
        *,
        owner: str | None = None,
        lease_until: float | None = None,
    ) -> Execution:
        return await self._call(
            self.inner.create(execution, fingerprint, owner=owner, lease_until=lease_until)
        )

    async def get(self, execution_id: str) -> Execution | None:
        return await self._call(self.inner.get(execution_id))

    async def apply(self, changes: Sequence[Change], *, owner: str | None = None) -> None:
        self.enter()
        try:
            await self.inner.apply(changes, owner=owner)
        except LeaseLost as lost:
            self.fenced(lost)
            raise
        else:
            self.applied(changes)
        finally:
            self.leave()
            await anyio.lowlevel.checkpoint()

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
        return await self._call(
            self.inner.claim(
                owner,
                now=now,
                lease_until=lease_until,
                limit=limit,
                ids=ids,
                dead_owners=dead_owners,
            )
        )

    async def renew(self, owner: str, *, lease_until: float) -> set[str]:
        return await self._call(self.inner.renew(owner, lease_until=lease_until))

    async def release(self, owner: str, ids: Collection[str] | None = None) -> None:
        await self._call(self.inner.release(owner, ids))

    async def holders(self) -> dict[str, float]:
        return await self._call(self.inner.holders())

    async def claim_outbox(
        self,
        owner: str,
        *,
        now: float,
        lease_until: float,
        dead_owners: Collection[str] = (),
    ) -> list[Notification]:
        return await self._call(
            self.inner.claim_outbox(
                owner, now=now, lease_until=lease_until, dead_owners=dead_owners
            )
        )

    async def deliveries(self, execution_id: str) -> list[DeliveryAttempt]:
        return await self._call(self.inner.deliveries(execution_id))

    async def outbox_counts(self) -> dict[str, int]:
        return await self._call(self.inner.outbox_counts())

    async def unfinished(self) -> list[Execution]:
        return await self._call(self.inner.unfinished())

    async def counts(self, *, tenant: str | None = None) -> dict[str, int]:
        return await self._call(self.inner.counts(tenant=tenant))


# --- engines on every backend --------------------------------------------------------------------


@frozen
class EngineSpec:
    """What an engine is built from, whatever the backend: the parts a test watches, and the
    options it sets. ``poll_interval`` is the job board's polling backstop (real seconds)."""

    provider: VideoProvider
    notifier: Notifier
    clock: Clock
    concurrency: int
    retry: RetryPolicy
    lease: float = 30.0
    sweep_interval: float = 5.0
    owner: str | None = None
    poll_interval: float = 0.05


class Home:
    """One example's place on a backend (a directory, a PostgreSQL schema), empty at first;
    :meth:`engine` builds an engine on it, as many times as a test wants (restarts, a second
    engine on the same data). ``local``: the engines have an in-process scheduler over a
    :class:`Storage`; otherwise the database dispatches the jobs (``engine.scheduler`` raises)."""

    local: bool

    def engine(
        self,
        spec: EngineSpec,
        *,
        watch_store: Callable[[Storage], Storage] | None = None,
        watch_board: Callable[[JobBoard], JobBoard] | None = None,
        queue: JobQueue | None = None,
    ) -> Engine:
        raise NotImplementedError


@define
class LocalHome(Home):
    """A local store: each engine opens it anew (``open_store``) and has its own queue."""

    open_store: StoreOpener
    local = True

    def engine(
        self,
        spec: EngineSpec,
        *,
        watch_store: Callable[[Storage], Storage] | None = None,
        watch_board: Callable[[JobBoard], JobBoard] | None = None,
        queue: JobQueue | None = None,
    ) -> Engine:
        store = self.open_store()
        return Engine(
            storage=store if watch_store is None else watch_store(store),
            queue=queue or MemoryQueue(),
            provider=spec.provider,
            notifier=spec.notifier,
            concurrency=spec.concurrency,
            retry=spec.retry,
            clock=spec.clock,
            lease=spec.lease,
            sweep_interval=spec.sweep_interval,
            owner=spec.owner,
        )


@define
class BoardHome(Home):
    """A PostgreSQL schema: each engine opens its own :class:`PostgresBoard` (its own pool) on
    it, as a process of a fleet does; the board takes ``now`` from the engine's clock."""

    dsn: str
    schema: str
    local = False

    def engine(
        self,
        spec: EngineSpec,
        *,
        watch_store: Callable[[Storage], Storage] | None = None,
        watch_board: Callable[[JobBoard], JobBoard] | None = None,
        queue: JobQueue | None = None,
    ) -> Engine:
        from adapters.postgres import PostgresBoard

        board: JobBoard = PostgresBoard(self.dsn, schema=self.schema, pool_max=4)
        if watch_board is not None:
            board = watch_board(board)
        return Engine(
            storage=board,
            board=board,
            provider=spec.provider,
            notifier=spec.notifier,
            concurrency=spec.concurrency,
            retry=spec.retry,
            clock=spec.clock,
            lease=spec.lease,
            sweep_interval=spec.sweep_interval,
            owner=spec.owner,
            poll_interval=spec.poll_interval,
        )


#: Gives a fresh, empty place on a backend for one example, cleaned up after it.
HomeMaker: TypeAlias = Callable[[], contextlib.AbstractContextManager[Home]]


@frozen
class EngineBackend:
    """One backend as the engine-level tests see it. ``session()`` is entered once per test
    function and yields what gives a fresh, empty :class:`Home` per example (a context manager).
    Property tests run ``1 / cost`` of the profile's examples on it (see :meth:`examples`);
    ``unavailable()`` says why it cannot run here (no server), or ``None``."""

    name: str
    session: Callable[[], contextlib.AbstractContextManager[HomeMaker]]
    cost: int = 1
    local: bool = True
    unavailable: Callable[[], str | None] = lambda: None

    def examples(self, max_examples: int, *, floor: int = 5) -> int:
        """How many of ``max_examples`` a property runs on this backend."""
        return max(floor, max_examples // self.cost)


def _local_session(
    store: StoreBackend,
) -> Callable[[], contextlib.AbstractContextManager[HomeMaker]]:
    @contextlib.contextmanager
    def session() -> Iterator[HomeMaker]:
        @contextlib.contextmanager
        def fresh() -> Iterator[Home]:
            with tempfile.TemporaryDirectory(prefix=f"engines-{store.name}-") as directory:
                yield LocalHome(store.opener(Path(directory)))

        yield fresh

    return session


#: The board's tables, emptied between examples (children first).
_BOARD_TABLES = ("deliveries", "outbox", "deps", "jobs", "executions", "engines", "limits")


@contextlib.contextmanager
def _postgres_session() -> Iterator[HomeMaker]:
    """One schema per test function, emptied between examples: creating and dropping a schema
    costs about 0.15 s on this machine, deleting the rows of a small example about 0.015 s."""
    import psycopg
    from pg_support import DSN, drop_schema, new_schema_name

    schema = new_schema_name()

    @contextlib.contextmanager
    def fresh() -> Iterator[Home]:
        try:
            yield BoardHome(DSN, schema)
        finally:
            with psycopg.connect(DSN, autocommit=True) as conn, conn.transaction():
                exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
                if exists.fetchone() is not None:
                    for table in _BOARD_TABLES:
                        conn.execute(f'DELETE FROM "{schema}".{table}')

    try:
        yield fresh
    finally:
        drop_schema(schema)


def _postgres_unavailable() -> str | None:
    from pg_support import UNREACHABLE

    return UNREACHABLE


#: Every backend the engine-level tests run on; the first is the reference.
ENGINES: tuple[EngineBackend, ...] = (
    *(EngineBackend(s.name, _local_session(s), s.cost) for s in STORES),
    # A PostgreSQL example costs real round trips and the polling backstop (tens of ms).
    EngineBackend(
        "postgres", _postgres_session, cost=10, local=False, unavailable=_postgres_unavailable
    ),
)


class WatchedBoard:
    """A job board that tells a test what goes on in it, as :class:`WatchedStorage` does for a
    store: calls in flight (:meth:`enter`, :meth:`leave`), the claims it granted, the
    completions asked (:meth:`completing`, before the transaction: a dependent may be claimed
    before ``complete`` returns) and what each outcome did. ``hold`` is awaited before every
    call: a test sets it to make the engine hang on its database (a process that stopped), and
    clears it then sets the event to let it go on.
    Subclasses override the hooks; the board's behaviour is the inner one's."""

    def __init__(self, inner: JobBoard) -> None:
        self.inner = inner
        #: Awaited (when set) at the start of every call: the engine hangs on the database.
        self.hold: anyio.Event | None = None

    @property
    def durable(self) -> bool:
        return self.inner.durable

    def enter(self) -> None:
        """A call starts."""

    def leave(self) -> None:
        """A call ended."""

    def claimed(self, claims: Sequence[Claim]) -> None:
        """``claim`` granted these attempts."""

    def completing(self, results: Sequence[tuple[Claim, Video]]) -> None:
        """``complete`` is about to record these results."""

    def completed(self, results: Sequence[tuple[Claim, Video]], outcome: CompleteOutcome) -> None:
        """``complete`` returned (``outcome.refused``: the results it refused)."""

    def failed(self, claim: Claim, retry_at: float | None, outcome: EndOutcome) -> None:
        """``fail`` returned."""

    def cancelled(self, execution_id: str, outcome: EndOutcome) -> None:
        """``cancel`` returned."""

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        self.enter()
        try:
            while self.hold is not None:
                self.leave()  # a hung call is not in flight: the engine is blocked on it
                try:
                    await self.hold.wait()
                finally:
                    self.enter()
            return await call()
        finally:
            self.leave()
            await anyio.lowlevel.checkpoint()

    async def open(self) -> None:
        await self._call(self.inner.open)

    async def close(self) -> None:
        await self._call(self.inner.close)

    async def apply(self, changes: Sequence[Change], *, owner: str | None = None) -> None:
        await self._call(lambda: self.inner.apply(changes, owner=owner))

    async def claim_outbox(
        self,
        owner: str,
        *,
        now: float,
        lease_until: float,
        dead_owners: Collection[str] = (),
    ) -> list[Notification]:
        return await self._call(
            lambda: self.inner.claim_outbox(
                owner, now=now, lease_until=lease_until, dead_owners=dead_owners
            )
        )

    async def deliveries(self, execution_id: str) -> list[DeliveryAttempt]:
        return await self._call(lambda: self.inner.deliveries(execution_id))

    async def outbox_counts(self) -> dict[str, int]:
        return await self._call(self.inner.outbox_counts)

    async def get(self, execution_id: str) -> Execution | None:
        return await self._call(lambda: self.inner.get(execution_id))

    async def counts(self, *, tenant: str | None = None) -> dict[str, int]:
        return await self._call(lambda: self.inner.counts(tenant=tenant))

    async def submit(
        self, execution: Execution, fingerprint: str | None = None, *, now: float
    ) -> Execution:
        return await self._call(lambda: self.inner.submit(execution, fingerprint, now=now))

    async def claim(
        self,
        engine_id: str,
        *,
        types: Collection[str] | None = None,
        limit: int,
        now: float,
    ) -> list[Claim]:
        claims = await self._call(
            lambda: self.inner.claim(engine_id, types=types, limit=limit, now=now)
        )
        self.claimed(claims)
        return claims

    async def set_limits(self, limits: Mapping[str, int]) -> None:
        await self._call(lambda: self.inner.set_limits(limits))

    async def limits(self) -> dict[str, int]:
        return await self._call(self.inner.limits)

    async def complete(
        self, results: Sequence[tuple[Claim, Video]], *, now: float
    ) -> CompleteOutcome:
        async def call() -> CompleteOutcome:
            self.completing(results)
            return await self.inner.complete(results, now=now)

        outcome = await self._call(call)
        self.completed(results, outcome)
        return outcome

    async def fail(
        self, claim: Claim, message: str, *, retry_at: float | None, now: float
    ) -> EndOutcome:
        outcome = await self._call(
            lambda: self.inner.fail(claim, message, retry_at=retry_at, now=now)
        )
        self.failed(claim, retry_at, outcome)
        return outcome

    async def cancel(self, execution_id: str, *, now: float, reason: str) -> EndOutcome:
        outcome = await self._call(lambda: self.inner.cancel(execution_id, now=now, reason=reason))
        self.cancelled(execution_id, outcome)
        return outcome

    async def resume(self, execution_id: str, *, now: float) -> Execution:
        return await self._call(lambda: self.inner.resume(execution_id, now=now))

    async def register(
        self,
        engine_id: str,
        job_types: Collection[str] | None = None,
        *,
        now: float,
        lease_until: float,
    ) -> None:
        await self._call(
            lambda: self.inner.register(engine_id, job_types, now=now, lease_until=lease_until)
        )

    async def heartbeat(self, engine_id: str, *, now: float, lease_until: float) -> bool:
        return await self._call(
            lambda: self.inner.heartbeat(engine_id, now=now, lease_until=lease_until)
        )

    async def rescue(self, *, now: float) -> int:
        return await self._call(lambda: self.inner.rescue(now=now))

    async def release(self, engine_id: str) -> int:
        return await self._call(lambda: self.inner.release(engine_id))

    async def engines(self, *, now: float) -> list[EngineInfo]:
        return await self._call(lambda: self.inner.engines(now=now))

    async def running_by_type(self) -> dict[str, int]:
        return await self._call(self.inner.running_by_type)

    async def job_counts(self) -> dict[str, int]:
        return await self._call(self.inner.job_counts)

    def listen(self) -> contextlib.AbstractAsyncContextManager[AsyncIterator[BoardEvent]]:
        return self.inner.listen()

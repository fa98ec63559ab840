"""The storage backends every engine-level test runs on, and a store wrapper that watches one.

``STORES`` is the one list: the engine state machine (``test_engine_machine.py``) runs a world on
each and checks they agree; the invariant properties (``test_invariants.py``) run on each in turn.
A new backend (PostgreSQL, say) is one more entry here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import TypeAlias, TypeVar

import anyio
import anyio.lowlevel
from attrs import frozen

from adapters.memory import MemoryStorage
from adapters.sqlite import SqliteStorage
from engine import Execution, Notification, Storage
from engine.errors import LeaseLost
from engine.models import Change, DeliveryAttempt

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

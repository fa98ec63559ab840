"""Leases and sweeps: which engine runs which execution when several share one store.

Each unfinished execution is held by one engine under a lease of ``lease`` seconds, renewed every
``sweep_interval`` seconds in one write for everything the engine holds. Every write is fenced by
the store: once another engine holds an execution, this one's writes to it are refused
(:class:`~engine.errors.LeaseLost`) and it stops working on it (:meth:`Ownership.lose`).

A sweep renews the leases, drops what was lost, takes over what is claimable (unheld, lease
expired, or held by a process of this host that is gone), takes the webhook outbox of ended
executions no live engine holds, and polls the bases run by other engines for their ending.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable, Collection, Mapping

from engine.clock import Clock
from engine.models import TERMINAL, JobRef, Notification
from engine.ports import Storage
from engine.scheduler import Scheduler, Step

log = logging.getLogger("engine")


class Ownership:
    """This engine's leases on a shared store. See the module docstring."""

    def __init__(
        self,
        storage: Storage,
        scheduler: Scheduler,
        clock: Clock,
        owner: str,
        *,
        lease: float,
        commit: Callable[[Step], Awaitable[None]],
        abort: Callable[[Collection[JobRef]], None],
        send: Callable[[Notification], None],
    ) -> None:
        self.storage = storage
        self.scheduler = scheduler
        self.clock = clock
        self.owner = owner
        self.lease = lease
        self._commit = commit
        self._abort = abort
        self._send = send

    async def claim_and_admit(self, ids: list[str] | None = None, *, resume: bool = False) -> int:
        """Take claimable executions from the store and run them; returns how many.

        At start and on every sweep: unheld ones, ones whose lease expired, ones held by an
        engine that was a process on this host and is gone. Bases come before dependents.
        """
        now = self.clock.now()
        dead = dead_local_holders(await self.storage.holders(), self.owner)
        claimed = await self.storage.claim(
            self.owner, now=now, lease_until=now + self.lease, ids=ids, dead_owners=dead
        )
        scheduler = self.scheduler
        for execution in claimed:
            if scheduler.is_live(execution.id):
                continue
            if execution.status in TERMINAL and not resume:
                continue  # taken only to be held (cancel of one that just ended)
            base_id = execution.base_execution_id
            base = None
            if base_id is not None and not scheduler.is_live(base_id):
                base = await self.storage.get(base_id)
            step = scheduler.admit(execution, base, self.clock.now(), resume=resume)
            await self._commit(step)
        if claimed and not resume:
            log.info("%s took %d unfinished executions", self.owner, len(claimed))
        return len(claimed)

    async def hold(self, execution_id: str) -> None:
        """Hold one execution (ended ones too), so this engine's writes to it are accepted."""
        now = self.clock.now()
        await self.storage.claim(
            self.owner, now=now, lease_until=now + self.lease, ids=[execution_id]
        )

    async def sweep(self) -> None:
        """Renew leases, notice lost ones, take over abandoned work, poll external bases."""
        held = await self.storage.renew(self.owner, lease_until=self.clock.now() + self.lease)
        lost = [i for i in self.scheduler.live_executions() if i not in held]
        if lost:
            self.lose(lost)
        await self.claim_and_admit()
        await self.claim_outbox()
        for base_id in list(self.scheduler.external):
            base = await self.storage.get(base_id)
            if base is not None and base.status in TERMINAL:
                step = self.scheduler.base_ended(
                    base_id, base.status, base.result, self.clock.now()
                )
                await self._commit(step)

    async def claim_outbox(self) -> None:
        """Send the pending webhook events that no live engine is sending (after a crash)."""
        now = self.clock.now()
        dead = dead_local_holders(await self.storage.holders(), self.owner)
        for notification in await self.storage.claim_outbox(
            self.owner, now=now, lease_until=now + self.lease, dead_owners=dead
        ):
            self._send(notification)

    def lose(self, execution_ids: Collection[str]) -> None:
        """Another engine holds these now: stop working on them."""
        log.warning("%s lost its lease on %s", self.owner, ", ".join(sorted(execution_ids)))
        self._abort(self.scheduler.drop(execution_ids))

    async def release(self, ended: Collection[str] = ()) -> None:
        """Give up every lease at once, so another engine can take the work without waiting:
        the unfinished executions' and those of ``ended`` ones (whose webhook events this engine
        leaves pending)."""
        await self.storage.release(self.owner)
        if ended:
            await self.storage.release(self.owner, ended)


def new_owner_name() -> str:
    """``host:pid:random``, so an engine on the same host can tell that the process behind a
    lease is gone and take its work at once."""
    import secrets

    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def dead_local_holders(holders: Mapping[str, float], me: str) -> list[str]:
    """Holders that were processes on this host and no longer run."""
    host = socket.gethostname()
    dead = []
    for holder in holders:
        name, _, rest = holder.partition(":")
        pid_text = rest.partition(":")[0]
        if holder == me or name != host or not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.append(holder)
        except PermissionError:
            continue
    return dead

"""Webhook delivery: hand each ending to the notifier, keep its delivery log, close its outbox row.

An execution with a webhook that ends gets an ``OutboxAdd`` written in the same store write that
ends it (:meth:`Delivery.outbox_changes`), so the event survives a crash; after that write the
engine :meth:`~Delivery.send`\\ s the notification. A fixed pool of ``concurrency`` tasks takes
notifications off one stream and delivers them, so a burst of endings never starts more tasks
than that. Each attempt the notifier makes is appended to the store's delivery log; when the
notifier is done the event is marked ``delivered``, ``failed`` (gave up) or ``notified`` (taken
by a notifier that makes no HTTP attempts). A delivery cut short (the engine stopped while a
retry was due) stays ``pending``, to be sent again by whichever engine takes the outbox next.

Stopping (:meth:`Delivery.drain`) waits for the deliveries under way, up to a grace period. On a
durable store (``storage.durable``) a delivery waiting for a retry is not waited for: its event is
in the outbox and is sent again after a restart, its attempts numbered on from the log; in memory
nothing would send it again, so the grace period is all it gets.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.errors import LeaseLost
from engine.models import (
    DeliveryAttempt,
    DeliveryRecorded,
    Ended,
    Execution,
    Notification,
    OutboxAdd,
    OutboxDone,
    OutboxStatus,
)
from engine.ports import Notifier, OutboxStore
from engine.requests import event_id
from engine.webhooks import payload_for

log = logging.getLogger("engine")


def notification_for(ended: Ended) -> Notification:
    """The notification of one ending (its event id is stable: the ``webhook-id``)."""
    return Notification(
        event_id=event_id(ended.execution_id, ended.generation),
        execution_id=ended.execution_id,
        status=ended.status,
        payload=payload_for(ended.execution_id, ended.status, ended.result, ended.error),
        webhook=ended.webhook,
        tenant=ended.tenant,
    )


class Delivery:
    """The engine's webhook deliveries. See the module docstring."""

    def __init__(
        self,
        storage: OutboxStore,
        notifier: Notifier | None,
        owner: str,
        *,
        concurrency: int = 32,
    ) -> None:
        self.storage = storage
        self.notifier = notifier
        self.owner = owner
        self.concurrency = concurrency
        #: Completion -> 2xx receipt, seconds, for the last deliveries.
        self.latency: deque[float] = deque(maxlen=10_000)
        self._completed_at: dict[str, float] = {}
        self._sending: set[str] = set()  # event ids being delivered now
        self._backing_off: set[str] = set()  # event ids whose last attempt asked for a retry
        self._cut_short: set[str] = set()  # executions whose delivery the engine's stop cut short
        self._undelivered = 0
        #: Set on each settled attempt; made only while a drain waits (one per delivery would
        #: cost as much as the rest of an execution's bookkeeping).
        self._delivered: anyio.Event | None = None
        self._send_stream: MemoryObjectSendStream[Notification] | None = None
        self._receive_stream: MemoryObjectReceiveStream[Notification] | None = None

    # --- wiring into a write ----------------------------------------------------------------------

    def outbox_changes(self, notifications: Sequence[Notification]) -> list[OutboxAdd]:
        """The outbox rows to write with the endings (events with a webhook, if we notify)."""
        if self.notifier is None:
            return []
        return [
            OutboxAdd(n.event_id, n.execution_id, n.status, n.payload)
            for n in notifications
            if n.webhook is not None
        ]

    def ended(self, ended: Ended, notification: Notification) -> None:
        """An ending was written: remember when (for latency), then send its notification."""
        if ended.status == "completed" and self.notifier is not None:
            self._completed_at[ended.execution_id] = ended.completed_at
        self.send(notification)

    def send(self, notification: Notification) -> None:
        """Queue a notification for the pool (a no-op for an engine without a notifier)."""
        if self.notifier is not None and self._send_stream is not None:
            self._undelivered += 1
            self._send_stream.send_nowait(notification)

    def is_sending(self, event: str) -> bool:
        return event in self._sending

    async def attempts_made(self, execution: Execution, event: str) -> int:
        return len([d for d in await self.storage.deliveries(execution.id) if d.event_id == event])

    # --- the pool ---------------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Deliver until cancelled, with ``concurrency`` delivery tasks."""
        send, receive = anyio.create_memory_object_stream[Notification](math.inf)
        self._send_stream, self._receive_stream = send, receive
        try:
            async with anyio.create_task_group() as pool:
                for _ in range(self.concurrency):
                    pool.start_soon(self._deliver_from, receive.clone())
                task_status.started()
        finally:
            self._send_stream = self._receive_stream = None
            send.close()
            receive.close()

    async def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the notifications being delivered; on a durable
        store, not for those waiting for a retry (the outbox keeps them)."""
        leave_retries = self.storage.durable
        with anyio.move_on_after(grace, shield=True):
            while self._undelivered - (len(self._backing_off) if leave_retries else 0) > 0:
                if self._delivered is None:
                    self._delivered = anyio.Event()
                await self._delivered.wait()

    def cut_short(self) -> list[str]:
        """The executions whose webhook delivery was cut short by the stop: their events are
        pending in the outbox, for the store's next engine (which need not wait for a lease)."""
        return sorted(self._cut_short)

    def _wake(self) -> None:
        if self._delivered is not None:
            self._delivered.set()
            self._delivered = None

    async def _deliver_from(self, receive: MemoryObjectReceiveStream[Notification]) -> None:
        with receive:
            async for notification in receive:
                await self.deliver(notification)

    async def deliver(self, notification: Notification) -> None:
        """Hand one event to the notifier; for a webhook, keep its delivery log in the store."""
        notifier = self.notifier
        if notifier is None:
            return
        durable = notification.webhook is not None
        last: list[DeliveryAttempt] = []
        settled = not durable
        self._sending.add(notification.event_id)

        async def record(attempt: DeliveryAttempt) -> None:
            await self.storage.apply([DeliveryRecorded(attempt)], owner=self.owner)
            last[:] = [attempt]
            if attempt.outcome == "retry":
                self._backing_off.add(notification.event_id)
                self._wake()  # a drain need not wait for this one (on a durable store)
            else:
                self._backing_off.discard(notification.event_id)
                self._sending.discard(notification.event_id)  # a redeliver may start now
            if attempt.outcome == "delivered":
                ended_at = self._completed_at.pop(attempt.execution_id, None)
                if ended_at is not None:
                    self.latency.append(attempt.at + attempt.latency - ended_at)

        try:
            await notifier.notify(notification, record if durable else None)
            if durable and (not last or last[0].outcome != "retry"):
                status: OutboxStatus = "notified"
                if last:
                    status = "delivered" if last[0].outcome == "delivered" else "failed"
                done = OutboxDone(notification.event_id, notification.execution_id, status)
                await self.storage.apply([done], owner=self.owner)
            settled = True
        except LeaseLost:
            settled = True
            log.warning("another engine took over delivering %s", notification.event_id)
        except Exception:
            log.exception("notifier failed for execution %s", notification.execution_id)
        finally:
            if not settled:
                self._cut_short.add(notification.execution_id)
            self._completed_at.pop(notification.execution_id, None)
            self._sending.discard(notification.event_id)
            self._backing_off.discard(notification.event_id)
            self._undelivered -= 1
            self._wake()

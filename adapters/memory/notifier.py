"""A notifier that keeps what it is told, for tests and for hosts that poll."""

from __future__ import annotations

import anyio
from attrs import define, field

from engine.models import Notification
from engine.ports import AttemptRecorder


@define
class RecordingNotifier:
    """Records every notification in ``deliveries``, in order; ``wait_for(n)`` waits for n.

    It makes no delivery attempts, so it never calls ``record``: the engine marks its events
    ``notified``.
    """

    deliveries: list[Notification] = field(factory=list, init=False)
    #: Set when a notification arrives; made only while someone waits.
    _arrived: anyio.Event | None = field(default=None, init=False)

    async def notify(
        self, notification: Notification, record: AttemptRecorder | None = None
    ) -> None:
        self.deliveries.append(notification)
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None

    async def wait_for(self, count: int) -> list[Notification]:
        """Wait until at least ``count`` notifications have arrived; return them all."""
        while len(self.deliveries) < count:
            if self._arrived is None:
                self._arrived = anyio.Event()
            await self._arrived.wait()
        return list(self.deliveries)

    def for_execution(self, execution_id: str) -> list[Notification]:
        return [d for d in self.deliveries if d.execution_id == execution_id]

    def reset(self) -> None:
        self.deliveries.clear()

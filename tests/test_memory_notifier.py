"""RecordingNotifier: what it keeps, and that it makes no delivery attempts."""

from __future__ import annotations

import anyio
import pytest

from adapters.memory import RecordingNotifier
from engine.models import DeliveryAttempt, Notification, Webhook
from engine.ports import Notifier

pytestmark = pytest.mark.anyio


def event(n: int, execution_id: str = "exec_1") -> Notification:
    return Notification(
        event_id=f"evt_{n}",
        execution_id=execution_id,
        status="completed",
        payload={"executionId": execution_id, "status": "completed"},
        webhook=Webhook("https://hooks.example/x"),
        attempts_made=n,
    )


async def test_it_records_notifications_and_never_calls_record() -> None:
    notifier = RecordingNotifier()
    recorded: list[DeliveryAttempt] = []

    async def record(attempt: DeliveryAttempt) -> None:
        recorded.append(attempt)

    assert isinstance(notifier, Notifier)
    await notifier.notify(event(0), record)
    await notifier.notify(event(1, "exec_2"))

    assert notifier.deliveries == [event(0), event(1, "exec_2")]
    assert notifier.for_execution("exec_2") == [event(1, "exec_2")]
    assert recorded == []
    notifier.reset()
    assert notifier.deliveries == []


async def test_wait_for_waits_until_enough_arrived() -> None:
    notifier = RecordingNotifier()
    async with anyio.create_task_group() as tg:
        tg.start_soon(notifier.notify, event(0))
        tg.start_soon(notifier.notify, event(1))
        assert await notifier.wait_for(2) == [event(0), event(1)]

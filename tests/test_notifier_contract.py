"""The notifier contract, run on every notifier alike.

``BACKENDS`` names each notifier under test; :func:`open_case` builds one with the receiving end
a test reads (a :class:`Case`):

- ``memory``: :class:`adapters.memory.RecordingNotifier`; what it "receives" for a URL is the
  notifications it recorded whose webhook has that URL.
- ``http``: :class:`adapters.http.HttpNotifier` (``allowed_networks=("127.0.0.0/8",)``) POSTing
  to a real receiver served by uvicorn on 127.0.0.1 (``http_support.webhook_receiver``).

Both must: deliver a notification once to a healthy receiver, its payload as it was given (the
real payload of an engine's execution, and unusual JSON too), several at once each to its own
receiver; accept a notification without a webhook and send it nowhere; record each delivery
attempt through ``record`` with the right fields when they make attempts (the HTTP notifier), or
never call it when they make none (the recording one). Signing notifiers' bodies verify with
``engine.verify_webhook`` and with the independent ``standardwebhooks`` package. HTTP-only
behaviour (retries, back-off, SSRF guard) stays in ``test_http_notifier.py``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from attrs import define, field, frozen
from http_support import LOOPBACK, Receiver, webhook_receiver
from standardwebhooks.webhooks import Webhook as StandardWebhook
from standardwebhooks.webhooks import WebhookVerificationError

from adapters.http import HttpNotifier
from adapters.memory import RecordingNotifier
from engine import (
    Engine,
    InvalidSignature,
    Notification,
    Notifier,
    Webhook,
    compose,
    generate_video,
    merge,
    verify_webhook,
)
from engine.models import DeliveryAttempt

pytestmark = pytest.mark.anyio

#: Every notifier the contract runs on; a new one is one more name here and in ``open_case``.
BACKENDS = ("memory", "http")
#: Notifiers that sign what they send, so a receiver can check it came from the engine.
SIGNING = ("http",)

SECRET = "whsec_" + base64.b64encode(b"contract-test-key-0123456789abcd").decode()
#: Seconds any delivery to a healthy receiver may take (a safety net: it takes milliseconds).
DELIVER_WITHIN = 10.0


@frozen
class Received:
    """One delivery as its receiver saw it: the payload, and the HTTP request if it was one."""

    event_id: str
    payload: Any
    body: bytes | None = None
    headers: Mapping[str, str] | None = None


@define
class Case:
    """One notifier under the contract, with receivers for it to deliver to."""

    name: str
    notifier: Notifier
    #: Whether the notifier makes delivery attempts (and so must ``record`` each one).
    makes_attempts: bool

    async def url(self) -> str:
        """The webhook URL of a new healthy receiver."""
        raise NotImplementedError

    def received(self, url: str) -> list[Received]:
        """What the receiver at ``url`` got, in order."""
        raise NotImplementedError


@define
class MemoryCase(Case):
    recording: RecordingNotifier = field(kw_only=True)
    urls: list[str] = field(factory=list, kw_only=True)

    async def url(self) -> str:
        self.urls.append(f"https://hooks.example.com/{len(self.urls) + 1}")
        return self.urls[-1]

    def received(self, url: str) -> list[Received]:
        return [
            Received(n.event_id, n.payload)
            for n in self.recording.deliveries
            if n.webhook is not None and n.webhook.url == url
        ]


@define
class HttpCase(Case):
    by_url: dict[str, Receiver] = field(factory=dict, kw_only=True)
    task_group: anyio.abc.TaskGroup | None = field(default=None, kw_only=True)

    async def url(self) -> str:
        assert self.task_group is not None
        ready = anyio.Event()
        holder: list[Receiver] = []

        async def serve() -> None:
            async with webhook_receiver() as receiver:
                holder.append(receiver)
                ready.set()
                await anyio.sleep_forever()

        self.task_group.start_soon(serve)
        await ready.wait()
        receiver = holder[0]
        self.by_url[receiver.url] = receiver
        return receiver.url

    def received(self, url: str) -> list[Received]:
        return [
            Received(r.webhook_id, json.loads(r.body), r.body, r.headers)
            for r in self.by_url[url].received
        ]


@asynccontextmanager
async def open_case(name: str) -> AsyncIterator[Case]:
    if name == "memory":
        recording = RecordingNotifier()
        yield MemoryCase(name, recording, False, recording=recording)
    elif name == "http":
        notifier = HttpNotifier(allowed_networks=LOOPBACK, retry_schedule=(0, 0), timeout=5)
        async with anyio.create_task_group() as task_group:
            yield HttpCase(name, notifier, True, task_group=task_group)
            task_group.cancel_scope.cancel()
    else:
        raise ValueError(f"no notifier case {name!r}: add it to open_case")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


class Recorder:
    """A ``record`` callback: keeps every attempt it is given."""

    def __init__(self) -> None:
        self.attempts: list[DeliveryAttempt] = []

    async def __call__(self, attempt: DeliveryAttempt) -> None:
        self.attempts.append(attempt)


def notification(
    url: str | None,
    payload: Mapping[str, Any] | None = None,
    *,
    event_id: str = "evt_1",
    execution_id: str = "exec_1",
    secret: str | None = SECRET,
    attempts_made: int = 0,
) -> Notification:
    body = payload if payload is not None else {"executionId": execution_id, "status": "completed"}
    return Notification(
        event_id=event_id,
        execution_id=execution_id,
        status="completed",
        payload=body,
        webhook=None if url is None else Webhook(url, secret),
        attempts_made=attempts_made,
    )


async def notify(case: Case, sent: Notification, record: Recorder | None = None) -> None:
    with anyio.fail_after(DELIVER_WITHIN):
        await case.notifier.notify(sent, record)


async def engine_notification() -> Notification:
    """The notification a real execution ends with (the in-memory engine, the fake provider)."""
    notifier = RecordingNotifier()
    pipeline = compose(
        generate_video(prompt="Scène 1 — «Bonjour»", duration=3),
        generate_video(prompt="Scene 2", duration=4),
        merge(transition="crossfade", transition_duration=0.5),
    )
    async with Engine.in_memory(notifier=notifier) as engine:
        execution = await pipeline.execute(
            engine, webhook_url="https://hooks.example.com/engine", webhook_secret=SECRET
        )
        await execution.wait(timeout=10)
        (sent,) = await notifier.wait_for(1)
    return sent


def assert_recorded(case: Case, record: Recorder, sent: Notification, url: str) -> None:
    """Attempting notifiers record one delivered attempt; others never call ``record``."""
    if not case.makes_attempts:
        assert record.attempts == []
        return
    (attempt,) = record.attempts
    assert attempt.event_id == sent.event_id
    assert attempt.execution_id == sent.execution_id
    assert attempt.url == url
    assert attempt.attempt == sent.attempts_made + 1
    assert attempt.outcome == "delivered"
    assert attempt.status_code is not None and 200 <= attempt.status_code < 300
    assert attempt.error is None
    assert attempt.retry_at is None
    assert attempt.latency >= 0
    assert abs(attempt.at - time.time()) < 60  # on the notifier's clock: the system's here


# --- delivery -----------------------------------------------------------------------------------


def test_every_notifier_is_the_port() -> None:
    assert isinstance(RecordingNotifier(), Notifier)
    assert isinstance(HttpNotifier(), Notifier)


async def test_a_healthy_receiver_gets_the_engines_notification_once(backend: str) -> None:
    sent_by_engine = await engine_notification()
    assert sent_by_engine.payload["status"] == "completed"
    async with open_case(backend) as case:
        url = await case.url()
        sent = notification(
            url,
            sent_by_engine.payload,
            event_id=sent_by_engine.event_id,
            execution_id=sent_by_engine.execution_id,
        )
        record = Recorder()
        await notify(case, sent, record)
        (got,) = case.received(url)
        assert got.event_id == sent.event_id
        assert got.payload == json.loads(json.dumps(sent.payload))
        assert_recorded(case, record, sent, url)


@pytest.mark.parametrize(
    "payload",
    [
        {"executionId": "exec_1", "status": "failed", "error": {"code": "job_failed"}},
        {"text": "Übersetzung — 字幕 🎬", "escapes": 'quote " backslash \\ newline \n'},
        {"nested": [[], {}, [1.5, -2, 10**15], {"null": None, "yes": True}]},
    ],
    ids=["failed", "unicode", "nested"],
)
async def test_the_payload_arrives_as_it_was_given(backend: str, payload: dict[str, Any]) -> None:
    async with open_case(backend) as case:
        url = await case.url()
        await notify(case, notification(url, payload), None)
        (got,) = case.received(url)
        assert got.payload == payload


async def test_several_notifications_at_once_each_reach_their_own_receiver(backend: str) -> None:
    async with open_case(backend) as case:
        urls = [await case.url() for _ in range(3)]
        records = [Recorder() for _ in urls]
        sent = [
            notification(url, {"n": n}, event_id=f"evt_{n}", execution_id=f"exec_{n}")
            for n, url in enumerate(urls)
        ]
        async with anyio.create_task_group() as task_group:
            for one, record in zip(sent, records, strict=True):
                task_group.start_soon(notify, case, one, record)
        for n, (url, one, record) in enumerate(zip(urls, sent, records, strict=True)):
            assert [(r.event_id, r.payload) for r in case.received(url)] == [(f"evt_{n}", {"n": n})]
            assert_recorded(case, record, one, url)


async def test_a_continued_delivery_is_delivered_once_and_numbered_on(backend: str) -> None:
    async with open_case(backend) as case:
        url = await case.url()
        sent = notification(url, attempts_made=2)
        record = Recorder()
        await notify(case, sent, record)
        assert [r.event_id for r in case.received(url)] == ["evt_1"]
        assert_recorded(case, record, sent, url)


async def test_a_notification_without_webhook_is_accepted_and_sent_nowhere(backend: str) -> None:
    async with open_case(backend) as case:
        url = await case.url()
        record = Recorder()
        await notify(case, notification(None), record)
        await notify(case, notification(None), None)
        assert case.received(url) == []
        assert record.attempts == []


# --- signatures ---------------------------------------------------------------------------------


@pytest.fixture(params=SIGNING)
def signing(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


async def test_signatures_verify_with_the_engine_and_with_standardwebhooks(signing: str) -> None:
    sent_by_engine = await engine_notification()
    async with open_case(signing) as case:
        url = await case.url()
        sent = notification(url, sent_by_engine.payload, event_id=sent_by_engine.event_id)
        await notify(case, sent)
        (got,) = case.received(url)
        assert got.body is not None and got.headers is not None
        assert got.headers["webhook-id"] == sent.event_id
        ours = verify_webhook(got.body, got.headers, SECRET)
        theirs = StandardWebhook(SECRET).verify(got.body, dict(got.headers))
        assert ours == theirs == json.loads(json.dumps(sent.payload))
        # A body changed on the way verifies with neither.
        tampered = got.body.replace(b"completed", b"cancelled")
        assert tampered != got.body
        with pytest.raises(InvalidSignature):
            verify_webhook(tampered, got.headers, SECRET)
        with pytest.raises(WebhookVerificationError):
            StandardWebhook(SECRET).verify(tampered, dict(got.headers))


async def test_without_a_secret_nothing_is_signed(signing: str) -> None:
    async with open_case(signing) as case:
        url = await case.url()
        await notify(case, notification(url, secret=None))
        (got,) = case.received(url)
        assert got.headers is not None
        assert "webhook-signature" not in got.headers
        assert got.headers["webhook-id"] == "evt_1"

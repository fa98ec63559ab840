"""HttpNotifier against a real HTTP receiver on loopback (the SSRF guard itself: test_net.py).

Backoff runs on a ManualClock that moves itself to each deadline the notifier sleeps until, so no
test sleeps through a retry delay; every wait is on an event.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import hmac
import json
import logging
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream
from attrs import define, field
from clocks import SteppingClock
from standardwebhooks.webhooks import Webhook as StandardWebhook

from adapters.http import DeliveryAttempt, HttpNotifier, WebhookRefused
from adapters.net import literal_address
from engine import models
from engine.clock import ManualClock
from engine.errors import ConfigError, EngineError, LeaseLost
from engine.models import Notification, Webhook
from engine.webhooks import verify_webhook

pytestmark = pytest.mark.anyio

KEY = b"receiver-test-key-0123456789abcd"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
LOOPBACK = ("127.0.0.0/8",)
PAYLOAD = {"executionId": "exec_1", "status": "completed", "video": {"url": "https://cdn/v.mp4"}}


# --- a tiny HTTP/1.1 receiver --------------------------------------------------------------------


@define
class Reply:
    status: int = 200
    headers: dict[str, str] = field(factory=dict)
    hold: anyio.Event | None = None  # answer only once this is set (never: a slow receiver)


@define
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    hex_ok: bool
    standard_ok: bool
    ours_ok: bool


@define
class Receiver:
    """Answers each request with the next ``Reply`` (the last one repeats); checks signatures."""

    clock: ManualClock
    replies: list[Reply] = field(factory=lambda: [Reply()])
    connections: int = 0
    requests: list[Received] = field(factory=list)
    port: int = 0

    async def run(self, port: int = 0, *, task_status: TaskStatus[int]) -> None:
        async with await anyio.create_tcp_listener(
            local_host="127.0.0.1", local_port=port
        ) as listener:
            self.port = listener.extra(SocketAttribute.local_port)
            task_status.started(self.port)
            await listener.serve(self._handle)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, stream: SocketStream) -> None:
        self.connections += 1
        async with stream:
            buffered = BufferedByteReceiveStream(stream)
            try:
                head = await buffered.receive_until(b"\r\n\r\n", 65536)
                lines = head.decode("latin-1").split("\r\n")
                _method, path, _version = lines[0].split(" ")
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                body = await buffered.receive_exactly(length) if length else b""
            except (anyio.EndOfStream, anyio.IncompleteRead):
                return
            self.requests.append(self._check(path, headers, body))
            reply = self.replies[min(len(self.requests), len(self.replies)) - 1]
            if reply.hold is not None:
                await reply.hold.wait()
            extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
            response = (
                f"HTTP/1.1 {reply.status} Whatever\r\nContent-Length: 2\r\n"
                f"Connection: close\r\n{extra}\r\nok"
            )
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await stream.send(response.encode("latin-1"))

    def _check(self, path: str, headers: dict[str, str], body: bytes) -> Received:
        expected_hex = hmac.new(KEY, body, hashlib.sha256).hexdigest()
        hex_ok = hmac.compare_digest(headers.get("x-webhook-signature", ""), expected_hex)
        try:
            StandardWebhook(SECRET).verify(body, headers)
            standard_ok = True
        except Exception:
            standard_ok = False
        try:
            verify_webhook(body, headers, SECRET, now=self.clock.now())
            ours_ok = True
        except EngineError:
            ours_ok = False
        return Received(path, headers, body, hex_ok, standard_ok, ours_ok)


def notification(
    url: str, secret: str | None = SECRET, event_id: str = "evt_1", attempts_made: int = 0
) -> Notification:
    return Notification(
        event_id=event_id,
        execution_id="exec_1",
        status="completed",
        payload=PAYLOAD,
        webhook=Webhook(url=url, secret=secret),
        attempts_made=attempts_made,
    )


def notifier(clock: SteppingClock, **kwargs: Any) -> HttpNotifier:
    kwargs.setdefault("allowed_networks", LOOPBACK)
    kwargs.setdefault("jitter", 0.0)
    kwargs.setdefault("timeout", 5.0)
    return HttpNotifier(clock=clock, **kwargs)


# --- delivery against a real receiver ------------------------------------------------------------


async def test_delivered_with_both_signatures_valid() -> None:
    clock = SteppingClock.at_wall_time()
    receiver = Receiver(clock.manual)
    seen: list[DeliveryAttempt] = []
    async with anyio.create_task_group() as tg:
        await tg.start(receiver.run)
        sender = notifier(clock, on_attempt=seen.append)
        await sender.notify(notification(receiver.url()))
        tg.cancel_scope.cancel()

    [request] = receiver.requests
    assert request.path == "/hook"
    assert request.hex_ok
    assert request.standard_ok
    assert request.ours_ok
    assert json.loads(request.body) == PAYLOAD
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"] == "evt_1"
    assert request.headers["host"] == f"127.0.0.1:{receiver.port}"
    [attempt] = sender.attempts
    assert seen == [attempt]
    assert attempt.outcome == "delivered"
    assert attempt.status_code == 200
    assert attempt.error is None
    assert attempt.attempt == 1
    assert attempt.at == clock.now()
    assert attempt.url == receiver.url()
    result = sender.results["evt_1"]
    assert result.delivered
    assert result.attempts == 1
    assert clock.deadlines == []  # the first attempt did not wait


async def test_without_secret_no_signatures_but_ids() -> None:
    clock = SteppingClock.at_wall_time()
    receiver = Receiver(clock.manual)
    async with anyio.create_task_group() as tg:
        await tg.start(receiver.run)
        await notifier(clock).notify(notification(receiver.url(), secret=None))
        tg.cancel_scope.cancel()
    [request] = receiver.requests
    assert "x-webhook-signature" not in request.headers
    assert "webhook-signature" not in request.headers
    assert request.headers["webhook-id"] == "evt_1"
    assert request.headers["webhook-timestamp"] == str(int(clock.now()))


async def test_no_webhook_means_nothing_to_do() -> None:
    sender = HttpNotifier()
    await sender.notify(
        Notification(event_id="e", execution_id="x", status="completed", payload=PAYLOAD)
    )
    assert sender.attempts == []
    assert sender.results == {}


async def test_500_then_500_then_200_retries_with_the_same_id() -> None:
    clock = SteppingClock.at_wall_time()
    receiver = Receiver(clock.manual, replies=[Reply(500), Reply(500), Reply(200)])
    async with anyio.create_task_group() as tg:
        await tg.start(receiver.run)
        start = clock.now()
        sender = notifier(clock, retry_schedule=(0, 5, 60, 600))
        await sender.notify(notification(receiver.url()))
        tg.cancel_scope.cancel()

    assert [a.outcome for a in sender.attempts] == ["retry", "retry", "delivered"]
    assert [a.status_code for a in sender.attempts] == [500, 500, 200]
    assert [a.attempt for a in sender.attempts] == [1, 2, 3]
    assert clock.deadlines == [start + 5, start + 65]
    assert [a.retry_at for a in sender.attempts] == [start + 5, start + 65, None]
    assert {r.headers["webhook-id"] for r in receiver.requests} == {"evt_1"}
    stamps = [r.headers["webhook-timestamp"] for r in receiver.requests]
    assert stamps == [str(int(start)), str(int(start + 5)), str(int(start + 65))]
    assert all(r.hex_ok and r.standard_ok and r.ours_ok for r in receiver.requests)
    assert sender.results["evt_1"].delivered
    assert sender.results["evt_1"].attempts == 3


async def test_gives_up_after_the_schedule() -> None:
    clock = SteppingClock.at_wall_time()
    receiver = Receiver(clock.manual, replies=[Reply(500)])
    async with anyio.create_task_group() as tg:
        await tg.start(receiver.run)
        sender = notifier(clock, retry_schedule=(0, 1, 2))
        await sender.notify(notification(receiver.url()))
        tg.cancel_scope.cancel()
    assert [a.outcome for a in sender.attempts] == ["retry", "retry", "failed"]
    assert sender.attempts[-1].error == "HTTP 500"
    assert len(receiver.requests) == 3
    result = sender.results["evt_1"]
    assert not result.delivered
    assert (result.attempts, result.status_code) == (3, 500)


async def test_redirect_is_not_followed() -> None:
    clock = SteppingClock.at_wall_time()
    receiver = Receiver(clock.manual)
    async with anyio.create_task_group() as tg:
        port = await tg.start(receiver.run)
        elsewhere = f"http://127.0.0.1:{port}/elsewhere"
        receiver.replies = [Reply(302, {"Location": elsewhere})]
        # Even a client that follows redirects by default must not follow them here.
        async with httpx.AsyncClient(follow_redirects=True, trust_env=False) as client:
            sender = notifier(clock, client=client, retry_schedule=(0, 1))
            await sender.notify(notification(receiver.url()))
        tg.cancel_scope.cancel()
    assert [r.path for r in receiver.requests] == ["/hook", "/hook"]
    assert [a.status_code for a in sender.attempts] == [302, 302]
    assert [a.outcome for a in sender.attempts] == ["retry", "failed"]
    assert "redirect" in (sender.attempts[0].error or "")


async def test_receiver_down_then_up() -> None:
    clock = SteppingClock.at_wall_time()
    receiver = Receiver(clock.manual)
    async with anyio.create_task_group() as tg:
        # Find a free port, then leave it closed: the first attempt is refused.
        port = await tg.start(receiver.run)
        tg.cancel_scope.cancel()
    receiver.port = port

    async with anyio.create_task_group() as tg:

        async def start_receiver(deadline: float) -> None:
            await tg.start(receiver.run, port)

        clock.on_sleep = start_receiver
        sender = notifier(clock, retry_schedule=(0, 5))
        await sender.notify(notification(receiver.url()))
        tg.cancel_scope.cancel()

    first, second = sender.attempts
    assert (first.outcome, first.status_code) == ("retry", None)
    assert "ConnectError" in (first.error or "")
    assert (second.outcome, second.status_code) == ("delivered", 200)
    assert receiver.connections == 1
    [request] = receiver.requests
    assert request.headers["webhook-id"] == "evt_1"
    assert request.hex_ok
    assert request.standard_ok


async def test_slow_receiver_times_out() -> None:
    clock = SteppingClock.at_wall_time()
    never = anyio.Event()
    receiver = Receiver(clock.manual, replies=[Reply(200, hold=never)])
    async with anyio.create_task_group() as tg:
        await tg.start(receiver.run)
        sender = notifier(clock, timeout=0.2, retry_schedule=(0,))
        await sender.notify(notification(receiver.url()))
        tg.cancel_scope.cancel()
    [attempt] = sender.attempts
    assert attempt.outcome == "failed"
    assert attempt.status_code is None
    assert "timed out" in (attempt.error or "")
    assert len(receiver.requests) == 1
    assert not sender.results["evt_1"].delivered


async def test_410_stops_at_once() -> None:
    clock = SteppingClock.at_wall_time()
    receiver = Receiver(clock.manual, replies=[Reply(410)])
    async with anyio.create_task_group() as tg:
        await tg.start(receiver.run)
        sender = notifier(clock, retry_schedule=(0, 5, 5))
        await sender.notify(notification(receiver.url()))
        tg.cancel_scope.cancel()
    [attempt] = sender.attempts
    assert (attempt.outcome, attempt.status_code) == ("failed", 410)
    assert len(receiver.requests) == 1
    assert clock.deadlines == []


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_seconds_is_honoured(status: int) -> None:
    clock = SteppingClock.at_wall_time()
    receiver = Receiver(clock.manual, replies=[Reply(status, {"Retry-After": "120"}), Reply(200)])
    async with anyio.create_task_group() as tg:
        await tg.start(receiver.run)
        start = clock.now()
        sender = notifier(clock, retry_schedule=(0, 5))
        await sender.notify(notification(receiver.url()))
        tg.cancel_scope.cancel()
    assert clock.deadlines == [start + 120]
    assert [a.outcome for a in sender.attempts] == ["retry", "delivered"]
    assert receiver.requests[1].standard_ok


async def test_retry_after_http_date_is_honoured() -> None:
    clock = SteppingClock.at_wall_time()
    receiver = Receiver(clock.manual)
    async with anyio.create_task_group() as tg:
        await tg.start(receiver.run)
        start = clock.now()
        when = email.utils.formatdate(start + 200, usegmt=True)
        receiver.replies = [Reply(429, {"Retry-After": when}), Reply(200)]
        sender = notifier(clock, retry_schedule=(0, 5))
        await sender.notify(notification(receiver.url()))
        tg.cancel_scope.cancel()
    assert clock.deadlines == [start + 200]


@pytest.mark.parametrize("value", ["\u00b2", "-120", "1.5", "later"])
async def test_a_retry_after_that_is_not_one_leaves_the_schedule(value: str) -> None:
    # "\u00b2" goes out as the byte 0xb2; str.isdigit() took it for a number and float() raised.
    clock = SteppingClock()
    receiver = Receiver(clock.manual, replies=[Reply(429, {"Retry-After": value}), Reply(200)])
    async with anyio.create_task_group() as tg:
        await tg.start(receiver.run)
        start = clock.now()
        sender = notifier(clock, retry_schedule=(0, 30))
        await sender.notify(notification(receiver.url()))
        tg.cancel_scope.cancel()
    assert clock.deadlines == [start + 30]
    assert [a.outcome for a in sender.attempts] == ["retry", "delivered"]


async def test_a_huge_retry_after_is_capped_at_a_day() -> None:
    clock = SteppingClock()
    receiver = Receiver(clock.manual, replies=[Reply(503, {"Retry-After": "9" * 30}), Reply(200)])
    async with anyio.create_task_group() as tg:
        await tg.start(receiver.run)
        start = clock.now()
        sender = notifier(clock, retry_schedule=(0, 30))
        await sender.notify(notification(receiver.url()))
        tg.cancel_scope.cancel()
    assert clock.deadlines == [start + 86400]


async def test_shorter_retry_after_does_not_shorten_the_schedule() -> None:
    clock = SteppingClock.at_wall_time()
    receiver = Receiver(clock.manual, replies=[Reply(503, {"Retry-After": "1"}), Reply(200)])
    async with anyio.create_task_group() as tg:
        await tg.start(receiver.run)
        start = clock.now()
        sender = notifier(clock, retry_schedule=(0, 30))
        await sender.notify(notification(receiver.url()))
        tg.cancel_scope.cancel()
    assert clock.deadlines == [start + 30]


async def test_loopback_refused_without_allowed_networks() -> None:
    clock = SteppingClock.at_wall_time()
    receiver = Receiver(clock.manual)
    seen: list[DeliveryAttempt] = []
    async with anyio.create_task_group() as tg:
        await tg.start(receiver.run)
        refusing = notifier(clock, allowed_networks=(), on_attempt=seen.append)
        await refusing.notify(notification(receiver.url()))
        assert receiver.connections == 0
        # The receiver works: an allowed notifier reaches it with exactly one connection.
        await notifier(clock).notify(notification(receiver.url(), event_id="evt_2"))
        tg.cancel_scope.cancel()

    [attempt] = refusing.attempts
    assert seen == [attempt]
    assert (attempt.outcome, attempt.status_code) == ("failed", None)
    assert "loopback" in (attempt.error or "")
    assert "127.0.0.1" in (attempt.error or "")
    assert not refusing.results["evt_1"].delivered
    assert receiver.connections == 1
    assert [r.headers["webhook-id"] for r in receiver.requests] == ["evt_2"]


async def test_localhost_name_is_refused_too() -> None:
    sender = notifier(SteppingClock.at_wall_time(), allowed_networks=(), retry_schedule=(0, 5))
    await sender.notify(notification("http://localhost:9/hook"))
    [attempt] = sender.attempts
    assert attempt.outcome == "failed"
    assert "loopback" in (attempt.error or "")


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "http:///nohost", "http://0177.0.0.1/", "file:///etc/passwd"]
)
async def test_bad_urls_are_refused_and_final(url: str) -> None:
    sender = notifier(SteppingClock.at_wall_time(), retry_schedule=(0, 5))
    await sender.notify(notification(url))
    [attempt] = sender.attempts
    assert attempt.outcome == "failed"
    assert attempt.error


async def test_bad_whsec_secret_is_final_and_not_shown() -> None:
    clock = SteppingClock.at_wall_time()
    receiver = Receiver(clock.manual)
    async with anyio.create_task_group() as tg:
        await tg.start(receiver.run)
        sender = notifier(clock, retry_schedule=(0, 5))
        await sender.notify(notification(receiver.url(), secret="whsec_%%%topsecret%%%"))
        tg.cancel_scope.cancel()
    [attempt] = sender.attempts
    assert attempt.outcome == "failed"
    assert "topsecret" not in (attempt.error or "")
    assert receiver.connections == 0


async def test_async_on_attempt_and_jittered_delay() -> None:
    clock = SteppingClock.at_wall_time()
    receiver = Receiver(clock.manual, replies=[Reply(500), Reply(204)])
    seen: list[DeliveryAttempt] = []

    async def observe(attempt: DeliveryAttempt) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(attempt)

    async with anyio.create_task_group() as tg:
        await tg.start(receiver.run)
        start = clock.now()
        sender = notifier(clock, retry_schedule=(0, 100), jitter=0.1, on_attempt=observe)
        await sender.notify(notification(receiver.url()))
        tg.cancel_scope.cancel()
    assert seen == sender.attempts
    [deadline] = clock.deadlines
    assert start + 90 <= deadline <= start + 110
    assert sender.attempts[-1].status_code == 204
    assert sender.attempts[-1].outcome == "delivered"


async def test_failing_on_attempt_does_not_stop_delivery() -> None:
    clock = SteppingClock.at_wall_time()
    receiver = Receiver(clock.manual)

    def broken(attempt: DeliveryAttempt) -> None:
        raise RuntimeError("observer bug")

    async with anyio.create_task_group() as tg:
        await tg.start(receiver.run)
        sender = notifier(clock, on_attempt=broken)
        await sender.notify(notification(receiver.url()))
        tg.cancel_scope.cancel()
    assert sender.results["evt_1"].delivered


# --- the request goes to the checked address (DNS rebinding), with the original name kept -------


async def test_request_goes_to_the_checked_ip_with_host_and_sni_kept() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    allowed = ("127.0.0.0/8", "::1/128")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        sender = notifier(SteppingClock.at_wall_time(), client=client, allowed_networks=allowed)
        await sender.notify(notification("https://localhost:8443/hook?x=1"))
        await sender.notify(notification("http://localhost/plain", event_id="evt_2"))
    tls, plain = sent
    assert literal_address(tls.url.host) is not None
    assert tls.url.port == 8443
    assert tls.url.path == "/hook"
    assert tls.url.query == b"x=1"
    assert tls.headers["host"] == "localhost:8443"
    assert tls.extensions["sni_hostname"] == "localhost"
    assert literal_address(plain.url.host) is not None
    assert plain.headers["host"] == "localhost"
    assert "sni_hostname" not in plain.extensions


async def test_transport_errors_never_escape() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        sender = notifier(SteppingClock.at_wall_time(), client=client, retry_schedule=(0, 1))
        await sender.notify(notification("http://127.0.0.1:1/hook"))
    assert [a.outcome for a in sender.attempts] == ["retry", "failed"]
    assert "ReadError" in (sender.attempts[0].error or "")


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="CIDR"):
        HttpNotifier(allowed_networks=("not-a-network",))
    with pytest.raises(ConfigError, match="not one string"):
        HttpNotifier(allowed_networks="127.0.0.0/8")
    with pytest.raises(ConfigError, match="retry_schedule"):
        HttpNotifier(retry_schedule=())
    with pytest.raises(ConfigError, match="retry_schedule"):
        HttpNotifier(retry_schedule=(0, -1))
    with pytest.raises(ConfigError, match="timeout"):
        HttpNotifier(timeout=0)
    with pytest.raises(ConfigError, match="jitter"):
        HttpNotifier(jitter=1.5)


def test_refused_is_an_engine_error() -> None:
    assert issubclass(WebhookRefused, EngineError)


async def test_credentials_in_the_url_are_masked_in_records() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        sender = notifier(SteppingClock.at_wall_time(), client=client)
        await sender.notify(notification("http://user:hunter2@127.0.0.1:8080/hook"))
    [attempt] = sender.attempts
    assert attempt.outcome == "delivered"
    assert "hunter2" not in attempt.url
    assert attempt.url == "http://***@127.0.0.1:8080/hook"


async def test_payload_that_is_not_json_fails_without_raising() -> None:
    sender = notifier(SteppingClock.at_wall_time(), retry_schedule=(0, 5))
    bad = Notification(
        event_id="evt_1",
        execution_id="exec_1",
        status="completed",
        payload={"duration": float("nan")},
        webhook=Webhook(url="http://127.0.0.1:9/hook"),
    )
    await sender.notify(bad)
    [attempt] = sender.attempts
    assert attempt.outcome == "failed"
    assert "cannot deliver" in (attempt.error or "")


async def test_concurrent_deliveries_keep_their_own_results() -> None:
    seen: dict[str, int] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        event = request.headers["webhook-id"]
        seen[event] = seen.get(event, 0) + 1
        if event == "evt_gone":
            return httpx.Response(410)
        return httpx.Response(500 if seen[event] == 1 else 200)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        sender = notifier(SteppingClock.at_wall_time(), client=client, retry_schedule=(0, 5))
        async with anyio.create_task_group() as tg:
            for event in ("evt_ok", "evt_gone"):
                tg.start_soon(sender.notify, notification("http://127.0.0.1:9/h", event_id=event))
    assert sender.results["evt_ok"].delivered
    assert sender.results["evt_ok"].attempts == 2
    assert not sender.results["evt_gone"].delivered
    assert sender.results["evt_gone"].attempts == 1


# --- the durable delivery log: record(), and deliveries continued after a restart ---------------


def replying(*statuses: int) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering with ``statuses`` in turn (the last repeats), and what it got."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(statuses[min(len(sent), len(statuses)) - 1])

    return httpx.MockTransport(handler), sent


def test_delivery_attempt_is_the_engine_model() -> None:
    assert DeliveryAttempt is models.DeliveryAttempt


async def test_record_is_awaited_for_every_attempt() -> None:
    transport, sent = replying(500, 503, 200)
    recorded: list[DeliveryAttempt] = []
    observed: list[DeliveryAttempt] = []

    async def record(attempt: DeliveryAttempt) -> None:
        await anyio.lowlevel.checkpoint()
        assert attempt == sender.attempts[-1]  # on_attempt and the list come first
        recorded.append(attempt)

    async with httpx.AsyncClient(transport=transport) as client:
        clock = SteppingClock.at_wall_time()
        schedule = (0, 5, 60)
        sender = notifier(clock, client=client, retry_schedule=schedule, on_attempt=observed.append)
        await sender.notify(notification("http://127.0.0.1:9/hook"), record)

    assert recorded == sender.attempts == observed
    assert [(a.attempt, a.outcome) for a in recorded] == [
        (1, "retry"),
        (2, "retry"),
        (3, "delivered"),
    ]
    assert len(sent) == 3


async def test_a_continued_delivery_numbers_on_and_follows_the_rest_of_the_schedule() -> None:
    clock = SteppingClock.at_wall_time()
    transport, sent = replying(500, 500, 200)
    recorded: list[DeliveryAttempt] = []

    async def record(attempt: DeliveryAttempt) -> None:
        recorded.append(attempt)

    async with httpx.AsyncClient(transport=transport) as client:
        start = clock.now()
        sender = notifier(clock, client=client, retry_schedule=(0, 5, 60, 600, 900))
        await sender.notify(notification("http://127.0.0.1:9/hook", attempts_made=1), record)

    # attempt 2 goes at once; attempt 3 waits schedule[2], attempt 4 schedule[3]
    assert [a.attempt for a in recorded] == [2, 3, 4]
    assert [a.outcome for a in recorded] == ["retry", "retry", "delivered"]
    assert clock.deadlines == [start + 60, start + 660]
    assert [a.retry_at for a in recorded] == [start + 60, start + 660, None]
    assert {r.headers["webhook-id"] for r in sent} == {"evt_1"}
    result = sender.results["evt_1"]
    assert (result.delivered, result.attempts) == (True, 4)


async def test_the_last_attempt_of_the_schedule_is_final() -> None:
    transport, sent = replying(500)
    async with httpx.AsyncClient(transport=transport) as client:
        sender = notifier(SteppingClock.at_wall_time(), client=client, retry_schedule=(0, 5, 60))
        await sender.notify(notification("http://127.0.0.1:9/hook", attempts_made=2))

    [attempt] = sender.attempts
    assert (attempt.attempt, attempt.outcome, attempt.retry_at) == (3, "failed", None)
    assert len(sent) == 1


@pytest.mark.parametrize(("status", "outcome"), [(500, "failed"), (204, "delivered")])
async def test_a_used_up_schedule_still_gets_one_last_attempt(status: int, outcome: str) -> None:
    clock = SteppingClock.at_wall_time()
    transport, sent = replying(status)
    recorded: list[DeliveryAttempt] = []

    async def record(attempt: DeliveryAttempt) -> None:
        recorded.append(attempt)

    async with httpx.AsyncClient(transport=transport) as client:
        sender = notifier(clock, client=client, retry_schedule=(0, 1, 2))
        await sender.notify(notification("http://127.0.0.1:9/hook", attempts_made=7), record)

    [attempt] = recorded
    assert (attempt.attempt, attempt.outcome, attempt.retry_at) == (8, outcome, None)
    assert len(sent) == 1
    assert clock.deadlines == []
    assert sender.results["evt_1"].attempts == 8


async def test_a_refused_destination_is_recorded_too() -> None:
    recorded: list[DeliveryAttempt] = []

    async def record(attempt: DeliveryAttempt) -> None:
        recorded.append(attempt)

    sender = notifier(SteppingClock.at_wall_time(), allowed_networks=(), retry_schedule=(0, 5))
    await sender.notify(notification("http://127.0.0.1:9/hook", attempts_made=3), record)

    [attempt] = recorded
    assert (attempt.attempt, attempt.outcome) == (4, "failed")
    assert "loopback" in (attempt.error or "")


@pytest.mark.parametrize(
    "failure",
    [LeaseLost(["exec_1"]), RuntimeError("disk on fire")],
    ids=["lease lost", "a bug"],
)
async def test_record_raising_stops_the_delivery(
    failure: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    clock = SteppingClock.at_wall_time()
    transport, sent = replying(500)
    calls: list[int] = []

    async def record(attempt: DeliveryAttempt) -> None:
        calls.append(attempt.attempt)
        if attempt.attempt == 2:
            raise failure

    async with httpx.AsyncClient(transport=transport) as client:
        start = clock.now()
        sender = notifier(clock, client=client, retry_schedule=(0, 5, 60, 600))
        with caplog.at_level(logging.WARNING, logger="adapters.http.notifier"):
            await sender.notify(notification("http://127.0.0.1:9/hook"), record)  # no raise

    assert calls == [1, 2]
    assert len(sent) == 2
    assert [a.attempt for a in sender.attempts] == [1, 2]  # the attempt made is still listed
    assert clock.deadlines == [start + 5]  # no wait for a third attempt
    assert not sender.results["evt_1"].delivered
    [stopped] = [r for r in caplog.records if "delivery stopped" in r.getMessage()]
    assert str(failure) in stopped.getMessage()
    assert bool(stopped.exc_info) == isinstance(failure, RuntimeError)  # a bug: traceback


async def test_record_raising_after_the_last_attempt_returns_quietly() -> None:
    transport, sent = replying(200)

    async def record(attempt: DeliveryAttempt) -> None:
        raise LeaseLost(["exec_1"])

    async with httpx.AsyncClient(transport=transport) as client:
        sender = notifier(SteppingClock.at_wall_time(), client=client)
        await sender.notify(notification("http://127.0.0.1:9/hook"), record)

    assert len(sent) == 1
    assert sender.results["evt_1"].delivered

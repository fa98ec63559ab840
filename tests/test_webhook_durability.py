"""A webhook event survives the death of the engine process between completion and delivery."""

from __future__ import annotations

import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from standardwebhooks.webhooks import Webhook as StandardWebhook

from adapters.http import HttpNotifier
from adapters.memory import FakeVideoProvider
from adapters.sqlite import SqliteStorage
from engine import Engine, ManualClock, compose, generate_video, verify_webhook

CHILD = Path(__file__).with_name("engine_child.py")
SECRET = "whsec_c2VjcmV0LWZvci10ZXN0cy1vZi10aGlydHktdHdvLWI="


class Receiver:
    """An HTTP receiver on loopback that checks both signatures of each delivery."""

    def __init__(self, port: int) -> None:
        self.received: list[tuple[dict[str, Any], dict[str, str]]] = []
        self.arrived = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = dict(self.headers.items())
                payload = verify_webhook(
                    body, {"X-Webhook-Signature": headers["X-Webhook-Signature"]}, SECRET
                )
                StandardWebhook(SECRET).verify(body, headers)
                outer.received.append((payload, headers))
                self.send_response(200)
                self.end_headers()
                outer.arrived.set()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.anyio
async def test_event_of_a_killed_process_is_delivered_by_the_next_engine(tmp_path: Path) -> None:
    db, log = tmp_path / "hooks.db", tmp_path / "calls.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    command = [sys.executable, str(CHILD), "--db", str(db), "--log", str(log), "--webhook", url]
    child = await anyio.open_process(command)
    lines: list[str] = []
    try:
        assert child.stdout is not None
        with anyio.fail_after(60):
            buffer = b""
            async for chunk in child.stdout:
                buffer += chunk
                if b"ENDED" in buffer:
                    break
        lines = buffer.decode().split()
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
        await child.aclose()
    execution_id = lines[lines.index("ACK") + 1]
    # The child tried once while the receiver was down, then died before its retry.
    receiver = Receiver(port)
    try:
        notifier = HttpNotifier(allowed_networks=("127.0.0.0/8",))
        async with Engine.sqlite(str(db), provider=FakeVideoProvider(), notifier=notifier):
            with anyio.fail_after(30):
                await anyio.to_thread.run_sync(receiver.arrived.wait, 25)
            # Leaving the engine waits for the delivery in flight to be written.
    finally:
        receiver.close()
    async with SqliteStorage(db) as store:
        log_entries = await store.deliveries(execution_id)
        counts = await store.outbox_counts()
    [(payload, headers)] = receiver.received
    assert payload["executionId"] == execution_id
    assert payload["status"] == "completed"
    # Any attempt the child made before it died failed (receiver down); numbering continued.
    assert [entry.outcome for entry in log_entries][-1] == "delivered"
    assert all(entry.outcome == "retry" for entry in log_entries[:-1])
    assert [entry.attempt for entry in log_entries] == list(range(1, len(log_entries) + 1))
    assert {entry.event_id for entry in log_entries} == {headers["webhook-id"]}
    assert counts == {"delivered": 1}


def closed_port_notifier(clock: ManualClock, attempted: anyio.Event) -> HttpNotifier:
    """A notifier to loopback whose second attempt is due an hour after the first, on ``clock``
    (a ManualClock nobody advances: the retry never comes by itself)."""
    return HttpNotifier(
        allowed_networks=("127.0.0.0/8",),
        retry_schedule=(0, 3600),
        clock=clock,
        on_attempt=lambda attempt: attempted.set(),
        timeout=5,
    )


@pytest.mark.anyio
async def test_leaving_a_durable_engine_leaves_a_webhook_in_backoff_to_the_outbox(
    tmp_path: Path,
) -> None:
    db = tmp_path / "hooks.db"
    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    attempted = anyio.Event()
    notifier = closed_port_notifier(ManualClock(), attempted)
    # A grace of an hour: leaving would hang if it waited for the retry (fail_after stops it).
    with anyio.fail_after(30):
        async with Engine.sqlite(
            str(db),
            provider=FakeVideoProvider(),
            notifier=notifier,
            shutdown_grace=3600,
            lease=3600,
        ) as engine:
            execution = await compose(generate_video(prompt="x")).execute(
                engine, webhook_url=url, webhook_secret=SECRET
            )
            await execution.wait(timeout=10)
            await attempted.wait()
    assert [(a.attempt, a.outcome) for a in notifier.attempts] == [(1, "retry")]
    async with SqliteStorage(db) as store:
        assert await store.outbox_counts() == {"pending": 1}
        assert [(d.attempt, d.outcome) for d in await store.deliveries(execution.id)] == [
            (1, "retry")
        ]
    # The next engine on the file sends it, numbering on.
    receiver = Receiver(int(url.split(":")[2].split("/")[0]))
    try:
        again = HttpNotifier(allowed_networks=("127.0.0.0/8",))
        async with Engine.sqlite(str(db), provider=FakeVideoProvider(), notifier=again):
            # At once: the first engine gave up its hold on the execution when it stopped.
            assert await anyio.to_thread.run_sync(receiver.arrived.wait, 25)
    finally:
        receiver.close()
    async with SqliteStorage(db) as store:
        assert await store.outbox_counts() == {"delivered": 1}
        assert [(d.attempt, d.outcome) for d in await store.deliveries(execution.id)] == [
            (1, "retry"),
            (2, "delivered"),
        ]


@pytest.mark.anyio
async def test_leaving_an_in_memory_engine_waits_for_a_retry_up_to_shutdown_grace() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    attempted = anyio.Event()
    clock = ManualClock()
    notifier = closed_port_notifier(clock, attempted)
    with anyio.fail_after(30):
        async with Engine.in_memory(
            provider=FakeVideoProvider(), notifier=notifier, shutdown_grace=0.2
        ) as engine:
            execution = await compose(generate_video(prompt="x")).execute(
                engine, webhook_url=url, webhook_secret=SECRET
            )
            await execution.wait(timeout=10)
            await attempted.wait()
            metrics = await engine.metrics()
            assert metrics.deliveries == {"pending": 1}
    # Nothing would send it after the process: leaving waited the grace, then gave up on it.
    assert [(a.attempt, a.outcome) for a in notifier.attempts] == [(1, "retry")]

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
from engine import Engine, verify_webhook

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

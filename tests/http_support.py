"""Real HTTP servers for tests: :func:`serving` runs any ASGI app under uvicorn on 127.0.0.1 (a
free port) inside the test's own task group; :func:`live_api` serves ``contrib.asgi`` over an
engine that way, :func:`webhook_receiver` a webhook receiver (the queue API a hosted model offers
is in ``queue_api.py``)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from attrs import define, field

from adapters.http import HttpNotifier
from adapters.memory import FakeVideoProvider, RecordingNotifier
from contrib.asgi import App, create_app
from contrib.serve import RunningServer, serve_app
from contrib.types import ASGIApp, Receive, Scope, Send
from engine import Engine

#: Where loopback receivers listen: what an engine's notifier must allow to reach them.
LOOPBACK = ("127.0.0.0/8",)
KEYS: Mapping[str, str] = {"key-alpha": "alpha", "key-beta": "beta"}
ALPHA = {"Authorization": "Bearer key-alpha"}
BETA = {"Authorization": "Bearer key-beta"}
#: A key that reads the fleet-wide ``/metrics`` (``live_api(operator_keys=OPERATOR_KEYS)``).
OPERATOR_KEYS = ("key-operator",)
OPERATOR = {"Authorization": "Bearer key-operator"}


class CountingApp:
    """Counts requests by path in front of the app (how a test sees whether a client polled)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.paths: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.paths[f"{scope['method']} {scope['path']}"] += 1
        await self.app(scope, receive, send)

    def count(self, suffix: str) -> int:
        return sum(n for path, n in self.paths.items() if path.endswith(suffix))


@define
class Live:
    url: str
    engine: Engine
    app: App
    counting: CountingApp
    provider: FakeVideoProvider
    #: Records the engine's notifications, unless ``http_notifier`` was given (then it stays
    #: empty: the engine delivers through that one).
    notifier: RecordingNotifier
    server: RunningServer
    http_notifier: HttpNotifier | None = None


@asynccontextmanager
async def serving(app: ASGIApp, *, grace: int = 1) -> AsyncIterator[RunningServer]:
    """``app`` served by uvicorn on 127.0.0.1 (a free port) in a task group of the caller's
    task, until the block ends (then shut down within ``grace`` seconds)."""
    async with anyio.create_task_group() as task_group:
        server: RunningServer = await task_group.start(
            partial(serve_app, app, host="127.0.0.1", port=0, timeout_graceful_shutdown=grace)
        )
        try:
            yield server
        finally:
            server.stop()


def loopback_notifier(retry_schedule: Sequence[float] = (0, 0, 0)) -> HttpNotifier:
    """An HTTP notifier that may reach receivers on 127.0.0.0/8, retrying at once."""
    return HttpNotifier(allowed_networks=LOOPBACK, retry_schedule=tuple(retry_schedule), timeout=5)


@asynccontextmanager
async def live_api(
    db: Path | None,
    *,
    engine: Engine | None = None,
    provider: FakeVideoProvider | None = None,
    api_keys: Mapping[str, str] = KEYS,
    http_notifier: HttpNotifier | None = None,
    **app_options: Any,
) -> AsyncIterator[Live]:
    """An engine (SQLite at ``db``, or in memory) and the app over it, served by uvicorn.

    The engine notifies a :class:`RecordingNotifier` (``live.notifier``), or delivers webhooks
    over HTTP with ``http_notifier`` (see :func:`loopback_notifier`).
    """
    provider = provider or FakeVideoProvider()
    notifier = RecordingNotifier()
    used = notifier if http_notifier is None else http_notifier
    if engine is None:
        if db is None:
            engine = Engine.in_memory(provider=provider, notifier=used)
        else:
            engine = Engine.sqlite(str(db), provider=provider, notifier=used)
    app_options.setdefault("operator_keys", OPERATOR_KEYS)
    async with engine:
        app = create_app(engine, api_keys=api_keys, **app_options)
        counting = CountingApp(app)
        async with serving(counting, grace=5) as server:
            yield Live(server.url, engine, app, counting, provider, notifier, server, http_notifier)


@define
class Received:
    """One request a :class:`Receiver` got: headers (lower-case names), body, arrival time."""

    headers: dict[str, str]
    body: bytes
    at: float
    status: int

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


@define
class Receiver:
    """A webhook receiver: answers each POST with the next of ``statuses`` (the last one over and
    over once they run out) and records it. ``url`` is set once it listens."""

    statuses: Sequence[int] = (200,)
    url: str = ""
    received: list[Received] = field(factory=list)
    _arrived: anyio.Event = field(factory=anyio.Event)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        index = min(len(self.received), len(self.statuses) - 1)
        status = self.statuses[index]
        headers = {
            name.decode("latin-1").lower(): v.decode("latin-1") for name, v in scope["headers"]
        }
        self.received.append(Received(headers, body, time.time(), status))
        self._arrived.set()
        self._arrived = anyio.Event()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def wait_for(self, count: int) -> list[Received]:
        """Wait (10 s at most) until ``count`` requests have arrived; return them all."""
        with anyio.fail_after(10):
            while len(self.received) < count:
                await self._arrived.wait()
        return list(self.received)


@asynccontextmanager
async def webhook_receiver(statuses: Sequence[int] = (200,)) -> AsyncIterator[Receiver]:
    """A :class:`Receiver` served by uvicorn on 127.0.0.1 (a free port), path ``/hook``."""
    receiver = Receiver(statuses)
    async with serving(receiver) as server:
        receiver.url = server.url + "/hook"
        yield receiver

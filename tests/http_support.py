"""A real HTTP server for tests: uvicorn on 127.0.0.1 (a free port) serving ``contrib.asgi`` over
an engine, inside the test's own task group."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from attrs import define

from adapters.memory import FakeVideoProvider, RecordingNotifier
from contrib.asgi import App, create_app
from contrib.serve import RunningServer, serve_app
from contrib.types import Receive, Scope, Send
from engine import Engine

KEYS: Mapping[str, str] = {"key-alpha": "alpha", "key-beta": "beta"}
ALPHA = {"Authorization": "Bearer key-alpha"}
BETA = {"Authorization": "Bearer key-beta"}


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
    notifier: RecordingNotifier
    server: RunningServer


@asynccontextmanager
async def live_api(
    db: Path | None,
    *,
    engine: Engine | None = None,
    provider: FakeVideoProvider | None = None,
    api_keys: Mapping[str, str] = KEYS,
    **app_options: Any,
) -> AsyncIterator[Live]:
    """An engine (SQLite at ``db``, or in memory) and the app over it, served by uvicorn."""
    provider = provider or FakeVideoProvider()
    notifier = RecordingNotifier()
    if engine is None:
        if db is None:
            engine = Engine.in_memory(provider=provider, notifier=notifier)
        else:
            engine = Engine.sqlite(str(db), provider=provider, notifier=notifier)
    async with engine:
        app = create_app(engine, api_keys=api_keys, **app_options)
        counting = CountingApp(app)
        async with anyio.create_task_group() as task_group:
            server: RunningServer = await task_group.start(
                partial(serve_app, counting, host="127.0.0.1", port=0, timeout_graceful_shutdown=5)
            )
            try:
                yield Live(server.url, engine, app, counting, provider, notifier, server)
            finally:
                server.stop()

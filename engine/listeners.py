"""Listeners: who hears of one execution's progress and ending, in this process.

:class:`PipelineExecution` handles and ``Engine.watch`` streams subscribe here; the engine tells
the registry after each write. User callbacks (plain or async) run through :func:`call_soon`,
which logs their exceptions and never lets one reach the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import anyio.abc
from anyio.streams.memory import MemoryObjectSendStream

from engine.models import Ended, Progress

log = logging.getLogger("engine")


class Listener(Protocol):
    """Receives one execution's events, in order, after they are written."""

    def progress(self, progress: Progress) -> None: ...

    def ended(self, ended: Ended) -> None: ...


class Listeners:
    """The listeners of each execution this engine may report on."""

    def __init__(self) -> None:
        self._by_execution: dict[str, list[Listener]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_execution)

    def has(self, execution_id: str) -> bool:
        return execution_id in self._by_execution

    def watched(self) -> list[str]:
        """The executions someone listens to."""
        return list(self._by_execution)

    def add(self, execution_id: str, listener: Listener) -> None:
        self._by_execution.setdefault(execution_id, []).append(listener)

    def remove(self, execution_id: str, listener: Listener) -> None:
        listeners = self._by_execution.get(execution_id)
        if listeners and listener in listeners:
            listeners.remove(listener)
            if not listeners:
                del self._by_execution[execution_id]

    def progressed(
        self, execution_ids: Iterable[str], progress_of: Callable[[str], Progress | None]
    ) -> None:
        """Tell the listeners of each execution (once each) its progress now."""
        by_execution = self._by_execution
        for execution_id in dict.fromkeys(execution_ids):
            targets = by_execution.get(execution_id)
            if not targets:
                continue
            progress = progress_of(execution_id)
            if progress is not None:
                for listener in list(targets):
                    listener.progress(progress)

    def ended(self, ended: Ended) -> None:
        """Tell the execution's listeners its final progress and its ending, then forget them."""
        for listener in self._by_execution.pop(ended.execution_id, []):
            listener.progress(ended.progress)
            listener.ended(ended)


class StreamListener:
    """Feeds a memory stream: each progress, then ``None`` at the end (``Engine.watch``)."""

    def __init__(self, send: MemoryObjectSendStream[Progress | None]) -> None:
        self._send = send

    def progress(self, progress: Progress) -> None:
        self._send.send_nowait(progress)

    def ended(self, ended: Ended) -> None:
        self._send.send_nowait(None)


def call_soon(
    task_group: anyio.abc.TaskGroup, callback: Callable[[Any], Any], argument: Any
) -> None:
    """Run a user's callback (plain or async) in ``task_group``; log, never raise, its errors."""
    try:
        outcome = callback(argument)
    except Exception:
        log.exception("callback %r raised", callback)
        return
    if isinstance(outcome, Awaitable):
        task_group.start_soon(_await_logged, outcome, callback)


async def _await_logged(awaitable: Awaitable[Any], callback: object) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("callback %r raised", callback)

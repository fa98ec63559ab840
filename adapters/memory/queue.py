"""In-memory job queue: a deque that wakes waiting workers."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import anyio
from attrs import define, field

from engine.models import JobRef


@define
class MemoryQueue:
    """First in, first out. ``pop`` waits without polling."""

    _items: deque[JobRef] = field(factory=deque, init=False)
    _waiters: deque[anyio.Event] = field(factory=deque, init=False)

    async def push(self, refs: Sequence[JobRef]) -> None:
        self._items.extend(refs)
        for _ in range(min(len(refs), len(self._waiters))):
            self._waiters.popleft().set()

    async def pop(self) -> JobRef:
        while not self._items:
            event = anyio.Event()
            self._waiters.append(event)
            try:
                await event.wait()
            except BaseException:
                if event in self._waiters:
                    self._waiters.remove(event)
                elif self._items and self._waiters:
                    self._waiters.popleft().set()
                raise
        return self._items.popleft()

    def depth(self) -> int:
        return len(self._items)

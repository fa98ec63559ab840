"""Clocks. The engine reads time and sleeps only through one, so tests can drive time by hand."""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Protocol

import anyio
from attrs import define, field


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once ``now() >= deadline``."""
        ...


class SystemClock:
    """Wall-clock time; sleeps with ``anyio.sleep``."""

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.time()
        if delay > 0:
            await anyio.sleep(delay)


@define
class ManualClock:
    """A clock that moves only when told to: ``advance(seconds)`` wakes every sleeper now due."""

    _now: float = 1_700_000_000.0
    _sleepers: list[tuple[float, int, anyio.Event]] = field(factory=list, init=False)
    _seq: itertools.count[int] = field(factory=itertools.count, init=False)

    def now(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        heapq.heappush(self._sleepers, (deadline, next(self._seq), event))
        await event.wait()

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            heapq.heappop(self._sleepers)[2].set()

    def next_deadline(self) -> float | None:
        """The earliest time anyone is sleeping until, or ``None``."""
        live = [entry for entry in self._sleepers if not entry[2].is_set()]
        return min(live)[0] if live else None

"""A clock for tests of code that waits: it jumps to each deadline instead of sleeping.

:class:`engine.ManualClock` moves only when told to; :class:`SteppingClock` wraps one and moves
it itself to every deadline it is asked to sleep until (up to ``horizon`` seconds away), so a
test of polls, backoffs and retry schedules never sleeps, and can read back every wait.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

from engine import ManualClock


class SteppingClock:
    """A :class:`ManualClock` that advances itself to every deadline slept until.

    - ``horizon``: only deadlines at most this many seconds away are jumped to (polls and
      backoffs); a longer wait (an overall timeout, say) waits for ``manual.advance``.
    - ``waits`` records each jump's length, ``deadlines`` each deadline jumped to.
    - ``on_sleep`` (if set) runs before each jump, so a test can change the world between
      attempts.
    """

    def __init__(
        self,
        now: float | None = None,
        *,
        horizon: float = math.inf,
        on_sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.manual = ManualClock() if now is None else ManualClock(now=now)
        self.horizon = horizon
        self.on_sleep = on_sleep
        self.waits: list[float] = []
        self.deadlines: list[float] = []

    @classmethod
    def at_wall_time(cls, *, horizon: float = math.inf) -> SteppingClock:
        """One starting at the current wall-clock second, for code checked against real time
        (the stock Standard Webhooks verifier, say)."""
        return cls(float(int(time.time())), horizon=horizon)

    def now(self) -> float:
        return self.manual.now()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - self.manual.now()
        if 0 < delay <= self.horizon:
            self.waits.append(delay)
            self.deadlines.append(deadline)
            if self.on_sleep is not None:
                await self.on_sleep(deadline)
            self.manual.advance(deadline - self.manual.now())
        await self.manual.sleep_until(deadline)

"""When to try a failed job again."""

from __future__ import annotations

import random

from attrs import frozen

from engine.errors import ConfigError


@frozen
class RetryPolicy:
    """Exponential backoff with jitter and a cap, in seconds on the engine's clock.

    Attempt ``n`` (1-based) that fails is followed, if ``n < max_attempts``, by attempt ``n + 1``
    after ``min(max_delay, initial_delay * multiplier ** (n - 1))`` seconds; with ``jitter`` the
    delay is drawn uniformly from the upper half of that, so retries of many jobs spread out.
    """

    max_attempts: int = 3
    initial_delay: float = 1.0
    max_delay: float = 60.0
    multiplier: float = 2.0
    jitter: bool = True

    def __attrs_post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ConfigError("RetryPolicy.max_attempts must be an integer")
        if self.max_attempts < 1:
            raise ConfigError("RetryPolicy.max_attempts must be at least 1")
        if not self.initial_delay >= 0:
            raise ConfigError("RetryPolicy.initial_delay must be >= 0")
        if not self.max_delay >= self.initial_delay:
            raise ConfigError("RetryPolicy.max_delay must be >= initial_delay")
        if not self.multiplier >= 1:
            raise ConfigError("RetryPolicy.multiplier must be >= 1")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` before the next one."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        if not self.jitter:
            return base
        return (rng or random).uniform(base / 2, base)

    def should_retry(self, attempt: int) -> bool:
        return attempt < self.max_attempts

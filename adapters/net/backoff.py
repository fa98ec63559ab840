"""Backoff between tries of a network call: exponential growth to a cap, and jitter.

The callers differ by contract in how they combine these: the webhook notifier waits a fixed,
jittered schedule (CONTRACT.md section 6) and lets ``Retry-After`` only lengthen a wait; the queue
provider and the remote client back off exponentially without jitter (their tests read the exact
waits) and let ``Retry-After`` replace the backoff. What they share is here.
"""

from __future__ import annotations

import random

__all__ = ["exponential", "jittered"]


def exponential(retry: int, *, base: float, cap: float, factor: float = 2.0) -> float:
    """``min(cap, base * factor ** retry)``: the wait before retry number ``retry`` (0 first).

    Never overflows: a ``retry`` so large the power leaves float's range gives ``cap``.
    """
    if retry < 0:
        raise ValueError(f"retry counts from 0, not {retry!r}")
    if not (base >= 0 and cap >= 0 and factor >= 1):
        raise ValueError(
            f"need base >= 0, cap >= 0 and factor >= 1, not {base!r}, {cap!r}, {factor!r}"
        )
    if base == 0:
        return 0.0
    try:
        return min(cap, base * factor**retry)
    except OverflowError:
        return cap


def jittered(delay: float, fraction: float, rng: random.Random) -> float:
    """``delay`` moved by up to ``±fraction`` of itself, uniformly; 0 (or no jitter) stays put."""
    if not 0 <= fraction < 1:
        raise ValueError(f"jitter must be a fraction in [0, 1), not {fraction!r}")
    if delay <= 0 or fraction == 0:
        return delay
    return delay * (1 + rng.uniform(-fraction, fraction))

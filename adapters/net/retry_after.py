"""Read a ``Retry-After`` header (RFC 9110, section 10.2.3) as seconds to wait.

The header is either ``delay-seconds`` (one or more ASCII digits: ``120``) or an ``HTTP-date``
(``Sun, 06 Nov 1994 08:49:37 GMT``, and the obsolete RFC 850 and asctime forms recipients must
also read; an HTTP-date is always UTC, so a date without a zone is read as UTC). A date in the
past means "now" (0 seconds). Anything else (a sign, a fraction, ``inf``, words, an impossible
date) is not a ``Retry-After`` and gives ``None``: the caller falls back to its own backoff.
"""

from __future__ import annotations

import email.utils
import math
from datetime import UTC

__all__ = ["parse_retry_after"]


def parse_retry_after(value: str | None, *, now: float, cap: float) -> float | None:
    """Seconds to wait per ``Retry-After`` ``value``, at most ``cap``; ``None`` if there is no
    usable value.

    ``now`` is the current time in seconds since the Unix epoch (a date is relative to it; pass
    the caller's clock so tests can drive it). ``cap`` bounds what one answer can ask for, so a
    huge value cannot park the caller; it may be ``math.inf``.
    """
    if not cap >= 0:
        raise ValueError(f"cap must be >= 0 seconds, not {cap!r}")
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        seconds: float | None = float(value)  # digits beyond float's range read as inf, capped
    else:
        seconds = _date_seconds(value, now)
    return None if seconds is None else min(max(seconds, 0.0), cap)


def _date_seconds(value: str, now: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # asctime, or a "-0000" zone: an HTTP-date is UTC
        when = when.replace(tzinfo=UTC)
    seconds = when.timestamp() - now
    return seconds if math.isfinite(seconds) else None

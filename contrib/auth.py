"""API keys and the per-key rate limit.

Keys are held only as SHA-256 digests: a presented key is hashed, the digest looked up, and the
stored digest compared with :func:`hmac.compare_digest`. A key maps to its tenant; the tenant is
what the engine scopes executions (and idempotency keys) by.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable, Mapping

from engine.errors import ConfigError

#: What a key may look like: visible ASCII, as a header can carry it.
_KEY = re.compile(r"[!-~]{1,512}")
_BEARER = b"bearer"


class KeyRing:
    """The API keys an app accepts, each naming its tenant, kept only as SHA-256 digests."""

    def __init__(self, api_keys: Mapping[str, str]) -> None:
        tenants: dict[bytes, tuple[bytes, str]] = {}
        for key, tenant in api_keys.items():
            if not isinstance(key, str) or not _KEY.fullmatch(key):
                raise ConfigError("an API key must be 1 to 512 visible ASCII characters")
            if not isinstance(tenant, str) or not tenant:
                raise ConfigError("an API key's tenant must be a non-empty string")
            digest = hashlib.sha256(key.encode()).digest()
            tenants[digest] = (digest, tenant)
        self._tenants = tenants

    def __len__(self) -> int:
        return len(self._tenants)

    def identify(self, authorization: bytes | None) -> tuple[bytes, str] | None:
        """``(key digest, tenant)`` for an ``Authorization: Bearer <key>`` header, or ``None``."""
        if authorization is None:
            return None
        scheme, _, token = authorization.strip().partition(b" ")
        token = token.strip()
        if scheme.lower() != _BEARER or not token:
            return None
        digest = hashlib.sha256(token).digest()
        found = self._tenants.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            return None
        return found


class RateLimiter:
    """A token bucket per key: ``requests`` may be spent at once, refilled over ``per_seconds``.

    ``(100, 2.0)`` allows a burst of 100 and 50 requests a second after it.
    """

    def __init__(
        self,
        requests: float,
        per_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (math.isfinite(requests) and requests >= 1):
            raise ConfigError("rate_limit requests must be at least 1")
        if not (math.isfinite(per_seconds) and per_seconds > 0):
            raise ConfigError("rate_limit per_seconds must be positive")
        self.capacity = float(requests)
        self.rate = requests / per_seconds
        self._clock = clock
        self._buckets: dict[bytes, tuple[float, float]] = {}

    def acquire(self, key: bytes) -> float:
        """Take one token for ``key``: 0.0 if allowed, else seconds until one is available."""
        now = self._clock()
        tokens, then = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


def parse_keys(text: str, *, separator: str = ",") -> dict[str, str]:
    """``"key1=tenant1,key2=tenant2"`` (or one pair a line with ``separator="\\n"``) -> a dict.

    A key may itself hold ``=`` (the last one separates the tenant). Blank entries and lines
    starting with ``#`` are skipped.
    """
    keys: dict[str, str] = {}
    for number, raw in enumerate(text.split(separator), 1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        key, sep, tenant = entry.rpartition("=")
        if not sep or not key.strip() or not tenant.strip():
            raise ConfigError(f"API key entry {number} is not 'key=tenant'")
        keys[key.strip()] = tenant.strip()
    return keys


__all__ = ["KeyRing", "RateLimiter", "parse_keys"]

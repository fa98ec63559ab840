"""API keys, the per-key rate limit, and the limit on failed attempts per client address.

Keys are held only as SHA-256 digests: a presented key is hashed, the digest looked up, and the
stored digest compared with :func:`hmac.compare_digest`. A key maps to its tenant; the tenant is
what the engine scopes executions (and idempotency keys) by.

Why the lookup leaks nothing about a key: the time of :meth:`KeyRing.identify` depends on the
presented key only through its length (hashing; the length is the client's own, not a secret)
and through its SHA-256 digest (the dict lookup hashes and compares digests, and ``bytes``
hashing is keyed per process). Timing could at best tell an attacker something about the digest
of a guess relative to stored digests, and knowing bits of a stored digest does not help find a
key that hashes to it (SHA-256 is preimage resistant). The final :func:`hmac.compare_digest`
keeps the one byte comparison that could be reached constant-time too. So an unknown key costs
the same whatever it is, and a wrong key is no closer to a right one for being "near" it.

Failed attempts (:class:`FailureLimiter`): every request answered 401 spends a token of its
client address's bucket (IPv6 addresses count per /64), and of one global bucket. An address
whose bucket is empty gets 429 with ``Retry-After`` for *every* request that needs a key, until
a token is back, even when it presents a valid key: checking the key first would tell an
attacker that guessed right, so the budget would bound nothing. Other addresses are unaffected.
When the global bucket is empty (a flood from many addresses), addresses with a recent failure
are refused the same way, while addresses with none keep working: a valid tenant is never slowed
by somebody else's flood, only by failures from its own address (a tenant behind the same NAT as
an attacker shares its fate: give such tenants their own egress address). The tables are bounded
(:data:`MAX_TRACKED_ADDRESSES`): an address is forgotten once recovered, or when it failed
longest ago of all and the table is full.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
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


#: Addresses a :class:`FailureLimiter` remembers at most.
MAX_TRACKED_ADDRESSES = 65_536


def address_key(host: str | None) -> str:
    """What failures are counted by: the IPv4 address, the /64 of an IPv6 address (one host
    usually holds a whole /64), or the text as it is when it is not an address (a Unix socket)."""
    if not host:
        return ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class FailureLimiter:
    """Failed-authentication budgets: ``failures`` per ``per_seconds`` for each client address
    (a bucket refilled continuously), and ``ceiling`` per ``ceiling_seconds`` over all of them.

    Call :meth:`refused` before looking at a request's key (seconds to wait, or 0.0), and
    :meth:`failed` after a request was answered 401. See the module docstring for the design.
    """

    def __init__(
        self,
        failures: float,
        per_seconds: float,
        *,
        ceiling: tuple[float, float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = MAX_TRACKED_ADDRESSES,
    ) -> None:
        _check_budget("auth_failures", failures, per_seconds)
        if ceiling is not None:
            _check_budget("auth_failure_ceiling", *ceiling)
        if max_addresses < 1:
            raise ConfigError("max_addresses must be positive")
        self.capacity = float(failures)
        self.rate = failures / per_seconds
        self.ceiling = None if ceiling is None else float(ceiling[0])
        self.ceiling_rate = 0.0 if ceiling is None else ceiling[0] / ceiling[1]
        self._clock = clock
        self._max = max_addresses
        # address -> (tokens, at); dict order is the order of the last failure (oldest first).
        self._buckets: dict[str, tuple[float, float]] = {}
        self._global = (self.ceiling or 0.0, clock())

    def _tokens(self, address: str, now: float) -> float | None:
        entry = self._buckets.get(address)
        if entry is None:
            return None
        tokens, then = entry
        return min(self.capacity, tokens + (now - then) * self.rate)

    def _global_tokens(self, now: float) -> float:
        if self.ceiling is None:
            return math.inf
        tokens, then = self._global
        return min(self.ceiling, tokens + (now - then) * self.ceiling_rate)

    def refused(self, address: str) -> float:
        """Seconds until ``address`` may try a key again; 0.0 if it may now."""
        now = self._clock()
        tokens = self._tokens(address, now)
        if tokens is None:
            return 0.0
        if tokens < 1.0:
            return (1.0 - tokens) / self.rate
        if tokens < self.capacity:
            remaining = self._global_tokens(now)
            if remaining < 1.0:
                return (1.0 - remaining) / self.ceiling_rate
        if tokens >= self.capacity:
            del self._buckets[address]  # recovered: nothing to remember
        return 0.0

    def failed(self, address: str) -> None:
        """``address`` presented no valid key: spend a token of its bucket and of the global one."""
        now = self._clock()
        tokens = self._tokens(address, now)
        tokens = self.capacity if tokens is None else tokens
        self._buckets.pop(address, None)
        self._buckets[address] = (max(0.0, tokens - 1.0), now)
        if self.ceiling is not None:
            self._global = (max(0.0, self._global_tokens(now) - 1.0), now)
        while len(self._buckets) > self._max:
            del self._buckets[next(iter(self._buckets))]  # the address that failed longest ago

    def __len__(self) -> int:
        return len(self._buckets)


def _check_budget(name: str, count: float, seconds: float) -> None:
    if not (math.isfinite(count) and count >= 1):
        raise ConfigError(f"{name}: the number of failures must be at least 1")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"{name}: the number of seconds must be positive")


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


__all__ = ["FailureLimiter", "KeyRing", "RateLimiter", "address_key", "parse_keys"]

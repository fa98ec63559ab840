"""Deliver webhooks over HTTP: signed, retried over hours, every attempt recorded.

Delivery is at least once: a receiver may see one event more than once and should drop
duplicates by ``webhook-id``, which is the same on every attempt of one event.

Each attempt is a :class:`~engine.models.DeliveryAttempt` (re-exported here). A delivery that
another engine had begun continues where it was: ``Notification.attempts_made`` attempts are
already in the log, so numbering and the back-off schedule go on from there.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import random
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import anyio
import httpx
from attrs import define, field, frozen

from adapters.net import (
    DestinationRefused,
    Network,
    check_url,
    jittered,
    parse_networks,
    parse_retry_after,
    send_checked,
)
from engine.clock import Clock, SystemClock
from engine.errors import ConfigError, EngineError
from engine.models import DeliveryAttempt, DeliveryOutcome, Notification, Webhook
from engine.ports import AttemptRecorder
from engine.webhooks import encode_payload, headers_for, secret_key

__all__ = ["DEFAULT_RETRY_SCHEDULE", "DeliveryAttempt", "DeliveryResult", "HttpNotifier"]

logger = logging.getLogger(__name__)

#: Seconds to wait before each attempt: at once, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
DEFAULT_RETRY_SCHEDULE: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)

#: A ``Retry-After`` longer than this (seconds) is capped, so one answer cannot park a delivery.
MAX_RETRY_AFTER = 86400.0


@frozen
class DeliveryResult:
    """How the delivery of one event ended. ``attempts`` is the number of its last attempt
    (counting those made before ``notify`` was called, ``Notification.attempts_made``)."""

    event_id: str
    execution_id: str
    delivered: bool
    attempts: int
    status_code: int | None = None
    error: str | None = None


@frozen
class _Reply:
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    final: bool = False


def _clock_or_system(clock: Clock | None) -> Clock:
    return SystemClock() if clock is None else clock


def _schedule(delays: Iterable[float]) -> tuple[float, ...]:
    out = tuple(float(d) for d in delays)
    if not out:
        raise ConfigError("retry_schedule needs at least one entry (the first attempt's delay)")
    if any(not d >= 0 for d in out):
        raise ConfigError("retry_schedule delays must be >= 0 seconds")
    return out


def _networks(networks: Iterable[str | Network]) -> tuple[Network, ...]:
    return parse_networks(networks)


@define(kw_only=True)
class HttpNotifier:
    """The HTTP notifier port: POSTs each ending to its execution's webhook URL.

    - ``retry_schedule``: seconds to wait before each attempt (its length is the number of
      attempts), each jittered by up to ``±jitter`` of itself; ``Retry-After`` on a 429 or 503 is
      honoured when it asks for longer. Only a 2xx counts; redirects are never followed; a 410
      stops at once. Waits go through ``clock`` so tests can drive them by hand.
    - Destinations in private, loopback, link-local and other non-public networks are refused
      (final, no connection made) unless inside ``allowed_networks``; see
      :mod:`adapters.net.ssrf`. The request goes to the address that was checked.
    - ``client``: an ``httpx.AsyncClient`` to send with (its proxies, if any, apply). Without one,
      each attempt uses a short-lived client that ignores proxy environment variables.
    - Every attempt is appended to ``attempts`` and passed to ``on_attempt``; ``results`` maps
      each event id to its :class:`DeliveryResult`. The secret is never logged or recorded.
    - ``notify(notification, record)`` also awaits ``record(attempt)`` for every attempt (the
      engine's durable delivery log). If ``record`` raises (the engine lost its lease on the
      execution, say), the delivery stops there: logged, no further attempt, nothing raised.
    - A notification with ``attempts_made`` continues a delivery: its first attempt goes at
      once and is numbered ``attempts_made + 1``; the next ones wait as the schedule says from
      that position on. If the schedule is used up already, one last attempt is made.
    """

    _client: httpx.AsyncClient | None = None
    _allowed_networks: tuple[Network, ...] = field(default=(), converter=_networks)
    _retry_schedule: tuple[float, ...] = field(default=DEFAULT_RETRY_SCHEDULE, converter=_schedule)
    _timeout: float = 15.0
    _clock: Clock = field(default=None, converter=_clock_or_system)
    _on_attempt: Callable[[DeliveryAttempt], Awaitable[None] | None] | None = None
    _jitter: float = 0.1
    attempts: list[DeliveryAttempt] = field(factory=list, init=False, repr=False)
    results: dict[str, DeliveryResult] = field(factory=dict, init=False, repr=False)
    _random: random.Random = field(factory=random.Random, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self._timeout > 0:
            raise ConfigError("timeout must be > 0 seconds")
        if not 0 <= self._jitter < 1:
            raise ConfigError("jitter must be a fraction in [0, 1)")

    async def notify(
        self, notification: Notification, record: AttemptRecorder | None = None
    ) -> None:
        """Deliver ``notification`` to its webhook; return once delivered, given up, or stopped
        by ``record`` raising."""
        webhook = notification.webhook
        if webhook is None:
            return
        result = await self._deliver(notification, webhook, record)
        self.results[notification.event_id] = result

    async def _deliver(
        self, notification: Notification, webhook: Webhook, record: AttemptRecorder | None
    ) -> DeliveryResult:
        refusal: str | None = None
        url: httpx.URL | None = None
        body = b""
        try:
            body = encode_payload(notification.payload)
            url = check_url(webhook.url)
            if webhook.secret is not None:
                secret_key(webhook.secret)
        except DestinationRefused as exc:
            refusal = str(exc)
        except (TypeError, ValueError) as exc:  # a bad whsec_ secret (never echoed); bad payload
            refusal = f"cannot deliver: {exc}"
        shown_url = _without_credentials(webhook.url)

        schedule = self._retry_schedule
        number = max(notification.attempts_made, 0)
        # A continued delivery goes at once, and makes at least one attempt.
        first_delay = self._jittered(schedule[0]) if number == 0 else 0.0
        deadline = self._clock.now() + first_delay
        last_number = max(len(schedule), number + 1)
        last: _Reply = _Reply()
        outcome: DeliveryOutcome = "failed"
        while number < last_number:
            number += 1
            await self._clock.sleep_until(deadline)
            at = self._clock.now()
            started = time.perf_counter()
            if url is None or refusal is not None:
                last = _Reply(error=refusal, final=True)
            else:
                headers = headers_for(
                    body, webhook.secret, msg_id=notification.event_id, timestamp=int(at)
                )
                last = await self._attempt(url, body, headers)
            latency = time.perf_counter() - started

            delivered = last.status_code is not None and 200 <= last.status_code < 300
            retry_at: float | None = None
            if delivered:
                outcome = "delivered"
            elif last.final or number >= last_number:
                outcome = "failed"
            else:
                outcome = "retry"
                delay = self._jittered(schedule[number])
                if last.retry_after is not None:
                    delay = max(delay, last.retry_after)
                retry_at = deadline = self._clock.now() + delay
            attempt = DeliveryAttempt(
                event_id=notification.event_id,
                execution_id=notification.execution_id,
                url=shown_url,
                attempt=number,
                at=at,
                status_code=last.status_code,
                error=_without_userinfo_in(last.error),
                latency=latency,
                outcome=outcome,
                retry_at=retry_at,
            )
            await self._record(attempt)
            if record is not None and not await self._durably(record, attempt):
                break
            if outcome != "retry":
                break
        return DeliveryResult(
            event_id=notification.event_id,
            execution_id=notification.execution_id,
            delivered=outcome == "delivered",
            attempts=number,
            status_code=last.status_code,
            error=_without_userinfo_in(last.error),
        )

    def _jittered(self, delay: float) -> float:
        return jittered(delay, self._jitter, self._random)

    async def _record(self, attempt: DeliveryAttempt) -> None:
        self.attempts.append(attempt)
        log = logger.info if attempt.outcome == "delivered" else logger.warning
        log(
            "webhook %s for %s: attempt %d %s (status %s%s)",
            attempt.event_id,
            attempt.execution_id,
            attempt.attempt,
            attempt.outcome,
            attempt.status_code,
            f", {attempt.error}" if attempt.error else "",
        )
        if self._on_attempt is None:
            return
        try:
            maybe = self._on_attempt(attempt)
            if inspect.isawaitable(maybe):
                await maybe
        except Exception:  # a broken observer must not stop the delivery
            logger.exception("on_attempt callback failed for webhook %s", attempt.event_id)

    @staticmethod
    async def _durably(record: AttemptRecorder, attempt: DeliveryAttempt) -> bool:
        """Pass ``attempt`` to the engine's ``record``; ``False`` if it raised (stop)."""
        try:
            await record(attempt)
        except Exception as exc:
            logger.warning(
                "webhook %s for %s: recording attempt %d failed (%s); delivery stopped",
                attempt.event_id,
                attempt.execution_id,
                attempt.attempt,
                exc,
                # An engine error (LeaseLost: another engine took over) is news, not a bug.
                exc_info=not isinstance(exc, EngineError),
            )
            return False
        return True

    async def _attempt(self, url: httpx.URL, body: bytes, headers: dict[str, str]) -> _Reply:
        """One POST within ``timeout`` (name resolution included); never raises httpx errors."""
        reply: _Reply | None = None
        async with self._client_for_attempt() as client:
            with anyio.move_on_after(self._timeout):
                reply = await self._post_safely(client, url, body, headers)
        if reply is None:
            reply = _Reply(error=f"timed out after {self._timeout:g}s")
        return reply

    async def _post_safely(
        self, client: httpx.AsyncClient, url: httpx.URL, body: bytes, headers: dict[str, str]
    ) -> _Reply:
        try:
            return await self._post(client, url, body, headers)
        except DestinationRefused as exc:
            return _Reply(error=str(exc), final=True)
        except httpx.TimeoutException:
            return _Reply(error=f"timed out after {self._timeout:g}s")
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            return _Reply(error=f"{type(exc).__name__}: {exc}")

    async def _post(
        self, client: httpx.AsyncClient, url: httpx.URL, body: bytes, headers: dict[str, str]
    ) -> _Reply:
        async with send_checked(
            client,
            "POST",
            url,
            allowed_networks=self._allowed_networks,
            content=body,
            headers=headers,
            request_timeout=self._timeout,
        ) as response:
            return self._judge(response)

    def _judge(self, response: httpx.Response) -> _Reply:
        status = response.status_code
        if 200 <= status < 300:
            return _Reply(status_code=status)
        if status == 410:
            return _Reply(
                status_code=status, error="HTTP 410 Gone: receiver asked to stop", final=True
            )
        if 300 <= status < 400:
            return _Reply(status_code=status, error=f"HTTP {status}: redirects are not followed")
        retry_after = None
        if status in (429, 503):
            retry_after = parse_retry_after(
                response.headers.get("Retry-After"), now=self._clock.now(), cap=MAX_RETRY_AFTER
            )
        return _Reply(status_code=status, error=f"HTTP {status}", retry_after=retry_after)

    @contextlib.asynccontextmanager
    async def _client_for_attempt(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._client is not None:
            yield self._client
            return
        # A short-lived client per attempt (no socket stays open through hours of back-off),
        # sharing one TLS context: building one loads the CA bundle, ~30 ms of CPU.
        async with httpx.AsyncClient(
            trust_env=False, follow_redirects=False, verify=_tls_context()
        ) as client:
            yield client


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


#: ``scheme://`` and the userinfo of a URL's authority, anywhere in a text.
_USERINFO_IN_TEXT = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s]*@")


def _without_userinfo_in(text: str | None) -> str | None:
    """An error text with the userinfo of any URL in it removed. The secret is never in one:
    it is used only as the HMAC key of the signature headers, and no error text quotes it (a bad
    ``whsec_`` secret's message does not)."""
    return None if text is None else _USERINFO_IN_TEXT.sub(r"\1", text)


def _without_credentials(url: str) -> str:
    """``url`` as recorded in attempts: any ``user:password@`` is masked."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return url
    if not parsed.userinfo:
        return url
    return str(parsed.copy_with(username="***", password=None))

"""Slow and excess clients: uvicorn's HTTP/1.1 protocol with a header timeout, a body timeout and
a cap on open connections.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but sets no limit on how long
a request's headers or body may take: a client trickling a byte a second holds its connection
(and a file descriptor) for as long as it likes, and enough of them exhaust the process's
descriptors. Its ``limit_concurrency`` only answers 503 once a whole request has arrived, so
connections that never finish their headers are not counted against anything.

:func:`guarded_protocol` makes a subclass of uvicorn's h11 protocol that:

- gives the request line and headers ``header_timeout`` seconds, from the connection's opening
  (first request) or from the first byte of the next request (keep-alive); late, it answers
  ``408`` (or just closes, when nothing at all arrived) and closes the connection;
- gives the body ``body_timeout`` seconds from the end of the headers; late, it closes the
  connection. (The app answers 408 itself when it is the one reading: ``contrib.asgi``'s
  ``body_timeout``; this is the backstop for routes that answer without reading the body, whose
  trickled bodies would otherwise keep the connection open.)
- closes a new connection at once with ``503`` and ``Retry-After: 1`` when ``max_connections``
  are already open.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("contrib.serve")

_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: 35\r\n\r\nthe request headers came too slowly"
)
_BUSY_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: 28\r\n\r\ntoo many connections; retry"
)


class GuardedH11Protocol(H11Protocol):
    """See the module docstring; :func:`guarded_protocol` sets the limits."""

    header_timeout: float | None = None
    body_timeout: float | None = None
    max_connections: int | None = None
    #: Connections refused for ``max_connections`` (per subclass, i.e. per server).
    refused = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._timing: object = None  # the h11 state being timed
        self._got_data = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limit = self.max_connections
        if limit is not None and len(self.connections) > limit:
            cls = type(self)
            cls.refused += 1
            if cls.refused == 1 or cls.refused % 1000 == 0:
                log.warning(
                    "refused a connection from %s: %d connections are open (--max-connections "
                    "%d); %d refused so far",
                    self.client[0] if self.client else "?",
                    len(self.connections) - 1,
                    limit,
                    cls.refused,
                )
            transport.write(_BUSY_503)
            transport.close()
            return
        self._time_state()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._got_data = True
        super().data_received(data)
        self._time_state()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request's header time starts with its first byte (until then, uvicorn's
        # keep-alive timeout applies).
        self._got_data = False
        self._time_state(idle_ok=True)

    def _time_state(self, *, idle_ok: bool = False) -> None:
        """Arm the timer that fits the request's state, once per state."""
        if self.transport.is_closing():
            self._cancel_timer()
            return
        state = self.conn.their_state
        if state is self._timing:
            return
        self._cancel_timer()
        if state is h11.IDLE and not (idle_ok and not self._got_data):
            timeout, handler = self.header_timeout, self._headers_late
        elif state is h11.SEND_BODY:
            timeout, handler = self.body_timeout, self._body_late
        else:
            return
        if timeout is not None:
            self._timing = state
            self._timer = self.loop.call_later(timeout, handler)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timing = None

    def _headers_late(self) -> None:
        self._timer = self._timing = None
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            return
        if self._got_data:
            self.transport.write(_TIMEOUT_408)
        self.transport.close()

    def _body_late(self) -> None:
        self._timer = self._timing = None
        if self.conn.their_state is not h11.SEND_BODY or self.transport.is_closing():
            return
        log.info(
            "closed a connection from %s: its request body took over %g s",
            self.client[0] if self.client else "?",
            self.body_timeout,
        )
        self.transport.close()


def guarded_protocol(
    *,
    header_timeout: float | None,
    body_timeout: float | None,
    max_connections: int | None,
) -> type[GuardedH11Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with these limits (``None``: none)."""
    for name, value in (("header_timeout", header_timeout), ("body_timeout", body_timeout)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be a positive number of seconds, or None")
    if max_connections is not None and max_connections < 1:
        raise ValueError("max_connections must be positive, or None")
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {
            "header_timeout": header_timeout,
            "body_timeout": body_timeout,
            "max_connections": max_connections,
            "refused": 0,
        },
    )


__all__ = ["GuardedH11Protocol", "guarded_protocol"]

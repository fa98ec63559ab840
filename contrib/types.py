"""The ASGI 3 types, as three aliases (the shape Starlette uses), plus a header list."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Response headers as ASGI sends them: lowercase latin-1 names and values.
Headers = list[tuple[bytes, bytes]]

__all__ = ["ASGIApp", "Headers", "Message", "Receive", "Scope", "Send"]

"""Where the server is (``--api-url``/``--api-key`` or the environment) and how a command talks
to it: one :class:`~adapters.http.EngineClient` per command, its errors explained at the end."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import httpx
from attrs import field, frozen

from adapters.http import EngineClient
from contrib.cli.errors import USAGE, CliError, explain
from engine import EngineError

T = TypeVar("T")

URL_VARIABLE = "VIDEOFLOW_API_URL"
KEY_VARIABLE = "VIDEOFLOW_API_KEY"
#: Seconds to wait for the server (to connect, and for each answer).
TIMEOUT = 30.0


@frozen
class Remote:
    """A server's API URL and the API key to use there."""

    api_url: str
    api_key: str = field(repr=False)

    @classmethod
    def resolve(cls, api_url: str | None, api_key: str | None) -> Remote:
        """From the options (click has already read the environment variables for them);
        :class:`CliError` (usage) naming both ways when one is missing."""
        if not api_url:
            raise CliError(f"no API URL: pass --api-url or set {URL_VARIABLE}", USAGE)
        if not api_url.startswith(("http://", "https://")):
            raise CliError(
                f"the API URL {api_url!r} is not an http(s) URL: pass one such as "
                "http://127.0.0.1:8000",
                USAGE,
            )
        if not api_key:
            raise CliError(f"no API key: pass --api-key or set {KEY_VARIABLE}", USAGE)
        return cls(api_url.rstrip("/"), api_key)

    def run(self, action: Callable[[EngineClient], Awaitable[T]]) -> T:
        """Run ``action`` with a client of this server; the engine's errors become
        :class:`CliError`\\ s."""

        async def main() -> T:
            # The client is not entered (``async with``): a command registers no callback, so
            # it needs no task group, whose exception groups would hide the error to explain.
            async with httpx.AsyncClient(timeout=TIMEOUT) as http:
                return await action(EngineClient(self.api_url, self.api_key, client=http))

        try:
            return anyio.run(main)
        except EngineError as exc:
            raise explain(exc, self.api_url) from exc

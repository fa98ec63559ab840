"""Reading a request body under a size limit, and parsing it as strict JSON."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import anyio

from contrib.problems import MALFORMED, REQUEST_TIMEOUT, TOO_LARGE, HttpProblem
from contrib.types import Receive


class ClientDisconnected(Exception):
    """The client went away before its request body arrived; there is no one to answer."""


async def read_body(
    receive: Receive, content_length: bytes | None, limit: int, *, time_limit: float | None = None
) -> bytes:
    """The whole body, refusing one over ``limit`` bytes before reading it when the
    ``Content-Length`` says so, and while streaming otherwise (chunked bodies).

    ``time_limit``: seconds the whole body may take to arrive; a client slower than that (a body
    trickled a byte at a time holds a connection and its buffers) is answered 408, and the
    connection closed.
    """
    if content_length is not None:
        if not content_length.isdigit():
            raise HttpProblem(MALFORMED, "Content-Length must be a non-negative integer")
        if len(content_length) > 20 or int(content_length) > limit:
            raise HttpProblem(TOO_LARGE, f"the request body must be at most {limit:,} bytes")
    with anyio.move_on_after(math.inf if time_limit is None else time_limit):
        return await _read(receive, limit)
    raise HttpProblem(
        REQUEST_TIMEOUT,
        f"the request body did not arrive within {time_limit:g} s",
        headers=[("Connection", "close")],
    )


async def _read(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise HttpProblem(TOO_LARGE, f"the request body must be at most {limit:,} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# A \u escape of a UTF-16 surrogate: valid JSON syntax, but alone it is not a character.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def parse_json(body: bytes) -> Any:
    """Strict JSON: UTF-8 only, no NaN or Infinity, no lone surrogates; else a 400 problem."""
    if not body:
        raise HttpProblem(MALFORMED, "the request body is empty; expected a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HttpProblem(
            MALFORMED, f"the request body is not valid UTF-8 (byte {exc.start})"
        ) from None
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise HttpProblem(
            MALFORMED,
            f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}",
        ) from None
    except RecursionError:
        raise HttpProblem(MALFORMED, "the request body is nested too deeply") from None
    except ValueError as exc:  # NaN/Infinity, or an integer too long to convert
        raise HttpProblem(MALFORMED, f"the request body is not valid JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(body) is not None:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except (UnicodeEncodeError, RecursionError):
            raise HttpProblem(
                MALFORMED, "the request body holds an unpaired UTF-16 surrogate escape"
            ) from None
    return value


__all__ = ["ClientDisconnected", "parse_json", "read_body"]

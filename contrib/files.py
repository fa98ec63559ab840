"""Send one file over ASGI, streamed from disk, with byte ranges (RFC 9110 section 14).

- ``Range: bytes=first-last``, ``bytes=first-`` and ``bytes=-suffix`` are answered ``206`` with
  ``Content-Range: bytes first-last/size``; a range that starts past the end (or an empty
  suffix) is ``416`` with ``Content-Range: bytes */size``. A ``Range`` header of another unit,
  a malformed one, or one with several ranges is ignored and the whole file sent (``200``), as
  the RFC allows; so is a ``Range`` under an ``If-Range`` that no longer matches.
- Every answer carries ``Accept-Ranges: bytes``, a strong ``ETag`` (size and modification time)
  and ``Last-Modified``; ``HEAD`` gets the same headers and no body.
- The body is read and sent in chunks of 64 KiB, never held whole in memory.
"""

from __future__ import annotations

import email.utils
import os
import re
from pathlib import Path

import anyio

from contrib.problems import RANGE_NOT_SATISFIABLE, HttpProblem
from contrib.types import Headers, Send

__all__ = ["CHUNK_BYTES", "Unsatisfiable", "parse_range", "send_file"]

CHUNK_BYTES = 1 << 16

_RANGE = re.compile(r"bytes=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)


class Unsatisfiable(Exception):
    """The range asked for holds no byte of the file."""


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``(first, last)`` (inclusive) of ``size`` bytes that ``header`` asks for, or ``None`` to
    send the whole file. Raises :class:`Unsatisfiable` for a range past the end."""
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None  # another unit, several ranges, or not a range at all: ignored
    first_text, last_text = match.groups()
    if not first_text:
        if not last_text:
            return None
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - suffix), size - 1
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last_text and last < first:
        return None  # invalid: ignored
    if first >= size:
        raise Unsatisfiable
    return first, min(last, size - 1)


def _etag(stat: os.stat_result) -> str:
    return f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'


async def send_file(
    send: Send,
    path: Path,
    *,
    method: str,
    range_header: str | None,
    if_range: str | None = None,
    media_type: str = "application/octet-stream",
    extra_headers: Headers | None = None,
) -> int:
    """Answer with the file at ``path`` (see the module docstring); returns the status sent.

    Raises :class:`HttpProblem` (416) before anything is sent when the range is unsatisfiable,
    and ``OSError`` when the file cannot be opened.
    """
    async with await anyio.open_file(path, "rb") as handle:
        stat = os.fstat(handle.wrapped.fileno())
        size = stat.st_size
        etag = _etag(stat)
        headers: Headers = [
            (b"accept-ranges", b"bytes"),
            (b"etag", etag.encode()),
            (b"last-modified", email.utils.formatdate(stat.st_mtime, usegmt=True).encode()),
            *(extra_headers or []),
        ]
        wanted = None
        if range_header is not None and (if_range is None or if_range.strip() == etag):
            try:
                wanted = parse_range(range_header, size)
            except Unsatisfiable:
                raise HttpProblem(
                    RANGE_NOT_SATISFIABLE,
                    f"the range {range_header[:100]!r} is past the end of this {size}-byte file",
                    headers=[("Content-Range", f"bytes */{size}"), ("Accept-Ranges", "bytes")],
                ) from None
        if wanted is None:
            status, first, length = 200, 0, size
        else:
            first, last = wanted
            status, length = 206, last - first + 1
            headers.append((b"content-range", f"bytes {first}-{last}/{size}".encode()))
        headers.append((b"content-type", media_type.encode()))
        headers.append((b"content-length", str(length).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if method == "HEAD" or length == 0:
            await send({"type": "http.response.body", "body": b""})
            return status
        await handle.seek(first)
        left = length
        while left > 0:
            chunk = await handle.read(min(CHUNK_BYTES, left))
            if not chunk:  # the file shrank under us: end the body short rather than hang
                break
            left -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": left > 0})
        if left > 0:
            await send({"type": "http.response.body", "body": b""})
        return status

"""``videoflow get``: bring an execution's video to a local file.

``http(s)`` URLs are fetched with httpx (redirects followed, no API key sent: result links are
signed); a ``file://`` URL is copied when the file is on this machine (an embedded or
same-host server). The file is written next to its destination as ``NAME.part`` and renamed
when complete, so an interrupted download never leaves a truncated video under the final name.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import anyio
import httpx
from rich.progress import Progress, TaskID

from contrib.cli.display import download_progress
from contrib.cli.errors import REMOTE, USAGE, CliError

CHUNK = 1 << 16
#: Seconds httpx waits to connect, and for each chunk (not for the whole download).
NETWORK_TIMEOUT = 60.0


def default_name(execution_id: str, url: str) -> Path:
    """``<execution id><the URL's suffix, or .mp4>`` in the current directory."""
    suffix = PurePosixPath(unquote(urlsplit(url).path)).suffix
    if not suffix or len(suffix) > 6:
        suffix = ".mp4"
    return Path(execution_id + suffix)


async def fetch(url: str, destination: Path) -> int:
    """Write the video at ``url`` to ``destination``; return its size in bytes."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        action = _download
    elif scheme == "file":
        action = _copy
    elif scheme == "fake":
        raise CliError(
            f"the video's URL is {url}: the server runs --provider fake, whose results are not "
            "real videos; serve with --provider ffmpeg (or another real provider)",
            REMOTE,
        )
    else:
        raise CliError(f"cannot download a {scheme or 'scheme-less'} URL: {url}", REMOTE)
    partial = destination.with_name(destination.name + ".part")
    try:
        with download_progress() as progress:
            task = progress.add_task(destination.name, total=None)
            size = await action(url, partial, progress, task)
        os.replace(partial, destination)
    except OSError as exc:
        raise CliError(
            f"cannot save {url} as {destination}: {exc.strerror or exc}: choose another -o FILE",
            USAGE,
        ) from exc
    finally:
        partial.unlink(missing_ok=True)
    return size


async def _download(url: str, partial: Path, progress: Progress, task: TaskID) -> int:
    size = 0
    try:
        async with (
            httpx.AsyncClient(timeout=NETWORK_TIMEOUT, follow_redirects=True) as client,
            client.stream("GET", url) as response,
        ):
            if not response.is_success:
                raise CliError(
                    f"downloading {url} answered {response.status_code} "
                    f"{response.reason_phrase}: the link may have expired; run "
                    "`videoflow get` again for a fresh one",
                    REMOTE,
                )
            length = response.headers.get("content-length")
            if length is not None and length.isdigit():
                progress.update(task, total=int(length))
            async with await anyio.open_file(partial, "wb") as out:
                async for chunk in response.aiter_bytes(CHUNK):
                    await out.write(chunk)
                    size += len(chunk)
                    progress.update(task, completed=size)
    except httpx.HTTPError as exc:
        raise CliError(f"downloading {url} failed: {exc!r}: try again", REMOTE) from exc
    progress.update(task, total=size, completed=size)
    return size


async def _copy(url: str, partial: Path, progress: Progress, task: TaskID) -> int:
    parts = urlsplit(url)
    source = anyio.Path(url2pathname(unquote(parts.path)))
    if parts.netloc not in ("", "localhost") or not await source.is_file():
        raise CliError(
            f"the video is a file on the server ({url}), not on this machine: run `videoflow "
            "get` where the server runs, or serve results at http(s) URLs",
            REMOTE,
        )
    total = (await source.stat()).st_size
    progress.update(task, total=total)
    size = 0
    async with (
        await anyio.open_file(source, "rb") as src,
        await anyio.open_file(partial, "wb") as out,
    ):
        while chunk := await src.read(CHUNK):
            await out.write(chunk)
            size += len(chunk)
            progress.update(task, completed=size)
    return size

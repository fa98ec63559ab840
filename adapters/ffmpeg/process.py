"""Find the FFmpeg binary and run it: stderr kept for errors, the process killed on cancellation.

The binary is the one the ``imageio-ffmpeg`` wheel ships (the ``ffmpeg`` extra), imported only
when first needed; ``IMAGEIO_FFMPEG_EXE`` (read by imageio-ffmpeg) or an explicit path given to
the provider overrides it.
"""

from __future__ import annotations

import importlib
import subprocess
from collections import deque

import anyio
from anyio.abc import ByteReceiveStream, Process
from attrs import frozen

from engine.errors import ProviderError

__all__ = [
    "INPUT_FORMATS",
    "FFmpegCommand",
    "FFmpegFailed",
    "ffmpeg_exe",
    "input_args",
    "run_ffmpeg",
]

#: How many of FFmpeg's last stderr lines an error carries.
STDERR_LINES = 12

#: Words in FFmpeg's stderr that mean the machine, not the input, was at fault: worth a retry.
_TRANSIENT = (
    "No space left on device",
    "Cannot allocate memory",
    "Resource temporarily unavailable",
    "Too many open files",
)


#: Demuxers FFmpeg may use on an input file: ordinary audio and video files only. Playlists (HLS,
#: DASH), concat scripts, image sequences and devices are refused, since through them one input
#: file could make FFmpeg read other files.
INPUT_FORMATS = "mov,matroska,avi,mpegts,mpeg,flv,asf,ivf,wav,w64,aiff,caf,mp3,aac,ogg,flac,wv,amr"


def input_args(path: str) -> list[str]:
    """``-i path`` for a file that came from a plan: local files only, media formats only."""
    return ["-protocol_whitelist", "file", "-format_whitelist", INPUT_FORMATS, "-i", path]


def ffmpeg_exe() -> str:
    """The path of the FFmpeg binary from the ``imageio-ffmpeg`` wheel.

    Raises ``ModuleNotFoundError`` naming the extra to install when the wheel is missing.
    """
    try:
        imageio_ffmpeg = importlib.import_module("imageio_ffmpeg")
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "adapters.ffmpeg needs the FFmpeg binary from the 'imageio-ffmpeg' package: "
            "install the 'ffmpeg' extra, e.g. pip install 'videoflow-engine[ffmpeg]'",
            name="imageio_ffmpeg",
        ) from exc
    return str(imageio_ffmpeg.get_ffmpeg_exe())


@frozen
class FFmpegCommand:
    """One FFmpeg run: its full argument list (binary first) and working directory."""

    args: tuple[str, ...]
    cwd: str | None = None

    def __str__(self) -> str:
        return subprocess.list2cmdline(self.args)


class FFmpegFailed(ProviderError):
    """FFmpeg exited with an error. ``stderr`` holds its last lines; ``returncode`` its status."""

    def __init__(self, message: str, *, stderr: str, returncode: int | None) -> None:
        self.stderr = stderr
        self.returncode = returncode
        retryable = (returncode is not None and returncode < 0) or any(
            word in stderr for word in _TRANSIENT
        )
        detail = f":\n{stderr}" if stderr else ""
        super().__init__(f"{message}{detail}", retryable=retryable)


async def run_ffmpeg(
    command: FFmpegCommand,
    *,
    what: str = "ffmpeg",
    kill_grace: float = 2.0,
    check: bool = True,
    keep_lines: int | None = STDERR_LINES,
) -> tuple[int, str]:
    """Run ``command`` to the end; return its exit status and the last ``keep_lines`` lines of
    its stderr (all of them with ``None``).

    With ``check``, a non-zero exit raises :class:`FFmpegFailed` (``what`` names the step).
    Cancelled, the process is sent ``SIGTERM``, given ``kill_grace`` seconds, then ``SIGKILL``ed,
    and always waited for: no FFmpeg outlives its job.
    """
    tail: deque[str] = deque(maxlen=keep_lines)
    process = await anyio.open_process(
        list(command.args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=command.cwd,
    )
    try:
        async with anyio.create_task_group() as tg:
            if process.stderr is not None:
                tg.start_soon(_collect, process.stderr, tail)
            await process.wait()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _stop(process, kill_grace)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await process.aclose()
    returncode = process.returncode if process.returncode is not None else -1
    stderr = "\n".join(tail)
    if check and returncode != 0:
        raise FFmpegFailed(
            f"{what} failed (exit status {returncode})", stderr=stderr, returncode=returncode
        )
    return returncode, stderr


async def _stop(process: Process, grace: float) -> None:
    if process.returncode is not None:
        return
    try:
        process.terminate()
    except ProcessLookupError:
        return
    with anyio.move_on_after(grace):
        await process.wait()
        return
    try:
        process.kill()
    except ProcessLookupError:
        return
    await process.wait()


async def _collect(stream: ByteReceiveStream, tail: deque[str]) -> None:
    pending = b""
    async for chunk in stream:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            _keep(line, tail)
    _keep(pending, tail)


def _keep(line: bytes, tail: deque[str]) -> None:
    text = line.decode("utf-8", "replace").rstrip("\r").rstrip()
    if text:
        tail.append(text)

"""What a media file holds: :func:`probe` and :class:`MediaInfo`.

The FFmpeg that ``imageio-ffmpeg`` ships has no ``ffprobe``. MP4/MOV files (everything this
adapter writes) are read directly from their ``moov`` box, which is exact (track durations from
the edit lists, so AAC priming does not count) and needs no process. Anything else (WAV, MP3,
Matroska, ...) is read from what ``ffmpeg -i`` prints, which gives durations to 10 ms.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import anyio
from attrs import frozen

from adapters.ffmpeg.process import FFmpegCommand, ffmpeg_exe, input_args, run_ffmpeg
from engine.errors import ProviderError

__all__ = ["InvalidMedia", "MediaInfo", "aspect_label", "probe"]

#: A ``moov`` box larger than this is not read (real ones are kilobytes to a few megabytes).
MAX_MOOV_BYTES = 64 * 1024 * 1024

_COMMON_RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4", "4:5", "5:4", "3:2", "2:3", "21:9", "9:21")
_CODECS = {
    "avc1": "h264",
    "avc3": "h264",
    "hvc1": "hevc",
    "hev1": "hevc",
    "av01": "av1",
    "vp09": "vp9",
    "mp4a": "aac",
    "Opus": "opus",
    "ac-3": "ac3",
    "ec-3": "eac3",
    ".mp3": "mp3",
}


class InvalidMedia(ProviderError):
    """A file is missing, or is not media FFmpeg can read. Never retried: the input is at fault."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


@frozen
class MediaInfo:
    """What :func:`probe` found. Durations are seconds; ``duration`` is the video track's when
    there is one (what a viewer sees), else the audio's. Sizes are as displayed (rotation applied).
    """

    path: str
    container: str
    duration: float
    has_video: bool
    has_audio: bool
    width: int | None = None
    height: int | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    fps: float | None = None
    frames: int | None = None
    video_duration: float | None = None
    audio_duration: float | None = None
    sample_rate: int | None = None
    channels: int | None = None

    @property
    def aspect_ratio(self) -> str | None:
        """``"16:9"`` and the like, reduced from the frame size; ``None`` without video."""
        if not self.width or not self.height:
            return None
        return aspect_label(self.width, self.height)


def aspect_label(width: int, height: int, expected: str | None = None) -> str:
    """The aspect ratio of a ``width`` x ``height`` frame as ``"W:H"``.

    ``expected`` (or else a common ratio) is used when the frame matches it within 1 %, since
    frame sizes are rounded to even numbers: 1680x720 is ``"21:9"`` when that was asked for.
    """
    ratio = width / height
    candidates = ((expected,) if expected else ()) + _COMMON_RATIOS
    for label in candidates:
        w_text, _, h_text = label.partition(":")
        try:
            w, h = int(w_text), int(h_text)
        except ValueError:
            continue
        if w > 0 and h > 0 and abs(ratio / (w / h) - 1) <= 0.01:
            return label
    divisor = math.gcd(width, height)
    return f"{width // divisor}:{height // divisor}"


async def probe(
    path: str | os.PathLike[str],
    *,
    ffmpeg: str | None = None,
    limiter: anyio.CapacityLimiter | None = None,
) -> MediaInfo:
    """Describe the media file at ``path``.

    Raises :class:`InvalidMedia` when the file is missing or FFmpeg cannot read it (the message
    carries FFmpeg's own words). ``ffmpeg`` is the binary to use for non-MP4 files, run while
    holding ``limiter`` if one is given (MP4 files are read without FFmpeg).
    """
    file = Path(path)
    if not await anyio.Path(file).is_file():
        raise InvalidMedia(f"{file}: no such file")
    info = await anyio.to_thread.run_sync(read_mp4, file)
    if info is not None:
        return info
    exe = ffmpeg if ffmpeg is not None else ffmpeg_exe()
    command = FFmpegCommand((exe, "-hide_banner", "-nostdin", *input_args(os.fspath(file))))
    async with limiter if limiter is not None else contextlib.nullcontext():
        _, stderr = await run_ffmpeg(command, check=False, keep_lines=None)
    return parse_ffmpeg_info(file, stderr)


# --- ffmpeg -i ---------------------------------------------------------------------------------

_INPUT = re.compile(r"^Input #0, ([^,]+)", re.MULTILINE)
_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_STREAM = re.compile(r"^\s*Stream #0:\d+.*?: (Video|Audio): (\w+)(.*)$", re.MULTILINE)
_SIZE = re.compile(r", (\d{1,5})x(\d{1,5})")
_FPS = re.compile(r", ([\d.]+) fps")
_HZ = re.compile(r", (\d+) Hz")
_LAYOUT = re.compile(r"Hz, ([^,]+)")
_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees")
_LAYOUT_CHANNELS = {"mono": 1, "stereo": 2, "2.1": 3, "quad": 4, "5.0": 5, "5.1": 6, "7.1": 8}


def parse_ffmpeg_info(path: Path, stderr: str) -> MediaInfo:
    """A :class:`MediaInfo` from the text ``ffmpeg -i path`` printed; :class:`InvalidMedia` if
    that text says FFmpeg could not open it or found no audio or video in it."""
    found = _INPUT.search(stderr)
    if found is None:
        raise InvalidMedia(f"{path}: FFmpeg cannot read this file as media:\n{_tail(stderr)}")
    container = found[1].strip()
    match = _DURATION.search(stderr)
    duration = (
        int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3]) if match is not None else 0.0
    )
    width = height = None
    video_codec = audio_codec = None
    fps = None
    sample_rate = channels = None
    for kind, codec, rest in _STREAM.findall(stderr):
        if kind == "Video" and video_codec is None:
            video_codec = codec
            size = _SIZE.search(rest)
            if size is not None:
                width, height = int(size[1]), int(size[2])
            rate = _FPS.search(rest)
            fps = float(rate[1]) if rate is not None else None
        elif kind == "Audio" and audio_codec is None:
            audio_codec = codec
            hz = _HZ.search(rest)
            sample_rate = int(hz[1]) if hz is not None else None
            layout = _LAYOUT.search(rest)
            if layout is not None:
                name = layout[1].strip().split("(")[0]
                channels = _LAYOUT_CHANNELS.get(name)
                if channels is None and name.endswith(" channels"):
                    channels = int(name.split()[0])
    if video_codec is None and audio_codec is None:
        raise InvalidMedia(f"{path}: holds no audio or video stream:\n{_tail(stderr)}")
    rotation = _ROTATION.search(stderr)
    turned = rotation is not None and round(abs(float(rotation[1]))) % 180 == 90
    if turned and width is not None and height is not None:
        width, height = height, width
    return MediaInfo(
        path=str(path),
        container=container,
        duration=duration,
        has_video=video_codec is not None,
        has_audio=audio_codec is not None,
        width=width,
        height=height,
        video_codec=video_codec,
        audio_codec=audio_codec,
        fps=fps,
        frames=round(duration * fps) if fps and video_codec else None,
        video_duration=duration if video_codec else None,
        audio_duration=duration if audio_codec else None,
        sample_rate=sample_rate,
        channels=channels,
    )


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# --- MP4 / QuickTime boxes ----------------------------------------------------------------------

_TOP_LEVEL = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"styp"}


@frozen
class _Track:
    handler: bytes
    duration: float
    codec: str | None
    width: int | None
    height: int | None
    rotated: bool
    samples: int | None
    media_duration: float
    sample_rate: int | None
    channels: int | None


class _Malformed(Exception):
    pass


def read_mp4(path: Path) -> MediaInfo | None:
    """Read ``path``'s ``moov`` box; ``None`` if it is not a (complete, unfragmented) MP4/MOV,
    so that the caller asks FFmpeg instead."""
    try:
        with path.open("rb") as file:
            moov = _find_moov(file)
            if moov is None:
                return None
        return _describe(path, moov)
    except (_Malformed, struct.error, OSError, ValueError):
        return None


def _find_moov(stream: BinaryIO) -> bytes | None:
    size_total = os.fstat(stream.fileno()).st_size
    offset = 0
    first = True
    while offset + 8 <= size_total:
        stream.seek(offset)
        header = stream.read(16)
        size, kind = struct.unpack(">I4s", header[:8])
        header_size = 8
        if size == 1:
            (size,) = struct.unpack(">Q", header[8:16])
            header_size = 16
        elif size == 0:
            size = size_total - offset
        if first and kind not in _TOP_LEVEL:
            return None
        first = False
        if size < header_size or offset + size > size_total:
            return None
        if kind == b"moov":
            if size > MAX_MOOV_BYTES:
                return None
            stream.seek(offset + header_size)
            return stream.read(size - header_size)
        offset += size
    return None


def _boxes(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, offset)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, offset + 8)
            header = 16
        elif size == 0:
            size = len(data) - offset
        if size < header or offset + size > len(data):
            raise _Malformed(kind)
        yield kind, data[offset + header : offset + size]
        offset += size


def _child(data: bytes, kind: bytes) -> bytes | None:
    return next((payload for k, payload in _boxes(data) if k == kind), None)


def _path(data: bytes | None, *kinds: bytes) -> bytes | None:
    for kind in kinds:
        if data is None:
            return None
        data = _child(data, kind)
    return data


def _describe(path: Path, moov: bytes) -> MediaInfo | None:
    mvhd = _child(moov, b"mvhd")
    if mvhd is None:
        return None
    if mvhd[0] == 1:
        movie_scale, movie_duration = struct.unpack_from(">IQ", mvhd, 20)
    else:
        movie_scale, movie_duration = struct.unpack_from(">II", mvhd, 12)
    if movie_scale == 0:
        return None
    tracks = [_track(trak, movie_scale) for kind, trak in _boxes(moov) if kind == b"trak"]
    video = next((t for t in tracks if t is not None and t.handler == b"vide"), None)
    audio = next((t for t in tracks if t is not None and t.handler == b"soun"), None)
    if video is None and audio is None:
        return None
    if (video is not None and video.duration <= 0) or (audio is not None and audio.duration <= 0):
        return None  # fragmented or otherwise unusual: let FFmpeg judge
    width = height = None
    fps = None
    if video is not None:
        width, height = video.width, video.height
        if video.rotated and width is not None and height is not None:
            width, height = height, width
        if video.samples and video.media_duration > 0:
            fps = round(video.samples / video.media_duration, 3)
    main = video if video is not None else audio
    duration = main.duration if main is not None else movie_duration / movie_scale
    return MediaInfo(
        path=str(path),
        container="mov,mp4",
        duration=round(duration, 6),
        has_video=video is not None,
        has_audio=audio is not None,
        width=width,
        height=height,
        video_codec=video.codec if video else None,
        audio_codec=audio.codec if audio else None,
        fps=fps,
        frames=video.samples if video else None,
        video_duration=round(video.duration, 6) if video else None,
        audio_duration=round(audio.duration, 6) if audio else None,
        sample_rate=audio.sample_rate if audio else None,
        channels=audio.channels if audio else None,
    )


def _track(trak: bytes, movie_scale: int) -> _Track | None:
    mdia = _child(trak, b"mdia")
    tkhd = _child(trak, b"tkhd")
    if mdia is None or tkhd is None:
        return None
    hdlr = _child(mdia, b"hdlr")
    mdhd = _child(mdia, b"mdhd")
    if hdlr is None or mdhd is None:
        return None
    handler = hdlr[8:12]
    if mdhd[0] == 1:
        scale, media = struct.unpack_from(">IQ", mdhd, 20)
    else:
        scale, media = struct.unpack_from(">II", mdhd, 12)
    if scale == 0:
        return None
    media_duration = media / scale
    duration = media_duration
    elst = _path(trak, b"edts", b"elst")
    if elst is not None:
        version = elst[0]
        (count,) = struct.unpack_from(">I", elst, 4)
        entry = 20 if version == 1 else 12
        fmt = ">Qq" if version == 1 else ">Ii"
        total = 0
        for index in range(count):
            segment, _media_time = struct.unpack_from(fmt, elst, 8 + index * entry)
            total += segment
        if total > 0:
            duration = total / movie_scale
    matrix_at = 48 if tkhd[0] == 1 else 36
    a, b = struct.unpack_from(">ii", tkhd, matrix_at + 4)
    rotated = a == 0 and b != 0
    codec = width = height = None
    sample_rate = channels = None
    stsd = _path(mdia, b"minf", b"stbl", b"stsd")
    if stsd is not None and len(stsd) >= 16:
        entry_kind = stsd[12:16]
        sample = stsd[16:]
        name = entry_kind.decode("latin-1")
        codec = _CODECS.get(name, name.strip())
        if handler == b"vide" and len(sample) >= 28:
            width, height = struct.unpack_from(">HH", sample, 24)
        elif handler == b"soun" and len(sample) >= 28:
            (channels,) = struct.unpack_from(">H", sample, 16)
            (rate_fixed,) = struct.unpack_from(">I", sample, 24)
            sample_rate = rate_fixed >> 16
    samples = None
    stsz = _path(mdia, b"minf", b"stbl", b"stsz")
    if stsz is not None and len(stsz) >= 12:
        (samples,) = struct.unpack_from(">I", stsz, 8)
    return _Track(
        handler=handler,
        duration=duration,
        codec=codec,
        width=width,
        height=height,
        rotated=rotated,
        samples=samples,
        media_duration=media_duration,
        sample_rate=sample_rate,
        channels=channels,
    )

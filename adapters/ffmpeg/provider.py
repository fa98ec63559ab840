"""A video provider that makes real MP4 files with FFmpeg, offline."""

from __future__ import annotations

import hashlib
import math
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
from attrs import define, field

from adapters.ffmpeg import commands
from adapters.ffmpeg.commands import Encoding, ReframeMode, Transition
from adapters.ffmpeg.fetch import InputFetcher
from adapters.ffmpeg.probe import InvalidMedia, MediaInfo, aspect_label, probe
from adapters.ffmpeg.process import FFmpegCommand, FFmpegFailed, ffmpeg_exe, run_ffmpeg
from adapters.ffmpeg.subtitles import Cue, cues_from_params, parse_srt, to_ass
from adapters.net import Network, parse_networks
from engine.catalogue import parse_aspect_ratio
from engine.errors import ConfigError, ProviderError
from engine.models import JobRequest, Video, frame_size

__all__ = ["DEFAULT_MAX_INPUT_BYTES", "MAX_FRAME_SIDE", "FFmpegVideoProvider"]

DEFAULT_MAX_INPUT_BYTES = 200 * 1024 * 1024
#: The longest frame side this provider makes (8K); more extreme aspect ratios are refused.
MAX_FRAME_SIDE = 7680
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
#: How the names of the per-job scratch directories begin.
_SCRATCH_PREFIX = "ffmpeg-job-"

_Operation = Callable[["_Job"], Awaitable[str | None]]


def _path(value: str | os.PathLike[str]) -> Path:
    return Path(value).absolute()


def _optional_path(value: str | os.PathLike[str] | None) -> Path | None:
    return None if value is None else Path(value).absolute()


def _paths(values: Iterable[str | os.PathLike[str]]) -> tuple[Path, ...]:
    if isinstance(values, str | os.PathLike):
        raise ConfigError("input_dirs must be a sequence of directories, not one path")
    return tuple(Path(v).absolute() for v in values)


@define
class _Job:
    """One attempt in progress: its request, private temporary directory and partial output."""

    request: JobRequest
    workdir: Path
    partial: Path


@define(kw_only=True)
class FFmpegVideoProvider:
    """The video provider port, made of FFmpeg runs. Each job writes one H.264/AAC MP4 under
    ``output_dir`` and returns a :class:`~engine.Video` whose duration, size and aspect ratio are
    measured from the file, with a ``file://`` URL.

    Operations (wire types):

    - ``generate`` is an **offline stand-in for a generative model**: a moving colour gradient
      of the requested duration and aspect ratio with the prompt as a centred title, and a
      silent stereo track. No model is called; use ``HttpVideoProvider`` for real generation.
    - ``merge`` joins its inputs in order, each scaled and padded to the first one's size.
      ``transition="none"`` concatenates; ``"crossfade"`` dissolves (xfade ``fade``) and
      ``"fade"`` dips through black (xfade ``fadeblack``), both with an audio ``acrossfade``, so
      each join shortens the result by ``transitionDuration``, rounded to whole frames and capped
      one frame below the shortest input.
    - ``reframe`` changes the aspect ratio: centre crop then scale (``reframe_mode="crop"``), or
      scale and letterbox (``"pad"``). The frame is ``frame_size(aspectRatio, short_side)``.
    - ``lipSync`` replaces the sound with ``audioUrl``, cut or padded with silence to the video's
      length. Offline this is **only a dub: mouths do not move**; a lip-sync model needs
      ``HttpVideoProvider``.
    - ``addSubtitles`` burns in ``cues`` (or else the SubRip file at ``srtUrl``) with libass.
      Without either it fails (not retried): making subtitles from speech needs a transcription
      provider.

    Files: ``<output_dir>/<idempotency key>.mp4`` (the key's ``/`` making a directory per
    execution), written to a hidden ``.part`` file beside it and renamed into place, so a retry
    overwrites cleanly and a crash never leaves a half file under the final name. Scratch files
    live in a fresh directory under ``temp_dir`` (default: the system's), removed after each job.

    Inputs: videos come as the ``file://`` URLs of earlier jobs (read under ``output_dir`` and
    ``input_dirs``); ``audioUrl``/``srtUrl`` may be ``file://`` or ``http(s)://``, and their
    local files are read only under ``input_dirs``, never under ``output_dir`` or the scratch
    directories (another job's output is an input, through ``dependsOn``, never a path);
    downloads go through ``client`` (default: a fresh ``httpx.AsyncClient`` that
    ignores proxy settings) behind the SSRF guard (``allowed_networks``), capped at
    ``max_input_bytes`` and ``fetch_timeout`` seconds. See :mod:`adapters.ffmpeg.fetch`.

    Processes: at most ``max_processes`` FFmpeg runs at once; a cancelled job's FFmpeg is
    terminated (killed after ``kill_grace`` seconds) and waited for. The last encoding command is
    kept in ``last_command`` (its wall time, once done, in ``last_command_seconds``) and passed to
    ``on_command``, for debugging and benchmarks.

    Errors are :class:`~engine.ProviderError` carrying FFmpeg's last stderr lines, with every
    server path in them (scratch, output and input directories) replaced by ``<scratch>``,
    ``<output>``, ``<input dir>`` or ``<temp>``, since they are shown to tenants: not retryable
    for bad input (missing file, not media, bad parameters), retryable for transient trouble
    (download timeouts, 5xx, a full disk, FFmpeg killed by a signal).
    """

    output_dir: Path = field(converter=_path, kw_only=False)
    short_side: int = 720
    fps: int = 25
    preset: str = "veryfast"
    crf: int = 23
    reframe_mode: ReframeMode = "crop"
    max_processes: int = 2
    client: httpx.AsyncClient | None = None
    allowed_networks: tuple[Network, ...] = field(default=(), converter=parse_networks)
    input_dirs: tuple[Path, ...] = field(default=(), converter=_paths)
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    fetch_timeout: float = 60.0
    temp_dir: Path | None = field(default=None, converter=_optional_path)
    font: str = "DejaVu Sans"
    font_file: Path | None = field(default=None, converter=_optional_path)
    fonts_dir: Path | None = field(default=None, converter=_optional_path)
    ffmpeg: str | None = None
    kill_grace: float = 2.0
    threads: int | None = None
    on_command: Callable[[FFmpegCommand], None] | None = None
    last_command: FFmpegCommand | None = field(default=None, init=False)
    last_command_seconds: float | None = field(default=None, init=False)
    _exe: str = field(init=False, repr=False)
    _encoding: Encoding = field(init=False, repr=False)
    _fetcher: InputFetcher = field(init=False, repr=False)
    _limiter: anyio.CapacityLimiter | None = field(default=None, init=False, repr=False)
    _operations: dict[str, _Operation] = field(factory=dict, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.reframe_mode not in ("crop", "pad"):
            raise ConfigError(f"reframe_mode must be 'crop' or 'pad', not {self.reframe_mode!r}")
        if self.short_side < 16 or self.short_side % 2:
            raise ConfigError("short_side must be an even number of pixels, at least 16")
        if not 1 <= self.fps <= 120:
            raise ConfigError("fps must be between 1 and 120")
        if self.max_processes < 1:
            raise ConfigError("max_processes must be at least 1")
        if not self.fetch_timeout > 0 or not self.kill_grace >= 0:
            raise ConfigError("fetch_timeout must be > 0 and kill_grace >= 0 seconds")
        if self.max_input_bytes < 1:
            raise ConfigError("max_input_bytes must be at least 1")
        self._exe = self.ffmpeg if self.ffmpeg is not None else ffmpeg_exe()
        self._encoding = Encoding(
            fps=self.fps, preset=self.preset, crf=self.crf, threads=self.threads
        )
        inputs = tuple(d.resolve() for d in self.input_dirs)
        scratch_root = Path(self.temp_dir or tempfile.gettempdir()).resolve()
        self._fetcher = InputFetcher(
            client=self.client,
            allowed_networks=self.allowed_networks,
            roots=(self.output_dir.resolve(), *inputs),
            max_bytes=self.max_input_bytes,
            timeout=self.fetch_timeout,
            named_roots=inputs,
            unnamed_only=(self.output_dir.resolve(),),
            scratch=((scratch_root, _SCRATCH_PREFIX),),
        )
        self._operations = {
            "generate": self._generate,
            "merge": self._merge,
            "reframe": self._reframe,
            "lipSync": self._lip_sync,
            "addSubtitles": self._add_subtitles,
        }

    @property
    def exe(self) -> str:
        """The FFmpeg binary this provider runs."""
        return self._exe

    # --- the port ------------------------------------------------------------------------------

    async def run(self, request: JobRequest) -> Video:
        """Do one attempt of one job; see the class docstring."""
        operation = self._operations.get(request.type)
        if operation is None:
            raise ProviderError(
                f"FFmpegVideoProvider cannot run {request.type!r} jobs", retryable=False
            )
        final = self.output_path(request.idempotency_key)
        await anyio.Path(final.parent).mkdir(parents=True, exist_ok=True)
        temp_root = self.temp_dir
        if temp_root is not None:
            await anyio.Path(temp_root).mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=_SCRATCH_PREFIX, dir=temp_root))
        partial = final.with_name(f".{final.name}.{secrets.token_hex(4)}.part")
        job = _Job(request, workdir, partial)
        try:
            expected = await operation(job)
            info = await self._probe(partial, "the output")
            if not info.has_video or info.width is None or info.height is None:
                raise ProviderError("FFmpeg wrote an output without a video stream")  # noqa: TRY301
            os.replace(partial, final)
        except ProviderError as exc:
            # The message is stored as the job's error and shown to the tenant: no server path
            # in it (scratch files, the output directory, the input directories).
            _hide_paths(exc, self._server_paths(workdir))
            raise
        except OSError as exc:  # a full disk, a vanished directory: worth a retry
            error = ProviderError(f"{type(exc).__name__}: {exc}")
            _hide_paths(error, self._server_paths(workdir))
            raise error from None
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            partial.unlink(missing_ok=True)
        return Video(
            url=final.as_uri(),
            duration=info.duration,
            aspect_ratio=aspect_label(info.width, info.height, expected),
            width=info.width,
            height=info.height,
        )

    def _server_paths(self, workdir: Path) -> list[tuple[str, str]]:
        """``(path, shown as)`` for each server directory an error message must not show."""
        found: list[tuple[Path, str]] = [(workdir, "<scratch>"), (self.output_dir, "<output>")]
        found += [(d, "<input dir>") for d in self.input_dirs]
        if self.temp_dir is not None:
            found.append((self.temp_dir, "<temp>"))
        pairs: dict[str, str] = {}
        for path, shown in found:
            for spelling in (str(path), str(path.resolve())):
                pairs.setdefault(spelling, shown)
        # Longest first: a scratch directory inside the temp directory is shown as <scratch>.
        return sorted(pairs.items(), key=lambda pair: len(pair[0]), reverse=True)

    def output_path(self, idempotency_key: str) -> Path:
        """Where the output of the job with this idempotency key goes."""
        parts = [_safe_name(part) for part in idempotency_key.split("/") if part]
        if not parts:
            parts = [_safe_name(idempotency_key)]
        return self.output_dir.joinpath(*parts[:-1], parts[-1] + ".mp4")

    # --- operations: each runs FFmpeg into job.partial and returns the expected aspect label ---

    async def _generate(self, job: _Job) -> str | None:
        params = job.request.params
        prompt = params.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ProviderError("generate needs a non-empty prompt", retryable=False)
        aspect = self._aspect(params.get("aspectRatio", "16:9"))
        duration = _number(params.get("duration", 5), "duration")
        if not duration > 0:
            raise ProviderError("duration must be more than 0 seconds", retryable=False)
        width, height = frame_size(aspect, self.short_side)
        lines, font_size = commands.title_layout(prompt, width, height)
        await anyio.Path(job.workdir / "title.txt").write_text("\n".join(lines), "utf-8")
        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")
        command = commands.generate_command(
            self._exe,
            self._encoding,
            output=str(job.partial),
            width=width,
            height=height,
            frames=self._frames(duration),
            title_file="title.txt",
            font_size=font_size,
            font=self.font,
            font_file=str(self.font_file) if self.font_file is not None else None,
            seed=seed,
            cwd=str(job.workdir),
        )
        await self._ffmpeg(command, "generate")
        return aspect

    async def _merge(self, job: _Job) -> str | None:
        params = job.request.params
        transition = params.get("transition", "none")
        if transition not in ("none", *commands.TRANSITIONS):
            raise ProviderError(f"unknown transition {transition!r}", retryable=False)
        sources = [
            await self._input_video(job, video.url, index)
            for index, video in enumerate(job.request.inputs)
        ]
        if not sources:
            raise ProviderError("merge needs at least one input video", retryable=False)
        overlap = 0
        if transition != "none" and len(sources) > 1:
            wanted = _number(params.get("transitionDuration", 1.0), "transitionDuration")
            shortest = min(commands.frames_of(s, self.fps) for s in sources)
            overlap = max(1, min(self._frames(wanted), shortest - 1))
            if shortest < 2:
                transition = "none"  # a one-frame clip cannot overlap anything
        command = commands.merge_command(
            self._exe,
            self._encoding,
            output=str(job.partial),
            inputs=sources,
            transition=_transition(transition),
            overlap_frames=overlap,
            cwd=str(job.workdir),
        )
        await self._ffmpeg(command, "merge")
        return job.request.inputs[0].aspect_ratio

    async def _reframe(self, job: _Job) -> str | None:
        aspect = self._aspect(job.request.params.get("aspectRatio"))
        source = await self._single_input(job)
        width, height = frame_size(aspect, self.short_side)
        command = commands.reframe_command(
            self._exe,
            self._encoding,
            output=str(job.partial),
            source=source,
            width=width,
            height=height,
            mode=self.reframe_mode,
            cwd=str(job.workdir),
        )
        await self._ffmpeg(command, "reframe")
        return aspect

    async def _lip_sync(self, job: _Job) -> str | None:
        source = await self._single_input(job)
        url = job.request.params.get("audioUrl")
        if not isinstance(url, str):
            raise ProviderError("lipSync needs an audioUrl", retryable=False)
        audio = await self._fetcher.local_path(url, "audioUrl", job.workdir, "audio", named=True)
        sound = await self._probe(audio, "audioUrl")
        if not sound.has_audio:
            raise InvalidMedia("audioUrl: the file holds no audio stream")
        command = commands.lip_sync_command(
            self._exe,
            self._encoding,
            output=str(job.partial),
            source=source,
            audio=str(audio),
            cwd=str(job.workdir),
        )
        await self._ffmpeg(command, "lipSync")
        return job.request.inputs[0].aspect_ratio

    async def _add_subtitles(self, job: _Job) -> str | None:
        params = job.request.params
        cues: list[Cue]
        markup = False
        if params.get("cues"):
            cues = cues_from_params(params["cues"])
        elif params.get("srtUrl"):
            srt = await self._fetcher.local_path(
                params["srtUrl"], "srtUrl", job.workdir, "subtitles", named=True
            )
            data = await anyio.Path(srt).read_bytes()
            try:
                cues = parse_srt(data)
            except ProviderError as exc:
                raise ProviderError(f"srtUrl: {exc.message}", retryable=False) from None
            markup = True
        else:
            raise ProviderError(
                "addSubtitles needs cues or srtUrl: this offline FFmpeg provider cannot "
                "transcribe speech; use a transcription provider to make subtitles from audio",
                retryable=False,
            )
        source = await self._single_input(job)
        if source.width is None or source.height is None:
            raise InvalidMedia("inputs[0] has no frame size")
        script = to_ass(
            cues, width=source.width, height=source.height, font=self.font, markup=markup
        )
        await anyio.Path(job.workdir / "subtitles.ass").write_text(script, "utf-8")
        command = commands.subtitles_command(
            self._exe,
            self._encoding,
            output=str(job.partial),
            source=source,
            subtitles_file="subtitles.ass",
            fonts_dir=str(self.fonts_dir) if self.fonts_dir is not None else None,
            cwd=str(job.workdir),
        )
        await self._ffmpeg(command, "addSubtitles")
        return job.request.inputs[0].aspect_ratio

    # --- helpers ---------------------------------------------------------------------------------

    def _frames(self, seconds: float) -> int:
        """Whole frames nearest to ``seconds`` (halves round up), at least one."""
        return max(1, math.floor(seconds * self.fps + 0.5))

    def _aspect(self, value: Any) -> str:
        try:
            width, height = parse_aspect_ratio(value)
        except ValueError as exc:
            raise ProviderError(f"aspectRatio: {exc}", retryable=False) from None
        aspect = f"{width}:{height}"
        if max(frame_size(aspect, self.short_side)) > MAX_FRAME_SIDE:
            raise ProviderError(
                f"aspectRatio {aspect} would make a frame over {MAX_FRAME_SIDE} pixels long",
                retryable=False,
            )
        return aspect

    async def _single_input(self, job: _Job) -> MediaInfo:
        inputs = job.request.inputs
        if len(inputs) != 1:
            raise ProviderError(
                f"{job.request.type} takes exactly one input video, got {len(inputs)}",
                retryable=False,
            )
        return await self._input_video(job, inputs[0].url, 0)

    async def _input_video(self, job: _Job, url: str, index: int) -> MediaInfo:
        what = f"inputs[{index}]"
        path = await self._fetcher.local_path(url, what, job.workdir, f"input-{index}")
        info = await self._probe(path, what)
        if not info.has_video or info.width is None or info.height is None:
            raise InvalidMedia(f"{what}: the file holds no video stream")
        return info

    async def _probe(self, path: Path, what: str) -> MediaInfo:
        try:
            return await probe(path, ffmpeg=self._exe, limiter=self._limiter_())
        except InvalidMedia as exc:
            raise InvalidMedia(f"{what}: {exc.message}") from None

    async def _ffmpeg(self, command: FFmpegCommand, what: str) -> None:
        self.last_command = command
        self.last_command_seconds = None
        if self.on_command is not None:
            self.on_command(command)
        async with self._limiter_():
            started = time.perf_counter()
            await run_ffmpeg(command, what=f"FFmpeg ({what})", kill_grace=self.kill_grace)
            self.last_command_seconds = time.perf_counter() - started

    def _limiter_(self) -> anyio.CapacityLimiter:
        # Made on first use, inside the event loop that uses it.
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.max_processes)
        return self._limiter


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProviderError(f"{name} must be a number of seconds", retryable=False)
    return float(value)


def _transition(value: str) -> Transition:
    if value == "crossfade":
        return "crossfade"
    if value == "fade":
        return "fade"
    return "none"


def _safe_name(part: str) -> str:
    """``part`` as one file name: unsafe characters replaced, never ``.``/``..``/hidden; a short
    hash is added when anything was changed, so distinct keys stay distinct."""
    cleaned = _SAFE.sub("_", part)
    if cleaned == part and not part.startswith(".") and part:
        return part
    digest = hashlib.sha256(part.encode()).hexdigest()[:8]
    return f"{cleaned.lstrip('.') or 'job'}-{digest}"


def _hide_paths(exc: ProviderError, paths: Sequence[tuple[str, str]]) -> None:
    """Rewrite ``exc``'s message (and FFmpeg's stderr it carries) with each server path shown as
    its placeholder. Paths are long absolute names, so this never touches unrelated text."""

    def hidden(text: str) -> str:
        for path, shown in paths:
            if len(path) > 1:
                text = text.replace(path, shown)
        return text

    exc.message = hidden(exc.message)
    exc.args = (exc.message, *exc.args[1:])
    if isinstance(exc, FFmpegFailed):
        exc.stderr = hidden(exc.stderr)

"""Keep hosted models' results: each job's video is copied into the server's own storage before
the job counts as completed, and hosted models are handed fetchable links to their inputs.

Hosted model APIs answer with output URLs that do not last (Replicate deletes a prediction's
output files about an hour after it ends; fal's CDN URLs are not promised to last either), while
an execution's result is read for days and its variants may run much later. So:

- **Outputs.** When the wrapped provider returns a video at an ``http(s)`` URL,
  :class:`KeepingProvider` downloads it into ``output_dir/{execution id}/{job id}-{attempt}{ext}``
  (written to a ``.part`` file, then renamed: a reader never sees half a file), through the SSRF
  guard of :mod:`adapters.net` (``allowed_networks`` as for webhooks; every redirect checked; at
  most ``max_bytes``), reads the file's duration, width and height (the file's own, not what
  the model's answer said) and returns the local ``file://`` video. The HTTP API shows it as a
  signed link (:mod:`contrib.results`); :class:`contrib.s3.S3UploadingProvider`, wrapped around
  this one, uploads it.
- **A failed download** is tried again ``download_attempts`` times with backoff. If it still
  fails, the attempt fails retryable, and the remote URL is remembered (by idempotency key, in
  this process, for the last 1,024 jobs) so that the job's next attempt fetches it again
  instead of running the model again, which would be paid twice.
- **Inputs.** A job's input videos that are local (a ``file://`` under ``output_dir``, or an
  ``s3://`` URL of the results bucket) are rewritten with ``links`` (a
  :class:`contrib.results.ResultLinks`) to URLs a hosted model can fetch (signed, expiring
  after ``input_ttl``), since a model on fal or Replicate cannot read this server's disk.
  Without ``links`` such an input fails the job, saying so.

Other URLs pass through untouched: a ``file://`` video (a local provider's) is already kept.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import httpx
from attrs import evolve

from adapters.ffmpeg.fetch import InputFetcher
from adapters.ffmpeg.probe import InvalidMedia, aspect_label, probe
from adapters.net import exponential, parse_networks
from contrib.results import ResultLinks
from engine.clock import Clock, SystemClock
from engine.errors import ConfigError, ProviderError
from engine.models import JobRequest, Video
from engine.ports import VideoProvider

__all__ = ["KeepingProvider"]

#: The most a kept result may weigh, by default (a few minutes of 4K video).
DEFAULT_MAX_BYTES = 4 << 30
_REMEMBERED = 1024
_SUFFIXES = frozenset({".mp4", ".mov", ".webm", ".mkv", ".m4v"})


class KeepingProvider:
    """Wraps ``inner`` (a hosted model's provider); see the module docstring."""

    def __init__(
        self,
        inner: VideoProvider,
        output_dir: str | os.PathLike[str],
        *,
        links: ResultLinks | None = None,
        client: httpx.AsyncClient | None = None,
        allowed_networks: tuple[str, ...] | list[str] = (),
        max_bytes: int = DEFAULT_MAX_BYTES,
        timeout: float = 600.0,
        download_attempts: int = 3,
        input_ttl: float = 6 * 3600.0,
        clock: Clock | None = None,
    ) -> None:
        if max_bytes < 1:
            raise ConfigError(f"max_bytes must be positive, got {max_bytes!r}")
        if download_attempts < 1:
            raise ConfigError(f"download_attempts must be at least 1, got {download_attempts!r}")
        self.inner = inner
        self.output_dir = Path(output_dir).resolve()
        self.links = links
        self.input_ttl = input_ttl
        self.download_attempts = download_attempts
        self.clock: Clock = SystemClock() if clock is None else clock
        self._fetcher = InputFetcher(
            client=client,
            allowed_networks=parse_networks(list(allowed_networks)),
            roots=(self.output_dir,),
            max_bytes=max_bytes,
            timeout=timeout,
        )
        #: Remote results whose download failed, by idempotency key: the next attempt's source.
        self._unfetched: OrderedDict[str, Video] = OrderedDict()

    async def run(self, request: JobRequest) -> Video:
        remote = self._unfetched.get(request.idempotency_key)
        if remote is None:
            remote = await self.inner.run(await self._fetchable_inputs(request))
        if urlsplit(remote.url).scheme.lower() not in ("http", "https"):
            return remote
        try:
            kept = await self._keep(remote, request)
        except ProviderError as exc:
            if exc.retryable:
                self._remember(request.idempotency_key, remote)
            raise
        self._unfetched.pop(request.idempotency_key, None)
        return kept

    # --- inputs -----------------------------------------------------------------------------------

    async def _fetchable_inputs(self, request: JobRequest) -> JobRequest:
        inputs = []
        changed = False
        for index, video in enumerate(request.inputs):
            scheme = urlsplit(video.url).scheme.lower()
            if scheme not in ("file", "s3"):
                inputs.append(video)
                continue
            url = None
            if self.links is not None:
                url = await self.links.fetchable(
                    video.url, request.execution_id, base_url=None, ttl=self.input_ttl
                )
            if url is None:
                raise ProviderError(
                    f"input video {index + 1} of {request.job_id} is stored on this server and a "
                    "hosted model cannot fetch it: give KeepingProvider the server's result "
                    "links (links=ResultLinks(root=output_dir, public_url=...))",
                    retryable=False,
                )
            inputs.append(evolve(video, url=url))
            changed = True
        return evolve(request, inputs=tuple(inputs)) if changed else request

    # --- outputs ----------------------------------------------------------------------------------

    async def _keep(self, remote: Video, request: JobRequest) -> Video:
        directory = self.output_dir / request.execution_id
        if not directory.resolve().is_relative_to(self.output_dir):
            raise ProviderError(f"execution id {request.execution_id!r} is not a directory name")
        await anyio.Path(directory).mkdir(parents=True, exist_ok=True)
        suffix = Path(urlsplit(remote.url).path).suffix.lower()
        suffix = suffix if suffix in _SUFFIXES else ".mp4"
        stem = f"{request.job_id}-{request.attempt}"
        target = directory / f"{stem}{suffix}"
        partial = await self._download(remote.url, directory, f".{stem}.part")
        width: int
        height: int
        try:
            try:
                info = await probe(partial)
            except InvalidMedia as exc:
                raise ProviderError(
                    f"the model's result for {request.job_id} is not a video FFmpeg can read: "
                    f"{exc}",
                    retryable=False,
                ) from None
            if not info.has_video or info.width is None or info.height is None:
                raise ProviderError(
                    f"the model's result for {request.job_id} has no video track",
                    retryable=False,
                )
            width, height = info.width, info.height
            await anyio.Path(partial).rename(target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                await anyio.Path(partial).unlink()
        return Video(
            url=target.as_uri(),
            duration=info.duration,
            aspect_ratio=aspect_label(width, height, remote.aspect_ratio),
            width=width,
            height=height,
        )

    async def _download(self, url: str, directory: Path, stem: str) -> Path:
        """The remote file saved under ``directory``, tried ``download_attempts`` times."""
        for attempt in range(1, self.download_attempts + 1):
            try:
                return await self._fetcher.local_path(url, "result", directory, stem)
            except ProviderError as exc:
                if not exc.retryable or attempt == self.download_attempts:
                    raise ProviderError(
                        f"could not keep the model's result: {exc}", retryable=exc.retryable
                    ) from None
            await self.clock.sleep_until(
                self.clock.now() + exponential(attempt - 1, base=0.5, cap=10.0)
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _remember(self, key: str, remote: Video) -> None:
        self._unfetched[key] = remote
        self._unfetched.move_to_end(key)
        while len(self._unfetched) > _REMEMBERED:
            self._unfetched.popitem(last=False)

"""Results in an S3-compatible object store (``--s3-bucket``; needs the ``s3`` extra: boto3).

- :class:`S3Store`: one bucket (and key prefix) reached with boto3; region and credentials come
  from where boto3 reads them (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_DEFAULT_REGION``, ``~/.aws``, an instance role...), ``endpoint_url`` points it at
  another S3-protocol server (MinIO, Ceph, R2, a test server).
- :class:`S3UploadingProvider`: wraps a provider that writes files (the FFmpeg provider): after
  each job it uploads the output to ``s3://bucket/{prefix}{path under output_dir}`` and returns
  that URL. Inputs that are ``s3://`` URLs of the bucket are read from the local copy when this
  host has it and downloaded into ``output_dir`` first when it does not, so a merge on one host
  can take clips made on others. Local files are kept (remove old ones as you see fit).
- The HTTP layer (:class:`contrib.results.ResultLinks` with ``s3=``) shows those URLs as
  presigned ``GET`` URLs, each lasting as long as a result link would.

boto3 is synchronous: every call runs in a worker thread.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit
from urllib.request import url2pathname

import anyio.to_thread
from attrs import evolve

from engine.errors import ConfigError, ProviderError
from engine.models import JobRequest, Video
from engine.ports import VideoProvider

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["S3Store", "S3UploadingProvider"]


def _boto3() -> Any:
    try:
        import boto3
    except ImportError as exc:
        raise ConfigError(
            f"S3 results need boto3: pip install 'videoflow-engine[s3]' ({exc})"
        ) from exc
    return boto3


def _errors() -> tuple[type[Exception], ...]:
    """What boto3 raises when a transfer fails (and the file system, on our side)."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, Boto3Error, OSError)


class S3Store:
    """One bucket of an S3-compatible store; ``client`` (a boto3 S3 client) is made from the
    environment when not given."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        client: S3Client | None = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise ConfigError(f"--s3-bucket must be a bucket name, got {bucket!r}")
        if prefix.startswith("/"):
            raise ConfigError("the S3 key prefix must not start with '/'")
        self.bucket = bucket
        self.prefix = prefix
        if client is None:
            client = _boto3().client("s3", endpoint_url=endpoint_url, region_name=region)
        self.client: S3Client = client

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{quote(key, safe='/')}"

    def key_of(self, url: str) -> str | None:
        """The key of an ``s3://`` URL of this bucket and prefix, else ``None``."""
        parts = urlsplit(url)
        if parts.scheme.lower() != "s3" or parts.netloc != self.bucket:
            return None
        key = unquote(parts.path.lstrip("/"))
        return key if key.startswith(self.prefix) and key != self.prefix else None

    def owns(self, url: str) -> bool:
        return self.key_of(url) is not None

    async def upload(self, path: Path, key: str) -> str:
        """Put the file at ``path`` under ``key`` (multipart when large); its ``s3://`` URL."""
        content_type = "video/mp4" if path.suffix.lower() == ".mp4" else "application/octet-stream"
        await anyio.to_thread.run_sync(
            lambda: self.client.upload_file(
                str(path), self.bucket, key, ExtraArgs={"ContentType": content_type}
            )
        )
        return self.url(key)

    async def download(self, key: str, path: Path) -> None:
        """Get ``key`` into ``path`` (written beside it, then renamed into place)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.s3.part")
        try:
            await anyio.to_thread.run_sync(
                lambda: self.client.download_file(self.bucket, key, str(partial))
            )
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)

    async def presign(self, url: str, ttl: float) -> str | None:
        """A presigned ``GET`` URL for an ``s3://`` URL of this bucket, lasting ``ttl`` seconds
        (S3 caps it at 7 days)."""
        key = self.key_of(url)
        if key is None:
            return None
        expires = max(1, min(int(ttl), 7 * 24 * 3600))
        presigned: str = await anyio.to_thread.run_sync(
            lambda: self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires
            )
        )
        return presigned


class S3UploadingProvider:
    """``inner`` (writing under ``output_dir``) with its outputs uploaded to ``store``."""

    def __init__(self, inner: VideoProvider, store: S3Store, *, output_dir: str | Path) -> None:
        self.inner = inner
        self.store = store
        self.output_dir = Path(output_dir).resolve()

    async def run(self, request: JobRequest) -> Video:
        inputs = tuple([await self._local(video) for video in request.inputs])
        video = await self.inner.run(evolve(request, inputs=inputs))
        path = self._path_of(video.url)
        if path is None:
            return video  # not a file of ours (an http(s) result, say): shown as it is
        key = self.store.prefix + path.relative_to(self.output_dir).as_posix()
        try:
            url = await self.store.upload(path, key)
        except _errors() as exc:  # a failed upload is retried, as any transient failure
            raise ProviderError(
                f"uploading {path.name} to s3://{self.store.bucket} failed: {exc}", retryable=True
            ) from exc
        return evolve(video, url=url)

    async def _local(self, video: Video) -> Video:
        """An input as the inner provider reads it: a ``file://`` URL for our ``s3://`` ones."""
        key = self.store.key_of(video.url)
        if key is None:
            return video
        relative = key[len(self.store.prefix) :]
        path = self.output_dir.joinpath(
            *[p for p in relative.split("/") if p not in ("", ".", "..")]
        )
        if not path.is_file():
            try:
                await self.store.download(key, path)
            except _errors() as exc:
                raise ProviderError(
                    f"downloading input {video.url} failed: {exc}", retryable=True
                ) from exc
        return evolve(video, url=path.as_uri())

    def _path_of(self, url: str) -> Path | None:
        parts = urlsplit(url)
        if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
            return None
        path = Path(url2pathname(parts.path)).resolve()
        return path if path.is_relative_to(self.output_dir) and path.is_file() else None

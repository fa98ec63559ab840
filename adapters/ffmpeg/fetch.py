"""Turn an input URL (``file://`` or ``http(s)://``) into a local file, safely.

- ``file://`` URLs are read in place, and only inside the directories the provider allows: a plan
  from an HTTP client must not be able to burn ``/etc/...`` into a video as subtitles. A URL a
  plan *names* (``audioUrl``, ``srtUrl``: ``named=True``) is read only under ``input_dirs``, and
  never under the provider's output directory or its scratch directories, even when an input dir
  contains them: one execution's outputs reach another only as the engine's own inputs (its
  ``dependsOn`` and base, ``JobRequest.inputs``), never by a path a tenant writes. Inputs
  (``named=False``) are also read from the output directory. Symlinks are resolved first, so a
  link inside an allowed directory that points outside it is refused.
- ``http(s)://`` URLs are downloaded into the job's temporary directory, behind the same SSRF
  guard as webhooks (:func:`adapters.net.send_checked`): every address the host stands for must be
  public or inside ``allowed_networks``, and the request goes to the address that was checked.
  Redirects are followed by hand (each hop checked), at most :data:`MAX_REDIRECTS`. The body is
  capped at ``max_bytes``; the whole download at ``timeout`` seconds.

Failures are :class:`~engine.ProviderError`: not retryable when the input is at fault (refused,
missing, too big, 4xx), retryable when the network is (timeouts, connection errors, 5xx, 429).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import anyio
import httpx
from attrs import define

from adapters.net import DestinationRefused, Network, send_checked
from engine.errors import ProviderError

__all__ = ["MAX_REDIRECTS", "InputFetcher", "file_url_path"]

MAX_REDIRECTS = 5
_CHUNK = 1 << 16


def file_url_path(url: str) -> Path:
    """The local path a ``file://`` URL names (host empty or ``localhost``)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
        raise ValueError(f"not a local file:// URL: {url!r}")
    return Path(url2pathname(unquote(parts.path)))


@define
class InputFetcher:
    """Resolves input URLs for one provider; see the module docstring for the rules."""

    client: httpx.AsyncClient | None
    allowed_networks: tuple[Network, ...]
    #: Where inputs (``named=False``) may be read: the output directory and the input dirs.
    roots: tuple[Path, ...]
    max_bytes: int
    timeout: float
    #: Where named URLs (``named=True``) may be read; ``None``: the same as ``roots``.
    named_roots: tuple[Path, ...] | None = None
    #: Never read by a named URL, even inside ``named_roots`` (the output directory).
    unnamed_only: tuple[Path, ...] = ()
    #: ``(directory, prefix)``: scratch directories (``directory/prefix*``) no named URL reads.
    scratch: tuple[tuple[Path, str], ...] = ()

    async def local_path(
        self, url: object, field: str, workdir: Path, stem: str, *, named: bool = False
    ) -> Path:
        """A local file holding what ``url`` points at (``field`` names it in errors).

        ``named``: the URL was written in a plan (a parameter), not handed over by the engine as
        an input; see the module docstring for what it may read."""
        if not isinstance(url, str):
            raise ProviderError(f"{field} must be a URL string", retryable=False)
        try:
            scheme = urlsplit(url).scheme.lower()
        except ValueError:
            raise ProviderError(f"{field} is not a valid URL", retryable=False) from None
        if scheme == "file":
            return await self._local_file(url, field, named=named)
        if scheme in ("http", "https"):
            target = workdir / (stem + _suffix(url))
            await self._download(url, field, target)
            return target
        raise ProviderError(
            f"{field} must be a file:// or http(s):// URL, got {scheme or 'no'!r} scheme",
            retryable=False,
        )

    async def _local_file(self, url: str, field: str, *, named: bool) -> Path:
        # Messages name the field and the reason, never a server path (not even the allowed
        # directories): a tenant learns nothing of the server's file system from them.
        try:
            path = file_url_path(url)
        except ValueError:
            raise ProviderError(
                f"{field}: not a local file:// URL (its host must be empty or localhost)",
                retryable=False,
            ) from None
        if not path.is_absolute():
            raise ProviderError(f"{field}: file:// URL path must be absolute", retryable=False)
        try:
            resolved = Path(await anyio.to_thread.run_sync(lambda: path.resolve()))
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
            raise ProviderError(
                f"{field}: the file:// URL names no readable file", retryable=False
            ) from None
        if not self._readable(resolved, named=named):
            raise ProviderError(
                f"{field}: the file:// URL is outside the directories this provider reads; "
                + (
                    "a plan may name local files only under the input directories (input_dirs), "
                    "and another job's output only through dependsOn or the base execution"
                    if named
                    else "list its directory in input_dirs to permit it"
                ),
                retryable=False,
            )
        if not await anyio.Path(resolved).is_file():
            raise ProviderError(f"{field}: input file does not exist", retryable=False)
        return resolved

    def _readable(self, resolved: Path, *, named: bool) -> bool:
        if not named:
            return any(resolved.is_relative_to(root) for root in self.roots)
        roots = self.roots if self.named_roots is None else self.named_roots
        if not any(resolved.is_relative_to(root) for root in roots):
            return False
        if any(resolved.is_relative_to(out) for out in self.unnamed_only):
            return False
        for directory, prefix in self.scratch:
            if resolved.is_relative_to(directory):
                parts = resolved.relative_to(directory).parts
                if parts and parts[0].startswith(prefix):
                    return False
        return True

    async def _download(self, url: str, field: str, target: Path) -> None:
        try:
            with anyio.fail_after(self.timeout):
                async with self._client() as client:
                    await self._follow(client, url, field, target)
        except DestinationRefused as exc:
            raise ProviderError(f"{field}: {exc}", retryable=False) from None
        except TimeoutError:
            raise ProviderError(
                f"{field}: download of {_shown(url)} timed out after {self.timeout:g}s"
            ) from None
        except httpx.TimeoutException:
            raise ProviderError(f"{field}: download of {_shown(url)} timed out") from None
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            raise ProviderError(
                f"{field}: download of {_shown(url)} failed: {type(exc).__name__}: {exc}"
            ) from None

    async def _follow(self, client: httpx.AsyncClient, url: str, field: str, target: Path) -> None:
        current = httpx.URL(url)
        for _hop in range(MAX_REDIRECTS + 1):
            async with send_checked(
                client, "GET", current, allowed_networks=self.allowed_networks
            ) as response:
                status = response.status_code
                location = response.headers.get("Location")
                if 300 <= status < 400 and location:
                    current = current.join(location)
                    continue
                if not 200 <= status < 300:
                    retryable = status >= 500 or status in (408, 425, 429)
                    raise ProviderError(
                        f"{field}: GET {_shown(url)} answered HTTP {status}", retryable=retryable
                    )
                await self._save(response, field, url, target)
                return
        raise ProviderError(f"{field}: more than {MAX_REDIRECTS} redirects", retryable=False)

    async def _save(self, response: httpx.Response, field: str, url: str, target: Path) -> None:
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise ProviderError(_too_big(field, url, self.max_bytes), retryable=False)
        received = 0
        async with await anyio.open_file(target, "wb") as out:
            async for chunk in response.aiter_bytes(_CHUNK):
                received += len(chunk)
                if received > self.max_bytes:
                    raise ProviderError(_too_big(field, url, self.max_bytes), retryable=False)
                await out.write(chunk)

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[httpx.AsyncClient]:
        if self.client is not None:
            yield self.client
            return
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False) as client:
            yield client


def _too_big(field: str, url: str, limit: int) -> str:
    return f"{field}: {_shown(url)} is larger than the {limit:,}-byte input limit"


def _shown(url: str) -> str:
    """``url`` without credentials or query string (which may hold a signature)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid URL>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _suffix(url: str) -> str:
    suffix = Path(urlsplit(url).path).suffix.lower()
    return suffix if suffix.isascii() and 1 < len(suffix) <= 6 and suffix[1:].isalnum() else ""

"""Turn an input URL (``file://`` or ``http(s)://``) into a local file, safely.

- ``file://`` URLs are read in place, and only inside the directories the provider allows (its
  output directory and ``input_dirs``): a plan from an HTTP client must not be able to burn
  ``/etc/...`` into a video as subtitles.
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
    roots: tuple[Path, ...]
    max_bytes: int
    timeout: float

    async def local_path(self, url: object, field: str, workdir: Path, stem: str) -> Path:
        """A local file holding what ``url`` points at (``field`` names it in errors)."""
        if not isinstance(url, str):
            raise ProviderError(f"{field} must be a URL string", retryable=False)
        scheme = urlsplit(url).scheme.lower()
        if scheme == "file":
            return await self._local_file(url, field)
        if scheme in ("http", "https"):
            target = workdir / (stem + _suffix(url))
            await self._download(url, field, target)
            return target
        raise ProviderError(
            f"{field} must be a file:// or http(s):// URL, got {scheme or 'no'!r} scheme",
            retryable=False,
        )

    async def _local_file(self, url: str, field: str) -> Path:
        try:
            path = file_url_path(url)
        except ValueError as exc:
            raise ProviderError(f"{field}: {exc}", retryable=False) from None
        if not path.is_absolute():
            raise ProviderError(f"{field}: file:// URL path must be absolute", retryable=False)
        resolved = Path(await anyio.to_thread.run_sync(lambda: path.resolve()))
        if not any(resolved.is_relative_to(root) for root in self.roots):
            shown = ", ".join(str(r) for r in self.roots)
            raise ProviderError(
                f"{field}: {path} is outside the directories this provider reads ({shown}); "
                "list its directory in input_dirs to permit it",
                retryable=False,
            )
        if not await anyio.Path(resolved).is_file():
            raise ProviderError(f"{field}: input file {path} does not exist", retryable=False)
        return resolved

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

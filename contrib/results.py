"""Result links: the URLs the HTTP API shows for videos, and the route that serves them.

The engine stores a video's URL as its provider returned it (``file://`` for FFmpeg, ``s3://``
once :mod:`contrib.s3` has uploaded it, ``https://`` for a hosted model). The HTTP layer rewrites
it each time it shows it (status bodies, the execution view and its jobs, webhook payloads):

- ``file://`` under the served directory (the provider's output directory) becomes a signed
  link served by the API itself, fetched without the API key::

      {base}/results/{path under the directory}?execution={id}&expires={unix s}&sig={hmac}

  ``sig`` is the base64url HMAC-SHA256, keyed by the server's result secret, of the execution
  id, the path and the expiry, so a link is good for that one file of that one execution until
  it expires: changing any part is ``403``, a link past its expiry is ``410``. Links last
  ``ttl`` seconds when read from the API (default 24 h) and ``webhook_ttl`` in webhook payloads
  (default 7 days, since a webhook can be retried for a day and a half and read later).
- ``s3://bucket/key`` of the configured bucket becomes a presigned ``GET`` URL, same lifetimes.
- ``http(s)://`` URLs pass through, and so do other schemes that name no place on the server
  (``fake://`` of the fake provider).
- Anything else (a ``file://`` outside the served directory, an ``s3://`` URL of another
  bucket) is never shown: the ``url`` is ``null`` and the server logs why once. No server path
  ever leaves the server.

Without a configured secret a random one is made per process: links then stop working when the
server restarts (a client reads the status again for a fresh one). Several API nodes, and
workers that send webhooks, must share one secret (``--result-secret`` or
``VIDEOFLOW_RESULT_SECRET``) and see the same files.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit
from urllib.request import url2pathname

import anyio
from attrs import evolve

from contrib.files import send_file
from contrib.problems import (
    INTERNAL,
    LINK_EXPIRED,
    LINK_REFUSED,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    HttpProblem,
)
from contrib.types import Headers, Message, Scope, Send
from engine.clock import Clock, SystemClock
from engine.errors import ConfigError
from engine.models import Notification
from engine.ports import AttemptRecorder, Notifier

if TYPE_CHECKING:
    from contrib.s3 import S3Store

__all__ = [
    "DEFAULT_TTL",
    "DEFAULT_WEBHOOK_TTL",
    "PREFIX",
    "ResultLinkNotifier",
    "ResultLinks",
    "link_path",
]

log = logging.getLogger("contrib.results")

#: Seconds a link read from the API lasts: 24 hours.
DEFAULT_TTL = 24 * 3600.0
#: Seconds a link in a webhook payload lasts: 7 days.
DEFAULT_WEBHOOK_TTL = 7 * 24 * 3600.0
#: Where the links live.
PREFIX = "/results/"


_VERSION = b"videoflow-result-v1"
_SIG = re.compile(r"[A-Za-z0-9_-]{43}")
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")
#: Schemes that name a place on the server; never shown unless made into a link.
_LOCAL_SCHEMES = frozenset({"file", "s3"})


class ResultLinks:
    """Signs, checks and serves result links; see the module docstring.

    ``root``: the directory whose files may be served (the FFmpeg provider's output directory),
    or ``None`` to serve none. ``secret``: the HMAC key (text or bytes; ``None``: random, for
    this process only). ``public_url``: the server's address as clients reach it (such as
    ``https://videos.example.com``); when ``None`` a link read from the API is built from the
    request (its scheme and ``Host``), and webhooks use :attr:`server_url`, waiting until it is
    set (``contrib.serve`` sets it to its own ``http://host:port`` once it listens). ``s3``: the
    store whose ``s3://`` URLs are presigned.
    ``clock``: when links expire (tests pass a manual one).
    """

    def __init__(
        self,
        *,
        root: str | Path | None = None,
        secret: str | bytes | None = None,
        ttl: float = DEFAULT_TTL,
        webhook_ttl: float = DEFAULT_WEBHOOK_TTL,
        public_url: str | None = None,
        s3: S3Store | None = None,
        clock: Clock | None = None,
    ) -> None:
        for name, value in (("ttl", ttl), ("webhook_ttl", webhook_ttl)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 1):
                raise ConfigError(f"{name} must be at least 1 second, got {value!r}")
        if isinstance(secret, str):
            secret = secret.encode()
        if secret is not None and len(secret) < 16:
            raise ConfigError("the result secret must be at least 16 bytes long")
        self.ephemeral = secret is None
        self._secret = secrets.token_bytes(32) if secret is None else secret
        self.root = None if root is None else Path(root).resolve()
        self.ttl = float(ttl)
        self.webhook_ttl = float(webhook_ttl)
        self._server_url_set: anyio.Event | None = None
        self._server_url: str | None = None
        self._public_url: str | None = None
        self.public_url = public_url
        self.s3 = s3
        self.clock: Clock = SystemClock() if clock is None else clock
        self._warned: set[str] = set()

    @classmethod
    def for_provider(cls, provider: object, **options: Any) -> ResultLinks:
        """Links over ``provider``'s ``output_dir`` (the FFmpeg provider's), if it has one."""
        root = getattr(provider, "output_dir", None)
        return cls(root=root if isinstance(root, str | Path) else None, **options)

    # --- signing ----------------------------------------------------------------------------------

    def signature(self, execution_id: str, path: str, expires: int) -> str:
        """The ``sig`` of a link: base64url HMAC-SHA256 over the version, id, path and expiry."""
        message = b"\n".join(
            (_VERSION, execution_id.encode(), path.encode(), str(expires).encode())
        )
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def link(self, execution_id: str, path: str, *, base_url: str, ttl: float) -> str:
        """A signed link to ``path`` (relative to :attr:`root`, ``/``-separated)."""
        expires = math.ceil(self.clock.now() + ttl)
        query = (
            f"execution={quote(execution_id, safe='')}&expires={expires}"
            f"&sig={self.signature(execution_id, path, expires)}"
        )
        return f"{base_url}{PREFIX}{quote(path, safe='/')}?{query}"

    # --- rewriting --------------------------------------------------------------------------------

    async def fetchable(
        self, url: str, execution_id: str, *, base_url: str | None, ttl: float
    ) -> str | None:
        """What a client is shown for a stored video URL (``None``: nothing it may see)."""
        scheme = urlsplit(url).scheme.lower()
        if scheme not in _LOCAL_SCHEMES:
            return url
        if scheme == "s3":
            if self.s3 is not None and self.s3.owns(url):
                return await self.s3.presign(url, ttl)
            self._warn_once("s3", f"s3:// URLs of other buckets than {self._bucket()} are hidden")
            return None
        path = self._relative(url)
        if path is None:
            self._warn_once(
                "file", f"file:// URLs outside {self.root or '(no directory)'} are hidden"
            )
            return None
        if base_url is None:
            base_url = self.public_url or await self._wait_server_url()
        return self.link(execution_id, path, base_url=base_url, ttl=ttl)

    async def video(
        self, video: Any, execution_id: str, *, base_url: str | None, ttl: float
    ) -> Any:
        """``video`` (a JSON object with a ``url``, or anything else) with its URL rewritten."""
        if not isinstance(video, Mapping) or not isinstance(video.get("url"), str):
            return video
        url = await self.fetchable(video["url"], execution_id, base_url=base_url, ttl=ttl)
        return {**video, "url": url}

    async def status_body(
        self, body: Mapping[str, Any], execution_id: str, *, base_url: str
    ) -> dict[str, Any]:
        """A status body (``GET .../status``) with fetchable URLs."""
        result = await self.video(body.get("result"), execution_id, base_url=base_url, ttl=self.ttl)
        return {**body, "result": result}

    async def execution_body(self, body: Mapping[str, Any], *, base_url: str) -> dict[str, Any]:
        """The execution view (``GET /api/execute/{id}``) with fetchable URLs, its jobs' too."""
        execution_id = str(body.get("id", ""))
        out = dict(body)
        out["result"] = await self.video(
            body.get("result"), execution_id, base_url=base_url, ttl=self.ttl
        )
        jobs = body.get("jobs")
        if isinstance(jobs, Sequence):
            out["jobs"] = [
                {
                    **job,
                    "result": await self.video(
                        job.get("result"), execution_id, base_url=base_url, ttl=self.ttl
                    ),
                }
                if isinstance(job, Mapping) and "result" in job
                else job
                for job in jobs
            ]
        return out

    async def payload(self, payload: Mapping[str, Any], execution_id: str) -> dict[str, Any]:
        """A webhook payload with fetchable URLs (lasting :attr:`webhook_ttl`)."""
        out = dict(payload)
        if "video" in payload:
            out["video"] = await self.video(
                payload["video"], execution_id, base_url=self.public_url, ttl=self.webhook_ttl
            )
        return out

    def base_url_of(self, scope: Scope, headers: Mapping[bytes, bytes]) -> str:
        """Where links point for this request: :attr:`public_url`, or the request's own origin."""
        if self.public_url is not None:
            return self.public_url
        scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
        host = headers.get(b"host", b"").decode("latin-1")
        if not _HOST.fullmatch(host):
            server = scope.get("server") or ("127.0.0.1", 80)
            name = f"[{server[0]}]" if ":" in str(server[0]) else str(server[0])
            host = f"{name}:{server[1]}"
        return f"{scheme}://{host}{scope.get('root_path', '')}"

    # --- serving ----------------------------------------------------------------------------------

    async def serve(self, scope: Scope, send: Send, path: bytes) -> int:
        """Answer ``GET``/``HEAD`` ``/results/...`` (``path``: the raw path after the prefix);
        returns the status sent."""
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            return await self._serve(scope, tracking, path)
        except HttpProblem as problem:
            return await self._problem(scope, send, problem)
        except Exception:
            log.exception("failed to send the result %s", scope.get("path"))
            if started:
                return 500  # mid-body: nothing left to do but end the response short
            return await self._problem(
                scope,
                send,
                HttpProblem(
                    INTERNAL, "the server failed to send this result; the failure is logged"
                ),
            )

    async def _problem(self, scope: Scope, send: Send, problem: HttpProblem) -> int:
        status, headers, body = problem.render()
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )
        return status

    async def _serve(self, scope: Scope, send: Send, path: bytes) -> int:
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            raise HttpProblem(
                METHOD_NOT_ALLOWED,
                f"{method} is not allowed here; allowed: GET, HEAD",
                headers=[("Allow", "GET, HEAD")],
            )
        file, expires = self._checked(path, scope.get("query_string", b""))
        headers = {name.lower(): value.decode("latin-1") for name, value in scope["headers"]}
        # Caches may keep it, but never past the link's expiry.
        max_age = max(0, int(expires - self.clock.now()))
        extra: Headers = [
            (b"cache-control", f"public, max-age={max_age}, immutable".encode()),
            (b"content-disposition", _inline(file.name)),
        ]
        try:
            return await send_file(
                send,
                file,
                method=method,
                range_header=headers.get(b"range"),
                if_range=headers.get(b"if-range"),
                media_type=_media_type(file),
                extra_headers=extra,
            )
        except FileNotFoundError:
            raise HttpProblem(NOT_FOUND, "this result is no longer on the server") from None

    def _checked(self, raw: bytes, query_string: bytes) -> tuple[Path, int]:
        """The file a link names, once its signature and expiry are checked."""
        try:
            path = unquote(raw.decode("ascii"), errors="strict")
            query = parse_qs(query_string.decode("ascii"), strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            raise HttpProblem(LINK_REFUSED, "this result link is malformed") from None
        executions, expiries, sigs = (query.get(k, []) for k in ("execution", "expires", "sig"))
        if not (len(executions) == len(expiries) == len(sigs) == 1):
            raise HttpProblem(
                LINK_REFUSED, "a result link needs execution, expires and sig, once each"
            )
        expires_text, sig = expiries[0], sigs[0]
        if not expires_text.isdigit() or len(expires_text) > 12 or not _SIG.fullmatch(sig):
            raise HttpProblem(LINK_REFUSED, "this result link is malformed")
        expires = int(expires_text)
        wanted = self.signature(executions[0], path, expires)
        if not hmac.compare_digest(wanted, sig):
            raise HttpProblem(
                LINK_REFUSED,
                "this result link's signature does not match (altered, or signed by another "
                "server secret)",
            )
        if self.clock.now() > expires:
            raise HttpProblem(
                LINK_EXPIRED,
                "this result link has expired; read the execution's status for a fresh one",
            )
        file = self._file(path)
        if file is None:
            raise HttpProblem(NOT_FOUND, "this result is no longer on the server")
        return file, expires

    def _file(self, path: str) -> Path | None:
        parts = path.split("/")
        if self.root is None or any(part in ("", ".", "..") for part in parts):
            return None
        candidate = self.root.joinpath(*parts).resolve()
        if not candidate.is_relative_to(self.root) or not candidate.is_file():
            return None
        return candidate

    def _relative(self, url: str) -> str | None:
        """``url``'s path relative to :attr:`root`, if it is a ``file://`` URL of a file there."""
        if self.root is None:
            return None
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            return None
        try:
            resolved = Path(url2pathname(parts.path)).resolve()
            relative = resolved.relative_to(self.root)
        except (OSError, ValueError):
            return None
        return relative.as_posix()

    @property
    def public_url(self) -> str | None:
        return self._public_url

    @public_url.setter
    def public_url(self, url: str | None) -> None:
        self._public_url = None if url is None else _checked_base(url)

    @property
    def server_url(self) -> str | None:
        """The server's own address: what links in webhooks use without :attr:`public_url`."""
        return self._server_url

    @server_url.setter
    def server_url(self, url: str | None) -> None:
        self._server_url = None if url is None else _checked_base(url)
        if url is not None and self._server_url_set is not None:
            self._server_url_set.set()

    async def _wait_server_url(self) -> str:
        # Only webhooks get here, and only before the server listens (port 0): wait for it.
        if self._server_url is None:
            if self._server_url_set is None:
                self._server_url_set = anyio.Event()
            with anyio.fail_after(60):
                await self._server_url_set.wait()
        assert self._server_url is not None
        return self._server_url

    def _bucket(self) -> str:
        return "(none)" if self.s3 is None else self.s3.bucket

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s: shown as null (no server path leaves the server)", message)


def link_path(scope: Scope) -> bytes | None:
    """The raw path after ``/results/`` when the request is for a result link, else ``None``."""
    raw = scope.get("raw_path")
    path: bytes = raw if raw else scope["path"].encode("utf-8", "surrogateescape")
    root = scope.get("root_path", "").encode()
    if root and path.startswith(root):
        path = path[len(root) :]
    prefix = PREFIX.encode()
    return path[len(prefix) :] if path.startswith(prefix) else None


class ResultLinkNotifier:
    """A notifier that sends webhooks whose ``video.url`` is fetchable (see
    :meth:`ResultLinks.payload`), through ``inner`` (which signs the body it is given)."""

    def __init__(self, inner: Notifier, links: ResultLinks) -> None:
        self.inner = inner
        self.links = links

    async def notify(
        self, notification: Notification, record: AttemptRecorder | None = None
    ) -> None:
        payload = await self.links.payload(notification.payload, notification.execution_id)
        await self.inner.notify(evolve(notification, payload=payload), record)


def _checked_base(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"the public URL must be http(s)://host[:port][/path], got {url!r}")
    return url.rstrip("/")


def _media_type(file: Path) -> str:
    return {".mp4": "video/mp4", ".m4a": "audio/mp4", ".srt": "application/x-subrip"}.get(
        file.suffix.lower(), "application/octet-stream"
    )


def _inline(name: str) -> bytes:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return f'inline; filename="{safe}"'.encode()

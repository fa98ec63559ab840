"""A hosted model API's queue protocol, served for real on 127.0.0.1: what
``HttpVideoProvider`` talks to in tests.

:class:`QueueApi` is an ASGI app that keeps per-request state the way hosted model APIs do
(``IN_QUEUE`` -> ``IN_PROGRESS`` -> ``COMPLETED`` after a number of polls), deduplicates
submissions by ``Idempotency-Key``, supports cancel, and can be scripted to answer 429, 5xx or
4xx, to fail a request, or to hang. :func:`serve_queue_api` serves one with uvicorn.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from attrs import define, field
from http_support import serving

from contrib.types import Receive, Scope, Send

#: The API key the API accepts (``Authorization: Key <KEY>``).
KEY = "sk-test-0123456789abcdef"

_ROUTE = re.compile(r"^/(?P<prefix>.+)/requests/(?P<rid>[^/]+)(?P<tail>/status|/cancel)?$")


@define
class Remote:
    """One request the API holds."""

    id: str
    model: str
    input: dict[str, Any]
    key: str | None
    polls: int = 0
    state: str = "IN_QUEUE"


@define
class Scripted:
    status: int
    body: Any
    headers: dict[str, str] = field(factory=dict)


@define
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@define
class QueueApi:
    """A hosted model API's queue protocol (submit, status, result, cancel) with switches.

    - ``polls_to_complete``: status polls a request answers before ``COMPLETED`` (the first is
      ``IN_QUEUE``, the rest ``IN_PROGRESS``).
    - ``outcome``: ``ok``; ``failed`` (status ``FAILED`` with an error and ``retryable``);
      ``bad_result`` (status ``COMPLETED`` but the result is a 422, the way fal reports input
      validation errors).
    - ``script(step, status, body)``: the next ``step`` request (``submit``, ``status``, ``result``,
      ``cancel``) answers that instead; ``hang``: steps that never answer until ``release``.
    - ``return_urls``: whether a submission answers with the queue URLs; ``url_origin``: the
      origin they are given on (default: this server).
    - ``stuck_keys``: requests submitted under these idempotency keys never complete.
    - ``video``: the ``video`` object of a completed request's result (default:
      :func:`sized_video`, a 1280x720 clip a little longer than asked).
    """

    polls_to_complete: int = 2
    outcome: str = "ok"
    retryable_failure: bool = False
    return_urls: bool = True
    url_origin: str | None = None
    stuck_keys: set[str] = field(factory=set)
    video: Callable[[Remote], dict[str, Any]] = field(factory=lambda: sized_video)
    hang: set[str] = field(factory=set)
    requests: dict[str, Remote] = field(factory=dict)
    by_key: dict[str, str] = field(factory=dict)
    submissions: int = 0
    seen: list[Seen] = field(factory=list)
    cancels: list[str] = field(factory=list)
    scripts: dict[str, list[Scripted]] = field(factory=dict)
    polled: anyio.Event = field(factory=anyio.Event)
    hanging: anyio.Event = field(factory=anyio.Event)
    release: anyio.Event = field(factory=anyio.Event)
    origin: str = ""

    def script(
        self, step: str, status: int, body: Any = None, *, times: int = 1, **headers: str
    ) -> None:
        reply = Scripted(status, body if body is not None else {"detail": f"scripted {status}"})
        reply.headers = {name.replace("_", "-"): value for name, value in headers.items()}
        self.scripts.setdefault(step, []).extend([reply] * times)

    def inputs_of(self, model: str) -> list[dict[str, Any]]:
        return [r.input for r in self.requests.values() if r.model == model]

    def paths(self, method: str) -> list[str]:
        return [s.path for s in self.seen if s.method == method]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].removeprefix("lifespan.")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        method, path = scope["method"], scope["path"]
        self.seen.append(Seen(method, path, headers))
        status, answer, extra = await self._answer(method, path, headers, body)
        raw = json.dumps(answer).encode()
        head = [(b"content-type", b"application/json")]
        head += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": raw})

    async def _answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        match = _ROUTE.match(path)
        if method == "POST" and match is None:
            step = "submit"
        elif match is not None and method == "GET":
            step = "status" if match["tail"] == "/status" else "result"
        elif match is not None and method == "PUT" and match["tail"] == "/cancel":
            step = "cancel"
        else:
            return 404, {"detail": "not found"}, {}
        if step == "status":
            self.polled.set()
        if step in self.hang:
            self.hanging.set()
            await self.release.wait()
        if headers.get("authorization") != f"Key {KEY}":
            return 401, {"detail": "invalid API key"}, {}
        queued = self.scripts.get(step)
        if queued:
            reply = queued.pop(0)
            return reply.status, reply.body, reply.headers
        if step == "submit":
            return self._submit(path.lstrip("/"), headers.get("idempotency-key"), body)
        assert match is not None
        remote = self.requests.get(match["rid"])
        if remote is None:
            return 404, {"detail": f"request {match['rid']} not found"}, {}
        if step == "status":
            return self._status(remote)
        if step == "cancel":
            return self._cancel(remote)
        return self._result(remote)

    def _submit(self, model: str, key: str | None, body: bytes) -> tuple[int, Any, dict[str, str]]:
        self.submissions += 1
        if key is not None and key in self.by_key:
            remote = self.requests[self.by_key[key]]
        else:
            remote = Remote(f"req-{len(self.requests) + 1}", model, json.loads(body), key)
            self.requests[remote.id] = remote
            if key is not None:
                self.by_key[key] = remote.id
        answer: dict[str, Any] = {"request_id": remote.id}
        if self.return_urls:
            base = f"{self.url_origin or self.origin}/{model}/requests/{remote.id}"
            answer |= {
                "status_url": f"{base}/status",
                "response_url": base,
                "cancel_url": f"{base}/cancel",
            }
        return 200, answer, {}

    def _status(self, remote: Remote) -> tuple[int, Any, dict[str, str]]:
        if remote.state in ("IN_QUEUE", "IN_PROGRESS"):
            remote.polls += 1
            if remote.polls > self.polls_to_complete and remote.key not in self.stuck_keys:
                remote.state = "FAILED" if self.outcome == "failed" else "COMPLETED"
            else:
                remote.state = "IN_QUEUE" if remote.polls == 1 else "IN_PROGRESS"
        body: dict[str, Any] = {"status": remote.state}
        if remote.state == "IN_QUEUE":
            body["queue_position"] = 0
        if remote.state == "FAILED":
            body |= {"error": "runner ran out of GPU memory", "retryable": self.retryable_failure}
        return (200 if remote.state in ("COMPLETED", "FAILED", "CANCELLED") else 202), body, {}

    def _cancel(self, remote: Remote) -> tuple[int, Any, dict[str, str]]:
        self.cancels.append(remote.id)
        if remote.state in ("COMPLETED", "FAILED"):
            return 400, {"status": "ALREADY_COMPLETED"}, {}
        remote.state = "CANCELLED"
        return 202, {"status": "CANCELLATION_REQUESTED"}, {}

    def _result(self, remote: Remote) -> tuple[int, Any, dict[str, str]]:
        if remote.state != "COMPLETED":
            return 400, {"detail": f"request is {remote.state}"}, {}
        if self.outcome == "bad_result":
            problem = {"loc": ["body", "prompt"], "msg": "prompt is too long", "type": "value"}
            return 422, {"detail": [problem]}, {}
        return 200, {"video": self.video(remote), "seed": 42}, {}


def sized_video(remote: Remote) -> dict[str, Any]:
    """A 1280x720 video of the duration asked for (6 s if none) plus one frame: the model's own
    length."""
    return {
        "url": f"https://cdn.example.com/{remote.id}.mp4",
        "content_type": "video/mp4",
        "file_size": 123456,
        "width": 1280,
        "height": 720,
        "duration": float(remote.input.get("duration", 6.0)) + 0.04,
    }


@asynccontextmanager
async def serve_queue_api(api: QueueApi) -> AsyncIterator[str]:
    """``api`` served on 127.0.0.1 until the block ends; yields its base URL. Requests still
    held by ``hang`` are let go at the end."""
    async with serving(api) as server:
        api.origin = server.url
        try:
            yield server.url
        finally:
            api.release.set()

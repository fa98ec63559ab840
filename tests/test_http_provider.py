"""HttpVideoProvider against a real queue API served by uvicorn on 127.0.0.1.

The API is a small ASGI app that keeps per-request state the way hosted model APIs do
(``IN_QUEUE`` -> ``IN_PROGRESS`` -> ``COMPLETED`` after a number of polls), deduplicates
submissions by ``Idempotency-Key``, supports cancel, and can be scripted to answer 429, 5xx or
4xx, to fail a request, or to hang. Waits run on a clock that jumps to every short deadline it
is asked to sleep until, so no test sleeps through a poll or a backoff.
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import httpx
import pytest
from attrs import define, field

from adapters.http import HttpVideoProvider, ModelRoute
from adapters.http.provider import default_input, default_output
from contrib.serve import RunningServer, serve_app
from contrib.types import Receive, Scope, Send
from engine import (
    ConfigError,
    Engine,
    ProviderError,
    Video,
    compose,
    generate_video,
    lip_sync,
    merge,
)
from engine.clock import ManualClock
from engine.models import JobRequest

pytestmark = pytest.mark.anyio

KEY = "sk-test-0123456789abcdef"
MODELS: Mapping[str, ModelRoute] = {
    "generate": ModelRoute("acme/video-gen/v2"),
    "lipSync": ModelRoute("acme/lipsync"),
    "merge": ModelRoute("acme/merge"),
}
CLIP = Video(url="https://cdn.example.com/base.mp4", duration=7.0, aspect_ratio="9:16")
AUDIO = "https://cdn.example.com/fr.mp3"

_ROUTE = re.compile(r"^/(?P<prefix>.+)/requests/(?P<rid>[^/]+)(?P<tail>/status|/cancel)?$")


# --- the queue API -----------------------------------------------------------------------------


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
    """

    polls_to_complete: int = 2
    outcome: str = "ok"
    retryable_failure: bool = False
    return_urls: bool = True
    url_origin: str | None = None
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
            if remote.polls > self.polls_to_complete:
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
        duration = float(remote.input.get("duration", 6.0)) + 0.04  # the model's own length
        video = {
            "url": f"https://cdn.example.com/{remote.id}.mp4",
            "content_type": "video/mp4",
            "file_size": 123456,
            "width": 1280,
            "height": 720,
            "duration": duration,
        }
        return 200, {"video": video, "seed": 42}, {}


@asynccontextmanager
async def serve(api: QueueApi) -> AsyncIterator[str]:
    async with anyio.create_task_group() as task_group:
        server: RunningServer = await task_group.start(
            partial(serve_app, api, host="127.0.0.1", port=0, timeout_graceful_shutdown=1)
        )
        api.origin = server.url
        try:
            yield server.url
        finally:
            api.release.set()
            server.stop()


class SteppingClock:
    """A ManualClock that jumps to every deadline at most ``horizon`` seconds away (polls and
    backoffs), recording each wait; longer waits (the overall timeout) need ``advance``."""

    def __init__(self, horizon: float = 20.0) -> None:
        self.manual = ManualClock()
        self.horizon = horizon
        self.waits: list[float] = []

    def now(self) -> float:
        return self.manual.now()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - self.manual.now()
        if 0 < delay <= self.horizon:
            self.waits.append(delay)
            self.manual.advance(delay)
        await self.manual.sleep_until(deadline)


def provider(url: str, clock: SteppingClock, **options: Any) -> HttpVideoProvider:
    options.setdefault("api_key", KEY)
    options.setdefault("models", MODELS)
    return HttpVideoProvider(url, clock=clock, **options)


def job(
    kind: str = "generate",
    params: Mapping[str, Any] | None = None,
    inputs: tuple[Video, ...] = (),
    *,
    key: str = "exec_1:job1",
    attempt: int = 1,
) -> JobRequest:
    if params is None:
        params = {"prompt": "a fox in the snow", "duration": 3, "aspectRatio": "9:16"}
    return JobRequest("exec_1", "job1", kind, params, inputs, attempt, key)


# --- happy paths -------------------------------------------------------------------------------


async def test_generate_end_to_end() -> None:
    api = QueueApi(polls_to_complete=3)
    clock = SteppingClock()
    async with serve(api) as url:
        video = await provider(url, clock).run(job())

    assert video == Video(
        url="https://cdn.example.com/req-1.mp4",
        duration=3.04,  # the API's, not the requested 3
        aspect_ratio="9:16",
        width=1280,
        height=720,
    )
    assert api.inputs_of("acme/video-gen/v2") == [
        {"prompt": "a fox in the snow", "duration": 3, "aspect_ratio": "9:16"}
    ]
    assert api.paths("POST") == ["/acme/video-gen/v2"]
    assert api.paths("GET") == ["/acme/video-gen/v2/requests/req-1/status"] * 4 + [
        "/acme/video-gen/v2/requests/req-1"
    ]
    assert clock.waits == [1.0, 1.5, 2.25]  # polls back off by half up to max_poll_interval
    assert all(seen.headers["authorization"] == f"Key {KEY}" for seen in api.seen)
    assert api.seen[0].headers["idempotency-key"] == "exec_1:job1"
    assert api.seen[0].headers["content-type"] == "application/json"


async def test_lip_sync_sends_the_input_video_and_the_audio() -> None:
    api = QueueApi(polls_to_complete=0)
    async with serve(api) as url:
        video = await provider(url, SteppingClock()).run(
            job("lipSync", {"audioUrl": AUDIO}, (CLIP,))
        )
    assert api.inputs_of("acme/lipsync") == [{"video_url": CLIP.url, "audio_url": AUDIO}]
    assert video.url == "https://cdn.example.com/req-1.mp4"
    assert video.duration == 6.04
    assert video.aspect_ratio == "9:16"  # kept from the input, as the API gives none


async def test_same_idempotency_key_gets_the_same_request() -> None:
    api = QueueApi(polls_to_complete=1)
    async with serve(api) as url:
        remote = provider(url, SteppingClock())
        first = await remote.run(job(attempt=1))
        again = await remote.run(job(attempt=2))  # e.g. a rerun after a crash
        other = await remote.run(job(key="exec_1:job2"))
    assert api.submissions == 3
    assert sorted(api.requests) == ["req-1", "req-2"]  # the repeat paid nothing
    assert first == again
    assert other.url.endswith("req-2.mp4")


async def test_custom_route_input_and_output() -> None:
    def build(request: JobRequest) -> dict[str, Any]:
        return {**default_input(request), "seed": 7, "negative_prompt": "blur"}

    def parse(output: Mapping[str, Any], request: JobRequest) -> Video:
        video = default_output(output, request)
        return Video(f"{video.url}?seed={output['seed']}", video.duration, "1:1")

    api = QueueApi(polls_to_complete=0)
    routes = {"generate": ModelRoute("acme/video-gen/v3", build_input=build, parse_output=parse)}
    async with serve(api) as url:
        video = await provider(url, SteppingClock(), models=routes).run(job())
    assert api.inputs_of("acme/video-gen/v3")[0]["seed"] == 7
    assert video.url.endswith("?seed=42")
    assert video.aspect_ratio == "1:1"


async def test_queue_urls_are_built_when_the_api_gives_none() -> None:
    api = QueueApi(polls_to_complete=1, return_urls=False)
    routes = {"generate": ModelRoute("acme/video-gen/fast", queue_path="acme/video-gen")}
    async with serve(api) as url:
        await provider(url, SteppingClock(), models=routes).run(job())
    assert api.paths("POST") == ["/acme/video-gen/fast"]
    assert set(api.paths("GET")) == {
        "/acme/video-gen/requests/req-1/status",
        "/acme/video-gen/requests/req-1",
    }


async def test_queue_urls_on_another_origin_are_not_followed() -> None:
    # The key must not travel to a host the API names; nothing listens there anyway.
    api = QueueApi(polls_to_complete=1, url_origin="http://127.0.0.2:9")
    async with serve(api) as url:
        video = await provider(url, SteppingClock(), max_retries=0).run(job())
    assert video.url.endswith("req-1.mp4")
    assert len(api.paths("GET")) == 3


# --- retries and failures ----------------------------------------------------------------------


async def test_429_and_500_are_retried_with_retry_after_honoured() -> None:
    api = QueueApi(polls_to_complete=1)
    api.script("submit", 429, {"detail": "rate limited"}, Retry_After="7")
    api.script("submit", 503, times=1)
    api.script("status", 500, times=2)
    clock = SteppingClock()
    async with serve(api) as url:
        video = await provider(url, clock).run(job())
    assert video.url.endswith("req-1.mp4")
    assert api.submissions == 1  # the scripted answers never reached the queue
    assert len(api.requests) == 1
    assert api.seen[1].headers["idempotency-key"] == "exec_1:job1"
    # 7 s as asked, then backoff 2 s (second retry); status 500s: 1 s, 2 s; then one poll (1 s)
    assert clock.waits == [7.0, 2.0, 1.0, 2.0, 1.0]


async def test_retry_after_as_a_date_garbage_or_huge() -> None:
    clock = SteppingClock(horizon=4000)
    when = email.utils.formatdate(clock.now() + 12, usegmt=True)
    api = QueueApi(polls_to_complete=1)
    api.script("submit", 429, Retry_After=when)
    api.script("submit", 503, Retry_After="-3")  # not a Retry-After: backoff (2 s, second retry)
    api.script("submit", 503, Retry_After="9" * 30)  # capped at an hour
    async with serve(api) as url:  # the overall timeout stays beyond the clock's horizon
        video = await provider(url, clock, timeout=10_000).run(job())
    assert video.url.endswith("req-1.mp4")
    assert clock.waits == [12.0, 2.0, 3600.0, 1.0]


async def test_retries_are_bounded_then_retryable() -> None:
    api = QueueApi()
    api.script("submit", 502, {"detail": "bad gateway"}, times=10)
    clock = SteppingClock()
    async with serve(api) as url:
        with pytest.raises(ProviderError) as caught:
            await provider(url, clock, max_retries=2).run(job())
    assert caught.value.retryable
    assert "3 tries" in str(caught.value)
    assert "HTTP 502: bad gateway" in str(caught.value)
    assert clock.waits == [1.0, 2.0]
    assert len(api.paths("POST")) == 3


async def test_transport_errors_are_retried_and_translated() -> None:
    async with serve(QueueApi()) as url:
        pass  # the server is gone: connections are refused
    clock = SteppingClock()
    with pytest.raises(ProviderError) as caught:
        await provider(url, clock, max_retries=1).run(job())
    assert caught.value.retryable
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert clock.waits == [1.0]


async def test_400_is_not_retried_and_carries_the_detail() -> None:
    api = QueueApi()
    api.script("submit", 400, {"detail": "duration must be 5 or 10"})
    async with serve(api) as url:
        with pytest.raises(ProviderError) as caught:
            await provider(url, SteppingClock()).run(job())
    assert not caught.value.retryable
    assert "HTTP 400: duration must be 5 or 10" in str(caught.value)
    assert len(api.seen) == 1


async def test_validation_error_on_the_result_is_not_retried() -> None:
    api = QueueApi(polls_to_complete=1, outcome="bad_result")
    async with serve(api) as url:
        with pytest.raises(ProviderError) as caught:
            await provider(url, SteppingClock()).run(job())
    assert not caught.value.retryable
    assert "HTTP 422: body.prompt: prompt is too long" in str(caught.value)


@pytest.mark.parametrize("hint", [False, True])
async def test_failed_request_status(hint: bool) -> None:
    api = QueueApi(polls_to_complete=1, outcome="failed", retryable_failure=hint)
    async with serve(api) as url:
        remote = provider(url, SteppingClock())
        with pytest.raises(ProviderError) as caught:
            await remote.run(job())
        assert caught.value.retryable is hint
        assert "FAILED: runner ran out of GPU memory" in str(caught.value)
        assert "req-1" in str(caught.value)
        # Another attempt is a new request, not the failed one found again by its key.
        api.outcome = "ok"
        video = await remote.run(job(attempt=2))
    assert video.url.endswith("req-2.mp4")
    assert [r.key for r in api.requests.values()] == ["exec_1:job1", "exec_1:job1#2"]


async def test_unknown_job_type_is_not_retryable() -> None:
    remote = HttpVideoProvider("https://queue.example.com", api_key=KEY, models=MODELS)
    with pytest.raises(ProviderError) as caught:
        await remote.run(job("reframe", {"aspectRatio": "1:1"}, (CLIP,)))
    assert not caught.value.retryable
    assert "'reframe'" in str(caught.value)
    assert "configured: generate, lipSync, merge" in str(caught.value)


# --- cancel and timeout ------------------------------------------------------------------------


async def test_engine_cancel_while_polling_cancels_the_request() -> None:
    api = QueueApi(polls_to_complete=10**9)
    scope = anyio.CancelScope()
    finished = False

    async def run_job(remote: HttpVideoProvider) -> None:
        nonlocal finished
        with scope:
            await remote.run(job())
            finished = True

    async with serve(api) as url, anyio.create_task_group() as task_group:
        task_group.start_soon(run_job, provider(url, SteppingClock()))
        await api.polled.wait()
        scope.cancel()
    assert scope.cancelled_caught
    assert not finished
    assert api.cancels == ["req-1"]
    assert api.requests["req-1"].state == "CANCELLED"
    cancel = next(s for s in api.seen if s.method == "PUT")
    assert cancel.path == "/acme/video-gen/v2/requests/req-1/cancel"
    assert cancel.headers["authorization"] == f"Key {KEY}"


async def test_timeout_on_the_clock_is_retryable_and_leaves_the_request() -> None:
    api = QueueApi(polls_to_complete=10**9)
    clock = SteppingClock(horizon=20)
    async with serve(api) as url:
        started = clock.now()
        with pytest.raises(ProviderError) as caught:
            await provider(url, clock, timeout=30).run(job())
    assert caught.value.retryable
    assert "timed out after 30s, last status IN_PROGRESS" in str(caught.value)
    assert clock.now() - started == pytest.approx(30, abs=10)
    assert api.cancels == []  # a retry under the same key picks the request up again


async def test_a_hanging_api_times_out_on_the_clock() -> None:
    api = QueueApi(hang={"status"})
    clock = SteppingClock(horizon=20)
    failure: ProviderError | None = None

    async def run_job(remote: HttpVideoProvider) -> None:
        nonlocal failure
        try:
            await remote.run(job())
        except ProviderError as exc:
            failure = exc

    async with serve(api) as url, anyio.create_task_group() as task_group:
        task_group.start_soon(run_job, provider(url, clock, timeout=30))
        await api.hanging.wait()
        clock.manual.advance(30)
    assert failure is not None
    assert failure.retryable
    assert "timed out after 30s" in str(failure)


# --- secrets -----------------------------------------------------------------------------------


async def test_the_api_key_is_sent_but_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    api = QueueApi()
    api.script("submit", 500, {"detail": f"upstream saw Key {KEY}"})
    api.script("submit", 403, {"detail": f"key {KEY} may not use this model"})
    async with serve(api) as url:
        with pytest.raises(ProviderError) as caught:
            await provider(url, SteppingClock()).run(job())
        with pytest.raises(ProviderError) as unauthorized:
            await provider(url, SteppingClock(), api_key="sk-wrong-key-42").run(job())
    assert api.seen[0].headers["authorization"] == f"Key {KEY}"
    assert not caught.value.retryable
    assert "may not use this model" in str(caught.value)
    assert KEY not in str(caught.value)
    assert KEY not in caplog.text
    assert "HTTP 401: invalid API key" in str(unauthorized.value)
    assert "sk-wrong-key-42" not in str(unauthorized.value)
    assert "sk-wrong-key-42" not in repr(provider(url, SteppingClock()))


def test_auth_header_and_scheme_are_configurable() -> None:
    remote = HttpVideoProvider(
        "https://api.example.com/v1/",
        api_key=KEY,
        auth_header="X-API-Key",
        auth_scheme=None,
        models={"generate": "acme/gen"},
    )
    assert remote._headers()["X-API-Key"] == KEY
    assert remote.routes["generate"] == ModelRoute("acme/gen")


# --- inputs, outputs, options ------------------------------------------------------------------


def test_default_inputs_for_each_type() -> None:
    second = Video(url="https://cdn.example.com/b.mp4", duration=3.0, aspect_ratio="9:16")
    assert default_input(job("reframe", {"aspectRatio": "1:1"}, (CLIP,))) == {
        "video_url": CLIP.url,
        "aspect_ratio": "1:1",
    }
    cues = [{"start": 0.0, "end": 1.5, "text": "Bonjour"}]
    assert default_input(job("addSubtitles", {"language": "fr", "cues": cues}, (CLIP,))) == {
        "video_url": CLIP.url,
        "language": "fr",
        "cues": cues,
    }
    srt = "https://cdn.example.com/fr.srt"
    assert default_input(job("addSubtitles", {"language": "fr", "srtUrl": srt}, (CLIP,))) == {
        "video_url": CLIP.url,
        "language": "fr",
        "srt_url": srt,
    }
    params = {"transition": "crossfade", "transitionDuration": 0.5}
    assert default_input(job("merge", params, (CLIP, second))) == {
        "video_urls": [CLIP.url, second.url],
        "transition": "crossfade",
        "transition_duration": 0.5,
    }
    assert default_input(job("generate", {"prompt": "p"})) == {
        "prompt": "p",
        "duration": 5,
        "aspect_ratio": "16:9",
    }


async def test_a_transform_without_input_is_not_retryable() -> None:
    remote = HttpVideoProvider("https://queue.example.com", models=MODELS)
    with pytest.raises(ProviderError) as caught:
        await remote.run(job("lipSync", {"audioUrl": AUDIO}))
    assert not caught.value.retryable
    assert "no input video" in str(caught.value)


def test_default_output_fills_gaps_from_the_job() -> None:
    merged = default_output(
        {"video": "https://cdn.example.com/m.mp4"},
        job("merge", {"transition": "fade", "transitionDuration": 1.0}, (CLIP, CLIP)),
    )
    assert merged == Video("https://cdn.example.com/m.mp4", 13.0, "9:16")
    sized = default_output(
        {"video": {"url": "u", "width": 1080, "height": 1920, "duration": 2}},
        job("custom", {}),
    )
    assert (sized.aspect_ratio, sized.duration, sized.width) == ("9:16", 2.0, 1080)
    with pytest.raises(ProviderError) as caught:
        default_output({"images": []}, job())
    assert not caught.value.retryable
    assert "no video.url (keys: images)" in str(caught.value)


@pytest.mark.parametrize(
    ("base_url", "options"),
    [
        ("ftp://queue.example.com", {}),
        ("not a url", {}),
        ("https://queue.example.com", {"models": {}}),
        ("https://queue.example.com", {"poll_interval": 0}),
        ("https://queue.example.com", {"max_poll_interval": 0.5}),
        ("https://queue.example.com", {"timeout": 0}),
        ("https://queue.example.com", {"max_retries": -1}),
    ],
)
def test_bad_options_are_config_errors(base_url: str, options: dict[str, Any]) -> None:
    options.setdefault("models", MODELS)
    with pytest.raises(ConfigError):
        HttpVideoProvider(base_url, **options)


# --- through the engine ------------------------------------------------------------------------


async def test_a_pipeline_through_the_engine() -> None:
    api = QueueApi(polls_to_complete=2)
    pipeline = compose(
        generate_video(prompt="Scene 1", duration=3),
        generate_video(prompt="Scene 2", duration=4),
        merge(transition="crossfade", transition_duration=0.5),
        lip_sync(audio_url=AUDIO),
    )
    async with serve(api) as url:
        remote = provider(url, SteppingClock())
        async with Engine.in_memory(provider=remote) as engine:
            execution = await pipeline.execute(engine)
            video = await execution.wait(timeout=10)

    generated = {r.input["prompt"]: r.id for r in api.requests.values() if "prompt" in r.input}
    scenes = [f"https://cdn.example.com/{generated[p]}.mp4" for p in ("Scene 1", "Scene 2")]
    (merged,) = api.inputs_of("acme/merge")
    assert merged == {"video_urls": scenes, "transition": "crossfade", "transition_duration": 0.5}
    merge_id = next(r.id for r in api.requests.values() if r.model == "acme/merge")
    (synced,) = api.inputs_of("acme/lipsync")
    assert synced == {"video_url": f"https://cdn.example.com/{merge_id}.mp4", "audio_url": AUDIO}
    sync_id = next(r.id for r in api.requests.values() if r.model == "acme/lipsync")
    assert video.url == f"https://cdn.example.com/{sync_id}.mp4"
    assert video.aspect_ratio == "16:9"
    keys = {r.key for r in api.requests.values()}
    assert len(keys) == 4
    assert api.submissions == 4

"""HttpVideoProvider against a real queue API served by uvicorn on 127.0.0.1 (``queue_api.py``).

Waits run on a clock that jumps to every deadline up to 20 s away it is asked to sleep until, so
no test sleeps through a poll or a backoff; the provider's overall timeout needs ``advance``.
What every provider must do is in ``test_provider_contract.py``.
"""

from __future__ import annotations

import email.utils
import logging
from collections.abc import Mapping
from typing import Any

import anyio
import httpx
import pytest
from clocks import SteppingClock
from queue_api import KEY, QueueApi, serve_queue_api

from adapters.http import HttpVideoProvider, ModelRoute
from adapters.http.provider import default_input, default_output
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
from engine.models import JobRequest

pytestmark = pytest.mark.anyio

#: Polls and backoffs are jumped over; the overall timeout is not.
HORIZON = 20.0
MODELS: Mapping[str, ModelRoute] = {
    "generate": ModelRoute("acme/video-gen/v2"),
    "lipSync": ModelRoute("acme/lipsync"),
    "merge": ModelRoute("acme/merge"),
}
CLIP = Video(url="https://cdn.example.com/base.mp4", duration=7.0, aspect_ratio="9:16")
AUDIO = "https://cdn.example.com/fr.mp3"


def stepping(horizon: float = HORIZON) -> SteppingClock:
    return SteppingClock(horizon=horizon)


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
    clock = stepping()
    async with serve_queue_api(api) as url:
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
    async with serve_queue_api(api) as url:
        video = await provider(url, stepping()).run(job("lipSync", {"audioUrl": AUDIO}, (CLIP,)))
    assert api.inputs_of("acme/lipsync") == [{"video_url": CLIP.url, "audio_url": AUDIO}]
    assert video.url == "https://cdn.example.com/req-1.mp4"
    assert video.duration == 6.04
    assert video.aspect_ratio == "9:16"  # kept from the input, as the API gives none


async def test_same_idempotency_key_gets_the_same_request() -> None:
    api = QueueApi(polls_to_complete=1)
    async with serve_queue_api(api) as url:
        remote = provider(url, stepping())
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
    async with serve_queue_api(api) as url:
        video = await provider(url, stepping(), models=routes).run(job())
    assert api.inputs_of("acme/video-gen/v3")[0]["seed"] == 7
    assert video.url.endswith("?seed=42")
    assert video.aspect_ratio == "1:1"


async def test_queue_urls_are_built_when_the_api_gives_none() -> None:
    api = QueueApi(polls_to_complete=1, return_urls=False)
    routes = {"generate": ModelRoute("acme/video-gen/fast", queue_path="acme/video-gen")}
    async with serve_queue_api(api) as url:
        await provider(url, stepping(), models=routes).run(job())
    assert api.paths("POST") == ["/acme/video-gen/fast"]
    assert set(api.paths("GET")) == {
        "/acme/video-gen/requests/req-1/status",
        "/acme/video-gen/requests/req-1",
    }


async def test_queue_urls_on_another_origin_are_not_followed() -> None:
    # The key must not travel to a host the API names; nothing listens there anyway.
    api = QueueApi(polls_to_complete=1, url_origin="http://127.0.0.2:9")
    async with serve_queue_api(api) as url:
        video = await provider(url, stepping(), max_retries=0).run(job())
    assert video.url.endswith("req-1.mp4")
    assert len(api.paths("GET")) == 3


# --- retries and failures ----------------------------------------------------------------------


async def test_429_and_500_are_retried_with_retry_after_honoured() -> None:
    api = QueueApi(polls_to_complete=1)
    api.script("submit", 429, {"detail": "rate limited"}, Retry_After="7")
    api.script("submit", 503, times=1)
    api.script("status", 500, times=2)
    clock = stepping()
    async with serve_queue_api(api) as url:
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
    async with serve_queue_api(api) as url:  # the overall timeout stays beyond the clock's horizon
        video = await provider(url, clock, timeout=10_000).run(job())
    assert video.url.endswith("req-1.mp4")
    assert clock.waits == [12.0, 2.0, 3600.0, 1.0]


async def test_retries_are_bounded_then_retryable() -> None:
    api = QueueApi()
    api.script("submit", 502, {"detail": "bad gateway"}, times=10)
    clock = stepping()
    async with serve_queue_api(api) as url:
        with pytest.raises(ProviderError) as caught:
            await provider(url, clock, max_retries=2).run(job())
    assert caught.value.retryable
    assert "3 tries" in str(caught.value)
    assert "HTTP 502: bad gateway" in str(caught.value)
    assert clock.waits == [1.0, 2.0]
    assert len(api.paths("POST")) == 3


async def test_transport_errors_are_retried_and_translated() -> None:
    async with serve_queue_api(QueueApi()) as url:
        pass  # the server is gone: connections are refused
    clock = stepping()
    with pytest.raises(ProviderError) as caught:
        await provider(url, clock, max_retries=1).run(job())
    assert caught.value.retryable
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert clock.waits == [1.0]


async def test_400_is_not_retried_and_carries_the_detail() -> None:
    api = QueueApi()
    api.script("submit", 400, {"detail": "duration must be 5 or 10"})
    async with serve_queue_api(api) as url:
        with pytest.raises(ProviderError) as caught:
            await provider(url, stepping()).run(job())
    assert not caught.value.retryable
    assert "HTTP 400: duration must be 5 or 10" in str(caught.value)
    assert len(api.seen) == 1


async def test_validation_error_on_the_result_is_not_retried() -> None:
    api = QueueApi(polls_to_complete=1, outcome="bad_result")
    async with serve_queue_api(api) as url:
        with pytest.raises(ProviderError) as caught:
            await provider(url, stepping()).run(job())
    assert not caught.value.retryable
    assert "HTTP 422: body.prompt: prompt is too long" in str(caught.value)


@pytest.mark.parametrize("hint", [False, True])
async def test_failed_request_status(hint: bool) -> None:
    api = QueueApi(polls_to_complete=1, outcome="failed", retryable_failure=hint)
    async with serve_queue_api(api) as url:
        remote = provider(url, stepping())
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

    async with serve_queue_api(api) as url, anyio.create_task_group() as task_group:
        task_group.start_soon(run_job, provider(url, stepping()))
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
    clock = stepping()
    async with serve_queue_api(api) as url:
        started = clock.now()
        with pytest.raises(ProviderError) as caught:
            await provider(url, clock, timeout=30).run(job())
    assert caught.value.retryable
    assert "timed out after 30s, last status IN_PROGRESS" in str(caught.value)
    assert clock.now() - started == pytest.approx(30, abs=10)
    assert api.cancels == []  # a retry under the same key picks the request up again


async def test_a_hanging_api_times_out_on_the_clock() -> None:
    api = QueueApi(hang={"status"})
    clock = stepping()
    failure: ProviderError | None = None

    async def run_job(remote: HttpVideoProvider) -> None:
        nonlocal failure
        try:
            await remote.run(job())
        except ProviderError as exc:
            failure = exc

    async with serve_queue_api(api) as url, anyio.create_task_group() as task_group:
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
    async with serve_queue_api(api) as url:
        with pytest.raises(ProviderError) as caught:
            await provider(url, stepping()).run(job())
        with pytest.raises(ProviderError) as unauthorized:
            await provider(url, stepping(), api_key="sk-wrong-key-42").run(job())
    assert api.seen[0].headers["authorization"] == f"Key {KEY}"
    assert not caught.value.retryable
    assert "may not use this model" in str(caught.value)
    assert KEY not in str(caught.value)
    assert KEY not in caplog.text
    assert "HTTP 401: invalid API key" in str(unauthorized.value)
    assert "sk-wrong-key-42" not in str(unauthorized.value)
    assert "sk-wrong-key-42" not in repr(provider(url, stepping()))


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
    async with serve_queue_api(api) as url:
        remote = provider(url, stepping())
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

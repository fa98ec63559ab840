"""EngineClient and remote ``pipeline.execute`` against a real uvicorn server: the seed's
examples, polling, and the translation of HTTP errors."""

from __future__ import annotations

import email.utils
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from http_support import live_api

from adapters.http import EngineClient, TransportError
from engine import (
    EngineError,
    ExecutionFailed,
    IdempotencyConflict,
    InvalidState,
    PipelineExecution,
    PlanError,
    Progress,
    UnknownExecution,
    Video,
    add_subtitles,
    compose,
    generate_video,
    lip_sync,
    merge,
    reframe,
)

pytestmark = pytest.mark.anyio


def fast(url: str, key: str = "key-alpha") -> EngineClient:
    return EngineClient(url, key, poll_interval=0.01, max_poll_interval=0.05)


FR = "https://cdn.example.com/french.mp3"
ES = "https://cdn.example.com/spanish.mp3"


def product_demo() -> Any:
    return compose(
        generate_video(prompt="Scene 1", duration=3),
        generate_video(prompt="Scene 2", duration=3),
        generate_video(prompt="Scene 3", duration=3),
        merge(transition="crossfade"),
    )


async def test_example_1_base_and_variants_with_webhooks(tmp_path: Path) -> None:
    async with (
        live_api(tmp_path / "e.db") as live,
        fast(live.url) as client,
    ):
        live.provider.latency = 0.02
        demo = product_demo()
        base = await demo.execute(client)
        french = await compose(demo, lip_sync(audio_url=FR), add_subtitles(language="fr")).execute(
            client,
            base_execution_id=base.id,
            webhook_url="https://api.example.com/webhook/french",
            webhook_secret="secret123-of-at-least-16-bytes",
        )
        spanish = await compose(demo, lip_sync(audio_url=ES), add_subtitles(language="es")).execute(
            client,
            base_execution_id=base.id,
            webhook_url="https://api.example.com/webhook/spanish",
            webhook_secret="secret123-of-at-least-16-bytes",
        )
        assert len({base.id, french.id, spanish.id}) == 3
        base_video = await base.wait(timeout=10)
        assert base_video.duration == pytest.approx(7.0)  # 3 x 3 s less two 1 s crossfades
        for handle in (french, spanish):
            video = await handle.wait(timeout=10)
            assert video.duration == base_video.duration and handle.status == "completed"
        # The variants sent only their own two jobs, and ran after the base's final job.
        shown = await client.get(french.id)
        assert [j["type"] for j in shown["jobs"]] == ["lipSync", "addSubtitles"]
        assert shown["baseExecutionId"] == base.id
        # The recording notifier makes no HTTP attempt: an empty delivery log.
        assert shown["webhook"] == {
            "url": "https://api.example.com/webhook/french",
            "deliveries": [],
        }
        merge_done = next(
            c.finished_at for c in live.provider.calls_for(base.id) if c.type == "merge"
        )
        assert merge_done is not None
        for variant in (french, spanish):
            first = min(c.started_at for c in live.provider.calls_for(variant.id))
            assert first >= merge_done
        deliveries = await live.notifier.wait_for(3)
        hooks = {d.execution_id: d.webhook for d in deliveries}
        assert hooks[base.id] is None
        french_hook, spanish_hook = hooks[french.id], hooks[spanish.id]
        assert french_hook is not None and french_hook.url.endswith("/french")
        assert spanish_hook is not None and spanish_hook.secret == "secret123-of-at-least-16-bytes"


async def test_example_2_callbacks_by_polling(tmp_path: Path) -> None:
    seen: list[Progress] = []
    videos: list[Video] = []
    finished = anyio.Event()

    async def on_complete(video: Video) -> None:
        videos.append(video)
        finished.set()

    async with live_api(tmp_path / "e.db") as live:
        live.provider.latency = 0.05
        async with fast(live.url) as client:
            pipeline = compose(
                generate_video(prompt="A beautiful landscape"), reframe(aspect_ratio="9:16")
            )
            pipeline.on_progress(seen.append)
            execution = await pipeline.execute(client)
            execution.on_complete(on_complete)
            with anyio.fail_after(10):
                await finished.wait()
        # Leaving the client waited for its polls; the callbacks fired once each.
        assert len(videos) == 1 and videos[0].aspect_ratio == "9:16"
        assert seen[-1].status == "completed" and seen[-1].completed_jobs == 2
        assert seen[-1].total_jobs == 2 and seen[-1].percent == 100.0
        done = [p.completed_jobs for p in seen]
        assert done == sorted(done)
        assert len(seen) == len(set(seen))  # a progress is told once, not at every poll
        assert live.counting.count("/status") >= 2
        assert await execution.wait(timeout=1) == videos[0]


async def test_example_3_webhook_only_returns_at_once_and_never_polls(tmp_path: Path) -> None:
    async with (
        live_api(tmp_path / "e.db") as live,
        fast(live.url) as client,
    ):
        live.provider.latency = 0.05
        pipeline = compose(generate_video(prompt="Long video"), lip_sync(audio_url=FR))
        execution = await pipeline.execute(
            client,
            webhook_url="https://api.example.com/webhook/complete",
            webhook_secret="secret123-of-at-least-16-bytes",
        )
        assert execution.id.startswith("exec_") and execution.status == "pending"
        (delivery,) = await live.notifier.wait_for(1)
        assert delivery.execution_id == execution.id and delivery.status == "completed"
        await anyio.sleep(0.1)
        assert live.counting.count("/status") == 0
        assert live.counting.paths["POST /api/execute"] == 1


async def test_remote_progress_is_told_once_per_change_however_often_it_is_polled(
    tmp_path: Path,
) -> None:
    seen: list[Progress] = []
    async with live_api(tmp_path / "e.db") as live:
        live.provider.latency = 0.1
        async with fast(live.url) as client:
            pipeline = product_demo()
            pipeline.on_progress(seen.append)
            execution = await pipeline.execute(client)  # polls in the background
            for _ in range(5):  # and refreshes poll the same status again
                await execution.refresh()
            await execution.wait(timeout=10)
    assert seen[-1].status == "completed" and seen[-1].completed_jobs == 4
    assert [a for a, b in pairwise(seen) if a == b] == []
    assert live.counting.count("/status") > len(seen)


async def test_api_url_and_api_key_build_a_client(tmp_path: Path) -> None:
    async with live_api(tmp_path / "e.db") as live:
        live.provider.latency = 0.01
        calls: list[str] = []

        async def later(video: Video) -> None:
            calls.append("async " + video.aspect_ratio)

        pipeline = compose(generate_video(prompt="x"), reframe(aspect_ratio="1:1"))
        pipeline.on_progress(lambda p: calls.append(f"progress {p.completed_jobs}"))
        execution = await pipeline.execute(api_url=live.url, api_key="key-beta")
        execution.on_complete(later)
        execution.on_complete(lambda v: calls.append("plain"))
        video = await execution.wait(timeout=10)
        assert video.aspect_ratio == "1:1"
        assert "async 1:1" in calls and "plain" in calls
        assert calls[-3:] == ["progress 2", "plain", "async 1:1"]
        # Registered after the end: runs too (the async one at the next wait()).
        execution.on_complete(later)
        await execution.wait()
        assert calls.count("async 1:1") == 2


async def test_a_failure_reaches_on_error_and_wait(tmp_path: Path) -> None:
    errors: list[ExecutionFailed] = []
    async with live_api(tmp_path / "e.db") as live:
        live.provider.fail_next("job2", retryable=False, message="provider says no")
        async with fast(live.url) as client:
            execution = await compose(
                generate_video(prompt="x"), reframe(aspect_ratio="1:1")
            ).execute(client)
            execution.on_error(errors.append)
            with pytest.raises(ExecutionFailed) as caught:
                await execution.wait(timeout=10)
        assert caught.value.status == "failed" and caught.value.job_id == "job2"
        assert "provider says no" in (caught.value.message or "")
        assert errors == [caught.value]


async def test_wait_times_out_and_can_wait_again(tmp_path: Path) -> None:
    gate = anyio.Event()

    async def hold(request: Any) -> None:
        await gate.wait()

    async with (
        live_api(tmp_path / "e.db") as live,
        fast(live.url) as client,
    ):
        live.provider.on_call = hold
        execution = await compose(generate_video(prompt="x")).execute(client)
        with pytest.raises(TimeoutError):
            await execution.wait(timeout=0.1)
        gate.set()
        assert (await execution.wait(timeout=10)).duration == 5.0


# --- errors become the engine's errors ------------------------------------------------------------


async def test_http_errors_become_engine_errors(tmp_path: Path) -> None:
    async with (
        live_api(tmp_path / "e.db") as live,
        fast(live.url) as client,
    ):
        with pytest.raises(PlanError) as caught:
            await client.submit({"jobs": [{"id": "a", "type": "generate", "params": {}}]})
        assert [(p.job_id, p.field) for p in caught.value.problems] == [("a", "params.prompt")]
        missing = "exec_00000000000000000000"
        for call in (client.status, client.get, client.cancel, client.resume):
            with pytest.raises(UnknownExecution) as unknown:
                await call(missing)
            assert unknown.value.execution_id == missing
        with pytest.raises(UnknownExecution):
            await client.status("../../healthz")
        with pytest.raises(UnknownExecution) as unknown:
            await client.submit(
                {"jobs": [{"id": "a", "type": "lipSync", "params": {"audioUrl": FR}}]},
                base_execution_id=missing,
            )
        assert unknown.value.field == "base_execution_id"
        assert str(unknown.value) == f"unknown execution {missing!r} (given as base_execution_id)"
        plan = {"jobs": [{"id": "a", "type": "generate", "params": {"prompt": "x"}}]}
        first = await client.submit(plan, idempotency_key="k")
        assert await client.submit(plan, idempotency_key="k") == first
        with pytest.raises(IdempotencyConflict):
            await client.submit(
                {"jobs": [{"id": "b", "type": "generate", "params": {"prompt": "y"}}]},
                idempotency_key="k",
            )
        await PipelineExecution(first, client, poller=client).wait(timeout=10)
        with pytest.raises(InvalidState):
            await client.resume(first)
        # Another tenant's execution is unknown to this key.
        async with EngineClient(live.url, "key-beta") as stranger:
            with pytest.raises(UnknownExecution):
                await stranger.get(first)
        async with EngineClient(live.url, "wrong-key") as intruder:
            with pytest.raises(EngineError, match="unauthorized"):
                await intruder.status(first)


async def test_429_is_retried_after_retry_after(tmp_path: Path) -> None:
    async with live_api(tmp_path / "e.db", rate_limit=(2, 1.0)) as live:
        async with EngineClient(live.url, "key-alpha", max_retry_after=2.0) as client:
            started = anyio.current_time()
            for _ in range(3):
                with pytest.raises(UnknownExecution):
                    await client.status("exec_00000000000000000000")
            assert anyio.current_time() - started >= 0.9  # the third waited for Retry-After
        async with EngineClient(live.url, "key-alpha", max_retries=0) as impatient:
            for _ in range(2):
                with pytest.raises((UnknownExecution, EngineError)):
                    await impatient.status("exec_00000000000000000000")
            with pytest.raises(EngineError, match="429"):
                await impatient.status("exec_00000000000000000000")


def test_retry_after_is_honoured_capped_or_replaced_by_backoff() -> None:
    client = EngineClient("http://127.0.0.1:9", "k", max_retry_after=30.0)

    def wait(value: str | None, attempt: int = 0) -> float:
        headers = {} if value is None else {"retry-after": value}
        return client._retry_after(httpx.Response(429, headers=headers), attempt)

    assert wait("7") == 7.0
    assert wait("86400") == 30.0
    assert wait(email.utils.formatdate(time.time() + 3600, usegmt=True)) == 30.0
    assert wait(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0.0
    # No usable Retry-After: backoff from 0.5 s, doubling, capped (a negative one used to be 0).
    assert [wait(None, n) for n in range(3)] == [0.5, 1.0, 2.0]
    assert wait("-5", 3) == 4.0
    assert wait("soon", 10) == 30.0
    with pytest.raises(ValueError, match="max_retry_after"):
        EngineClient("http://127.0.0.1:9", "k", max_retry_after=-1)


async def test_429_without_a_usable_retry_after_is_retried() -> None:
    answers = [
        httpx.Response(429, headers={"retry-after": "later"}),
        httpx.Response(429, headers={b"retry-after": b"\xb2"}),
        httpx.Response(200, json={"id": "exec_1"}),
    ]
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return answers[len(sent) - 1]

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = EngineClient("http://api", "k", client=http, max_retry_after=0.01)
        assert await client.get("exec_1") == {"id": "exec_1"}
    assert len(sent) == 3


async def test_transport_failures_are_transport_errors() -> None:
    with pytest.raises(TransportError):
        await EngineClient("http://127.0.0.1:9", "k", timeout=2).status("exec_x")


async def test_a_given_httpx_client_is_used_and_left_open(tmp_path: Path) -> None:
    async with live_api(tmp_path / "e.db") as live, httpx.AsyncClient() as http:
        plan = {"jobs": [{"id": "a", "type": "generate", "params": {"prompt": "x"}}]}
        one_shot = EngineClient(live.url, "key-alpha", client=http)
        execution_id = await one_shot.submit(plan)
        async with EngineClient(live.url, "key-alpha", client=http) as client:
            assert (await client.get(execution_id))["id"] == execution_id
        assert not http.is_closed
        assert (await one_shot.status(execution_id)).total_jobs == 1
        # And without any client: one connection per call, closed after it.
        assert (await EngineClient(live.url, "key-alpha").get(execution_id))["id"] == execution_id


async def test_execute_rejects_mixed_targets(tmp_path: Path) -> None:
    pipeline = compose(generate_video(prompt="x"))
    client = EngineClient("http://127.0.0.1:9", "k")
    with pytest.raises(EngineError, match="not both"):
        await pipeline.execute(client, api_url="http://127.0.0.1:9", api_key="k")
    with pytest.raises(EngineError, match="api_key"):
        await pipeline.execute(api_url="http://127.0.0.1:9")
    with pytest.raises(TypeError):
        await pipeline.execute(object())

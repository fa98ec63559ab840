"""The embedded engine end to end on the in-memory backend."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio.lowlevel import checkpoint

from adapters.memory import FakeVideoProvider, MemoryQueue, MemoryStorage, RecordingNotifier
from engine import (
    Engine,
    ExecutionFailed,
    IdempotencyConflict,
    InvalidState,
    ManualClock,
    PlanError,
    Progress,
    ProviderError,
    RetryPolicy,
    UnknownExecution,
    Video,
    add_subtitles,
    compose,
    generate_video,
    lip_sync,
    merge,
    reframe,
)
from engine.models import Change, JobRequest, JobUpdate

pytestmark = pytest.mark.anyio

FR = "https://cdn.example.com/french.mp3"
ES = "https://cdn.example.com/spanish.mp3"

product_demo = compose(
    generate_video(prompt="Scene 1", duration=3),
    generate_video(prompt="Scene 2", duration=3),
    generate_video(prompt="Scene 3", duration=3),
    merge(transition="crossfade"),
)


def make_engine(provider: FakeVideoProvider, **options: Any) -> Engine:
    options.setdefault("notifier", RecordingNotifier())
    options.setdefault("keep_journal", True)
    return Engine.in_memory(provider=provider, **options)


async def test_seed_example_1_base_once_variants_after_it_in_parallel() -> None:
    provider = FakeVideoProvider(latency=0.02)
    notifier = RecordingNotifier()
    async with make_engine(provider, notifier=notifier, concurrency=8) as engine:
        base = await product_demo.execute(engine)
        french = compose(product_demo, lip_sync(audio_url=FR), add_subtitles(language="fr"))
        spanish = compose(product_demo, lip_sync(audio_url=ES), add_subtitles(language="es"))
        fr = await french.execute(
            engine,
            base_execution_id=base.id,
            webhook_url="https://api.example.com/webhook/french",
            webhook_secret="secret123-of-at-least-16-bytes",
        )
        es = await spanish.execute(engine, base_execution_id=base.id)
        base_video = await base.wait(timeout=10)
        fr_video = await fr.wait(timeout=10)
        es_video = await es.wait(timeout=10)

    assert base_video.duration == pytest.approx(9 - 2 * 1.0)
    assert fr_video.duration == es_video.duration == base_video.duration
    base_calls = provider.calls_for(base.id)
    assert sorted(c.job_id for c in base_calls) == ["job1", "job2", "job3", "job4"]
    assert [c.job_id for c in provider.calls_for(fr.id)] == ["job1", "job2"]
    merge_done = next(c.finished_at for c in base_calls if c.job_id == "job4")
    assert merge_done is not None
    variant_roots = [
        c for c in provider.calls if c.execution_id in (fr.id, es.id) and c.job_id == "job1"
    ]
    assert all(c.started_at >= merge_done for c in variant_roots)
    assert variant_roots[0].inputs == (base_video,)
    # Both variants' first jobs overlapped in time: they ran in parallel.
    a, b = variant_roots
    assert a.finished_at is not None and b.finished_at is not None
    assert a.started_at < b.finished_at and b.started_at < a.finished_at
    assert [n.execution_id for n in notifier.deliveries].count(fr.id) == 1
    hooked = notifier.for_execution(fr.id)[0]
    assert hooked.webhook is not None and hooked.webhook.secret == "secret123-of-at-least-16-bytes"
    assert hooked.payload["video"]["duration"] == fr_video.duration


async def test_seed_example_2_progress_and_completion_callbacks() -> None:
    provider = FakeVideoProvider()
    seen: list[Progress] = []
    videos: list[Video] = []
    pipeline = compose(generate_video(prompt="A beautiful landscape"), reframe(aspect_ratio="9:16"))
    pipeline.on_progress(seen.append)
    async with make_engine(provider) as engine:
        execution = await pipeline.execute(engine)
        execution.on_complete(videos.append)
        video = await execution.wait(timeout=5)
        await anyio.lowlevel.checkpoint()
    assert videos == [video]
    assert video.aspect_ratio == "9:16" and (video.width, video.height) == (720, 1280)
    assert seen[-1].completed_jobs == 2 and seen[-1].percent == 100.0
    assert seen[-1].status == "completed"
    completed_counts = [p.completed_jobs for p in seen]
    assert completed_counts == sorted(completed_counts)


async def test_seed_example_3_webhook_only() -> None:
    notifier = RecordingNotifier()
    async with make_engine(FakeVideoProvider(), notifier=notifier) as engine:
        execution = await compose(
            generate_video(prompt="Long video"), lip_sync(audio_url="https://x.test/a.mp3")
        ).execute(engine, webhook_url="https://api.example.com/hook", webhook_secret="s" * 16)
        await execution.wait(timeout=5)
        with anyio.fail_after(5):
            [delivery] = await notifier.wait_for(1)
    assert delivery.payload["executionId"] == execution.id
    assert delivery.payload["status"] == "completed"


async def test_status_report_is_the_seed_body() -> None:
    async with make_engine(FakeVideoProvider()) as engine:
        execution = await product_demo.execute(engine)
        await execution.wait(timeout=5)
        body = (await engine.status(execution.id)).to_json()
    assert body["status"] == "completed"
    assert body["progress"] == 100.0
    assert body["totalJobs"] == 4 and body["completedJobs"] == 4
    assert body["currentJob"] is None
    assert set(body["result"]) == {"url", "duration", "aspectRatio", "width", "height", "status"}


async def test_unknown_base_is_rejected_at_submit() -> None:
    async with make_engine(FakeVideoProvider()) as engine:
        with pytest.raises(UnknownExecution) as caught:
            await compose(lip_sync(audio_url=FR)).execute(engine, base_execution_id="exec_nope")
    assert caught.value.field == "base_execution_id"
    assert str(caught.value) == "unknown execution 'exec_nope' (given as base_execution_id)"


async def test_root_transform_without_base_is_a_plan_error() -> None:
    async with make_engine(FakeVideoProvider()) as engine:
        with pytest.raises(PlanError):
            await compose(lip_sync(audio_url=FR)).execute(engine)


async def test_variant_of_completed_base_starts_at_once_and_chains_work() -> None:
    provider = FakeVideoProvider()
    async with make_engine(provider) as engine:
        base = await product_demo.execute(engine)
        base_video = await base.wait(timeout=5)
        first = await compose(reframe(aspect_ratio="1:1")).execute(
            engine, base_execution_id=base.id
        )
        second = await compose(add_subtitles(language="de")).execute(
            engine, base_execution_id=first.id
        )
        third = await compose(lip_sync(audio_url=FR)).execute(engine, base_execution_id=second.id)
        final = await third.wait(timeout=5)
    assert final.aspect_ratio == "1:1"
    assert final.duration == base_video.duration
    [sub] = provider.calls_for(second.id)
    assert sub.inputs[0].aspect_ratio == "1:1"


async def test_transient_failures_retry_on_the_engine_clock_with_one_idempotency_key() -> None:
    clock = ManualClock()
    provider = FakeVideoProvider()
    provider.fail_next("job1", times=2)
    retry = RetryPolicy(max_attempts=3, initial_delay=10, jitter=False)
    async with make_engine(provider, clock=clock, retry=retry) as engine:
        execution = await compose(generate_video(prompt="x")).execute(engine)
        await anyio.wait_all_tasks_blocked()
        assert [c.attempt for c in provider.calls] == [1]
        clock.advance(9.9)
        await anyio.wait_all_tasks_blocked()
        assert len(provider.calls) == 1
        clock.advance(0.1)
        await anyio.wait_all_tasks_blocked()
        assert len(provider.calls) == 2
        clock.advance(20)  # second delay: 10 * 2
        video = await execution.wait(timeout=5)
        metrics = await engine.metrics()
    assert [c.attempt for c in provider.calls] == [1, 2, 3]
    assert len({c.idempotency_key for c in provider.calls}) == 1
    assert video.url.endswith(f"{execution.id}/job1.mp4")
    assert metrics.retries == 2 and metrics.attempts == 3


async def test_permanent_failure_fails_execution_cancels_unstarted_jobs_and_dependents() -> None:
    provider = FakeVideoProvider()
    provider.fail_next("job2", retryable=False, message="content policy")
    notifier = RecordingNotifier()
    errors: list[ExecutionFailed] = []
    async with make_engine(provider, notifier=notifier, concurrency=1) as engine:
        base = await product_demo.execute(engine)
        base.on_error(errors.append)
        variant = await compose(lip_sync(audio_url=FR)).execute(engine, base_execution_id=base.id)
        chained = await compose(reframe(aspect_ratio="9:16")).execute(
            engine, base_execution_id=variant.id
        )
        with pytest.raises(ExecutionFailed) as failed:
            await base.wait(timeout=5)
        with pytest.raises(ExecutionFailed) as variant_failed:
            await variant.wait(timeout=5)
        with pytest.raises(ExecutionFailed) as chained_failed:
            await chained.wait(timeout=5)
        record = await engine.get(base.id)
        await anyio.wait_all_tasks_blocked()
    assert failed.value.code == "job_failed" and failed.value.job_id == "job2"
    assert "content policy" in str(failed.value)
    assert errors == [failed.value]
    assert variant_failed.value.code == "base_failed"
    assert chained_failed.value.code == "base_failed"
    statuses = {job.id: job.status for job in record.jobs}
    assert statuses == {
        "job1": "completed",
        "job2": "failed",
        "job3": "cancelled",
        "job4": "cancelled",
    }
    assert {c.job_id for c in provider.calls_for(base.id)} == {"job1", "job2"}
    assert provider.calls_for(variant.id) == []
    ended = [n.execution_id for n in notifier.deliveries]
    assert sorted(ended) == sorted([base.id, variant.id, chained.id])


async def test_variant_submitted_after_base_failed_fails_with_base_failed() -> None:
    provider = FakeVideoProvider()
    provider.fail_next("job1", retryable=False)
    async with make_engine(provider) as engine:
        base = await compose(generate_video(prompt="x")).execute(engine)
        with pytest.raises(ExecutionFailed):
            await base.wait(timeout=5)
        variant = await compose(lip_sync(audio_url=FR)).execute(engine, base_execution_id=base.id)
        with pytest.raises(ExecutionFailed) as failed:
            await variant.wait(timeout=5)
    assert failed.value.code == "base_failed"


class Gate:
    """A provider hook that holds chosen jobs until released."""

    def __init__(self, *job_ids: str) -> None:
        self.job_ids = set(job_ids)
        self.started: set[str] = set()
        self.release = anyio.Event()
        self.cancelled: list[str] = []

    async def __call__(self, request: JobRequest) -> None:
        if request.job_id in self.job_ids:
            self.started.add(request.job_id)
            try:
                await self.release.wait()
            except anyio.get_cancelled_exc_class():
                self.cancelled.append(request.job_id)
                raise


async def test_cancel_stops_running_jobs_and_fails_dependents() -> None:
    gate = Gate("job1")
    provider = FakeVideoProvider(on_call=gate)
    async with make_engine(provider, concurrency=2) as engine:
        base = await compose(generate_video(prompt="a"), reframe(aspect_ratio="1:1")).execute(
            engine
        )
        variant = await compose(lip_sync(audio_url=FR)).execute(engine, base_execution_id=base.id)
        await anyio.wait_all_tasks_blocked()
        assert gate.started == {"job1"}
        await engine.cancel(base.id)
        with pytest.raises(ExecutionFailed) as cancelled:
            await base.wait(timeout=5)
        with pytest.raises(ExecutionFailed) as dependent:
            await variant.wait(timeout=5)
        await anyio.wait_all_tasks_blocked()
        record = await engine.get(base.id)
        await engine.cancel(base.id)  # already ended: a no-op
    assert cancelled.value.status == "cancelled"
    assert dependent.value.code == "base_failed"
    assert gate.cancelled == ["job1"]
    assert [job.status for job in record.jobs] == ["cancelled", "cancelled"]
    assert [c.job_id for c in provider.calls] == ["job1"]


class SwallowingProvider:
    """Catches the cancellation of its first call and returns a video anyway, as a careless
    provider might; every later call passes one checkpoint (where a cancellation would land)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.swallowed = 0

    async def run(self, request: JobRequest) -> Video:
        self.calls.append(f"{request.execution_id}/{request.job_id}")
        if len(self.calls) == 1:
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                self.swallowed += 1
        else:
            await anyio.lowlevel.checkpoint()
        return Video("fake://swallowed.mp4", 1.0, "16:9", 1280, 720)


async def test_a_worker_goes_on_after_a_provider_swallows_its_cancellation() -> None:
    # One worker: after the cancelled call it must leave its cancelled scope before it runs the
    # next job, already queued (inside that scope the job's provider call would be cancelled at
    # its first checkpoint and the job left running forever); the swallowed call's video is
    # dropped (the job was cancelled, not completed).
    provider = SwallowingProvider()
    async with Engine.in_memory(
        provider=provider, notifier=RecordingNotifier(), concurrency=1
    ) as engine:
        first = await compose(generate_video(prompt="a"), reframe(aspect_ratio="1:1")).execute(
            engine
        )
        await anyio.wait_all_tasks_blocked()
        second = await compose(generate_video(prompt="b"), reframe(aspect_ratio="1:1")).execute(
            engine
        )
        await engine.cancel(first.id)
        with pytest.raises(ExecutionFailed) as cancelled:
            await first.wait(timeout=5)
        result = await second.wait(timeout=5)
        record = await engine.get(first.id)
    assert cancelled.value.status == "cancelled"
    assert provider.swallowed == 1
    assert [job.status for job in record.jobs] == ["cancelled", "cancelled"]
    assert result.url == "fake://swallowed.mp4"
    assert provider.calls == [f"{first.id}/job1", f"{second.id}/job1", f"{second.id}/job2"]


async def test_resume_after_failure() -> None:
    provider = FakeVideoProvider()
    provider.fail_next("job3", retryable=False)
    async with make_engine(provider, concurrency=1) as engine:
        execution = await compose(product_demo, reframe(aspect_ratio="9:16")).execute(engine)
        with pytest.raises(ExecutionFailed):
            await execution.wait(timeout=5)
        before = {c.job_id for c in provider.calls}
        first_run = len(provider.calls)
        await engine.resume(execution.id)
        with anyio.fail_after(5):
            final = [p async for p in engine.watch(execution.id)][-1]
        assert final.status == "completed"
        with pytest.raises(InvalidState):
            await engine.resume(execution.id)
    rerun = [c.job_id for c in provider.calls[first_run:]]
    assert before == {"job1", "job2", "job3"}
    assert sorted(rerun) == ["job3", "job4", "job5"]
    assert [c.attempt for c in provider.calls if c.job_id == "job3"] == [1, 2]


async def test_callbacks_fire_once_plain_or_async_and_errors_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    async def async_done(video: Video) -> None:
        await checkpoint()
        calls.append("async")

    def broken(video: Video) -> None:
        raise RuntimeError("user bug")

    async with make_engine(FakeVideoProvider()) as engine:
        execution = await compose(generate_video(prompt="x")).execute(engine)
        execution.on_complete(lambda v: calls.append("plain"))
        execution.on_complete(async_done)
        execution.on_complete(broken)
        await execution.wait(timeout=5)
        execution.on_complete(lambda v: calls.append("late"))
        await anyio.wait_all_tasks_blocked()
        # the engine survived the broken callback
        again = await compose(generate_video(prompt="y")).execute(engine)
        await again.wait(timeout=5)
    assert sorted(calls) == ["async", "late", "plain"]
    assert any("user bug" in r.getMessage() or r.exc_info for r in caplog.records)


async def test_watch_yields_progress_until_terminal() -> None:
    async with make_engine(FakeVideoProvider(), concurrency=1) as engine:
        execution = await product_demo.execute(engine)
        seen = [p async for p in engine.watch(execution.id)]
    assert seen[-1].status == "completed" and seen[-1].completed_jobs == 4
    assert [p.completed_jobs for p in seen] == sorted(p.completed_jobs for p in seen)


async def test_each_change_of_progress_reaches_callbacks_and_watch_once() -> None:
    # Three scenes start at once: three starts, one change (0/4, running job1) to tell.
    provider = FakeVideoProvider(latency=0.02)
    seen: list[Progress] = []
    pipeline = compose(product_demo)
    pipeline.on_progress(seen.append)
    async with make_engine(provider, concurrency=8) as engine:
        execution = await pipeline.execute(engine)
        watched = [p async for p in engine.watch(execution.id)]
        await execution.wait(timeout=5)
    for told in (seen, watched):
        assert told[-1].status == "completed" and told[-1].completed_jobs == 4
        repeats = [a for a, b in pairwise(told) if a == b]
        assert repeats == []
    assert [(p.completed_jobs, p.current_job) for p in seen].count((0, "job1")) == 1


async def test_idempotent_submit() -> None:
    async with make_engine(FakeVideoProvider()) as engine:
        first = await product_demo.execute(engine, idempotency_key="k1")
        again = await product_demo.execute(engine, idempotency_key="k1")
        assert again.id == first.id
        with pytest.raises(IdempotencyConflict):
            await compose(generate_video(prompt="other")).execute(engine, idempotency_key="k1")


async def test_completion_is_written_once_and_graph_holds_only_unfinished_work() -> None:
    provider = FakeVideoProvider()
    async with make_engine(provider, concurrency=4) as engine:
        handles = [await product_demo.execute(engine) for _ in range(20)]
        for handle in handles:
            await handle.wait(timeout=5)
        assert engine.scheduler.graph.number_of_nodes() == 0
        assert engine.scheduler.stats().live_executions == 0
        assert engine.scheduler.stats().live_jobs == 0
        storage = engine.storage
        metrics = await engine.metrics()
    journal = storage.journal  # type: ignore[union-attr]
    completions = [
        (c.execution_id, c.job_id)
        for c in journal
        if isinstance(c, JobUpdate) and c.status == "completed"
    ]
    assert len(completions) == len(set(completions)) == 80
    assert metrics.executions == {"completed": 20}
    assert metrics.success_rate == 1.0
    assert metrics.duration_p50 is not None and metrics.duration_p95 is not None


async def test_engine_requires_async_with() -> None:
    engine = make_engine(FakeVideoProvider())
    with pytest.raises(InvalidState):
        await product_demo.execute(engine)


async def test_provider_exception_other_than_provider_error_is_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts: list[int] = []

    def flaky(request: JobRequest) -> None:
        attempts.append(request.attempt)
        if request.attempt == 1:
            raise ConnectionError("network blip")

    retry = RetryPolicy(initial_delay=0, jitter=False)
    with caplog.at_level(logging.WARNING):
        async with make_engine(FakeVideoProvider(on_call=flaky), retry=retry) as engine:
            execution = await compose(generate_video(prompt="x")).execute(engine)
            await execution.wait(timeout=5)
    assert attempts == [1, 2]
    assert any("network blip" in r.getMessage() for r in caplog.records)


async def test_provider_error_retryable_exhausts_attempts() -> None:
    provider = FakeVideoProvider()
    provider.fail_next("job1", times=5, message="busy")
    retry = RetryPolicy(max_attempts=2, initial_delay=0, jitter=False)
    async with make_engine(provider, retry=retry) as engine:
        execution = await compose(generate_video(prompt="x")).execute(engine)
        with pytest.raises(ExecutionFailed) as failed:
            await execution.wait(timeout=5)
    assert "after 2 attempts" in str(failed.value)
    assert isinstance(ProviderError("x"), Exception)


class SlowStartStorage(MemoryStorage):
    """Its write of a job's start is done, but the caller resumes later (as with a threaded
    store), opening a window for a cancel between the write and the provider call."""

    def __init__(self) -> None:
        super().__init__()
        self.writing_start = anyio.Event()
        self.unblock = anyio.Event()

    async def apply(self, changes: Sequence[Change], *, owner: str | None = None) -> None:
        await super().apply(changes, owner=owner)
        if any(isinstance(c, JobUpdate) and c.status == "processing" for c in changes):
            self.writing_start.set()
            await self.unblock.wait()


async def test_cancel_while_a_job_start_is_written_stops_the_job() -> None:
    storage, provider = SlowStartStorage(), FakeVideoProvider()
    engine = Engine(
        storage=storage, queue=MemoryQueue(), provider=provider, notifier=RecordingNotifier()
    )
    async with engine:
        execution_id = await engine.submit(compose(generate_video(prompt="x")).plan())
        with anyio.fail_after(5):
            await storage.writing_start.wait()
        await engine.cancel(execution_id)
        storage.unblock.set()
        await anyio.wait_all_tasks_blocked()
        assert (await engine.get(execution_id)).status == "cancelled"
    assert provider.calls == []


async def test_status_of_a_running_execution_matches_the_store() -> None:
    gate = Gate("job2")
    async with make_engine(FakeVideoProvider(on_call=gate), concurrency=2) as engine:
        execution_id = await engine.submit(
            compose(generate_video(prompt="a"), reframe(aspect_ratio="1:1")).plan()
        )
        await anyio.wait_all_tasks_blocked()
        live = await engine.status(execution_id)
        stored = (await engine.get(execution_id)).status_report()
        with pytest.raises(UnknownExecution):
            await engine.status(execution_id, tenant="someone else")
        gate.release.set()
    assert live == stored
    assert (live.status, live.current_job, live.completed_jobs) == ("processing", "job2", 1)
    assert live.to_json()["progress"] == 50.0

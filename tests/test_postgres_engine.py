"""Engines on one PostgreSQL database (``Engine.postgres``), in this process: job-level dispatch.

Several engines share a fresh schema: an API node (``concurrency=0``) submits, workers with
``job_types`` run what they serve, limits hold across all of them, cancels reach the worker
running the job, and every ending notifies once. Multi-process runs (SIGKILL included) are in
``test_postgres_fleet.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import psycopg
import pytest
from pg_support import DSN, needs_postgres

from adapters.memory import FakeVideoProvider, RecordingNotifier
from engine import (
    ConfigError,
    Engine,
    ExecutionFailed,
    JobRequest,
    ProviderError,
    RetryPolicy,
    Video,
    add_subtitles,
    compose,
    generate_video,
    lip_sync,
    merge,
)

pytestmark = [pytest.mark.anyio, needs_postgres]

PRODUCT_DEMO = compose(
    generate_video(prompt="Scene 1", duration=3),
    generate_video(prompt="Scene 2", duration=3),
    generate_video(prompt="Scene 3", duration=3),
    merge(transition="crossfade", transition_duration=0.5),
)
SOURCES = ("generate",)
EDITS = ("merge", "lipSync", "addSubtitles", "reframe")


def variant(language: str) -> Any:
    return compose(
        PRODUCT_DEMO,
        lip_sync(audio_url=f"https://cdn.example.com/{language}.mp3"),
        add_subtitles(language=language),
    )


@asynccontextmanager
async def engines(schema: str, *specs: dict[str, Any]) -> AsyncIterator[list[Engine]]:
    """Engines on one schema, entered in order and left in reverse."""
    async with AsyncExitStack() as stack:
        out = []
        for spec in specs:
            options = {"notifier": RecordingNotifier(), "poll_interval": 0.2, **spec}
            engine = Engine.postgres(DSN, schema=schema, **options)
            out.append(await stack.enter_async_context(engine))
        yield out


async def test_the_seed_example_runs_on_one_engine(schema: str) -> None:
    provider = FakeVideoProvider(latency=0.01)
    async with engines(schema, {"provider": provider, "concurrency": 8}) as (engine,):
        base = await PRODUCT_DEMO.execute(engine)
        french = await variant("fr").execute(engine, base_execution_id=base.id)
        spanish = await variant("es").execute(engine, base_execution_id=base.id)
        video = await base.wait(timeout=20)
        assert video.duration == pytest.approx(8.0)
        for handle in (french, spanish):
            assert (await handle.wait(timeout=20)).duration == pytest.approx(8.0)
        report = await engine.status(french.id)
        assert report.to_json()["status"] == "completed"
        assert report.completed_jobs == report.total_jobs == 2
    calls = provider.calls
    assert len(calls) == 8  # the base ran once: 3 generates and a merge, then 2 x 2 edits
    merge_done = next(c.finished_at for c in calls if c.type == "merge")
    assert merge_done is not None
    edits = [c for c in calls if c.type in ("lipSync", "addSubtitles")]
    assert all(c.started_at >= merge_done for c in edits)


async def test_types_route_jobs_and_an_api_node_runs_none(schema: str) -> None:
    makers, editors = FakeVideoProvider(latency=0.05), FakeVideoProvider(latency=0.05)
    async with engines(
        schema,
        {"concurrency": 0},
        {"provider": makers, "concurrency": 4, "job_types": SOURCES},
        {"provider": editors, "concurrency": 4, "job_types": EDITS},
    ) as (api, _, _):
        base = await PRODUCT_DEMO.execute(api)
        variants = [
            await variant(lang).execute(api, base_execution_id=base.id) for lang in ("fr", "es")
        ]
        for handle in [base, *variants]:
            await handle.wait(timeout=20)
    assert {c.type for c in makers.calls} == {"generate"}
    assert {c.type for c in editors.calls} == {"merge", "lipSync", "addSubtitles"}
    lips = sorted((c for c in editors.calls if c.type == "lipSync"), key=lambda c: c.started_at)
    first_done = lips[0].finished_at
    assert first_done is not None
    assert lips[1].started_at < first_done, "the two variants must overlap"


async def test_a_limit_holds_across_engines_even_one_started_without_it(schema: str) -> None:
    running = 0
    peak = 0

    class Counting:
        async def run(self, request: JobRequest) -> Video:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            try:
                await anyio.sleep(0.05)
            finally:
                running -= 1
            return Video("https://v/x.mp4", 1.0, "16:9", 1280, 720)

    one = generate_video(prompt="p", duration=1)
    async with engines(
        schema,
        {"provider": Counting(), "concurrency": 8, "limits": {"generate": 2}},
        {"provider": Counting(), "concurrency": 8},
    ) as (first, _):
        handles = [await compose(one).execute(first) for _ in range(12)]
        for handle in handles:
            await handle.wait(timeout=20)
    assert peak == 2


async def test_a_cancel_on_the_api_node_stops_the_worker_running_the_job(schema: str) -> None:
    started = anyio.Event()
    stopped = anyio.Event()

    class Slow:
        async def run(self, request: JobRequest) -> Video:
            started.set()
            try:
                await anyio.sleep(60)
            finally:
                stopped.set()
            raise AssertionError("unreachable")

    async with engines(schema, {"concurrency": 0}, {"provider": Slow(), "concurrency": 2}) as (
        api,
        worker,
    ):
        handle = await compose(
            generate_video(prompt="slow"), generate_video(prompt="b"), merge()
        ).execute(api)
        dependent = await compose(lip_sync(audio_url="https://a/x.mp3")).execute(
            api, base_execution_id=handle.id
        )
        with anyio.fail_after(10):
            await started.wait()
        await api.cancel(handle.id)
        with anyio.fail_after(5):
            await stopped.wait()
        with pytest.raises(ExecutionFailed) as failed:
            await handle.wait(timeout=10)
        assert failed.value.status == "cancelled"
        with pytest.raises(ExecutionFailed) as base_failed:
            await dependent.wait(timeout=10)
        assert base_failed.value.code == "base_failed"
        stored = await worker.get(handle.id)
        assert {job.status for job in stored.jobs} == {"cancelled"}


async def test_retries_then_failure_propagate_and_resume_finishes(schema: str) -> None:
    provider = FakeVideoProvider()
    provider.fail_next("job2", times=2, message="model overloaded")
    retry = RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=False)
    notifier = RecordingNotifier()
    async with engines(
        schema, {"provider": provider, "retry": retry, "concurrency": 4, "notifier": notifier}
    ) as (engine,):
        base = await compose(
            generate_video(prompt="a"), generate_video(prompt="b"), merge()
        ).execute(engine, webhook_url="https://hooks.example/x", webhook_secret="s" * 16)
        with pytest.raises(ExecutionFailed) as failed:
            await base.wait(timeout=20)
        assert failed.value.code == "job_failed"
        assert failed.value.job_id == "job2"
        assert "model overloaded (after 2 attempts)" in (failed.value.message or "")
        stored = await engine.get(base.id)
        assert stored.job("job2").attempts == 2
        metrics = await engine.metrics()
        assert metrics.retries >= 1
        await engine.resume(base.id)
        with anyio.fail_after(20):
            async for progress in engine.watch(base.id):
                if progress.status == "completed":
                    break
        resumed = await engine.get(base.id)
        assert resumed.status == "completed"
        assert resumed.job("job1").attempts == 1  # reused, not run again
        with anyio.fail_after(10):
            await notifier.wait_for(2)
    events = [n.event_id for n in notifier.deliveries]
    assert len(events) == len(set(events)) == 2  # one per ending: failed, then completed


async def test_idempotent_submits_from_two_nodes_make_one_execution(schema: str) -> None:
    async with engines(schema, {"concurrency": 0}, {"concurrency": 0}) as (one, two):
        plan = PRODUCT_DEMO.plan()
        ids = await _gather(
            [lambda e=e: e.submit(plan, idempotency_key="k1") for e in (one, two, one, two)]
        )
    assert len(set(ids)) == 1


class InstantProvider:
    async def run(self, request: JobRequest) -> Video:
        return Video("https://cdn.example.com/v.mp4", 3.0, "16:9", 1280, 720)


async def test_a_busy_worker_claims_in_full_batches(schema: str) -> None:
    """Instant jobs: slots free up a whole claimed batch at a time (one group commit), and the
    claimer waits for outcomes being written rather than claiming a job or two per transaction
    for each straggler. Jobs claimed together share their ``started_at`` (the claim's time)."""
    concurrency, executions = 64, 200
    async with engines(schema, {"concurrency": 0}) as (api,):
        for _ in range(executions):
            await PRODUCT_DEMO.execute(api)
    worker = {"provider": InstantProvider(), "concurrency": concurrency}
    async with (
        engines(schema, worker),
        await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn,
    ):
        with anyio.fail_after(60):
            while True:
                cur = await conn.execute(
                    f'SELECT count(*) FROM "{schema}".executions WHERE status = %s',
                    ("completed",),
                )
                row = await cur.fetchone()
                if row is not None and row[0] == executions:
                    break
                await anyio.sleep(0.05)
        cur = await conn.execute(
            f'SELECT count(DISTINCT started_at), count(*) FROM "{schema}".jobs'
        )
        row = await cur.fetchone()
    assert row is not None
    claims, jobs = row
    assert jobs == executions * 4
    assert jobs / claims >= concurrency / 2, f"{jobs} jobs in {claims} claims"


async def test_options_that_need_a_board_are_refused_elsewhere() -> None:
    with pytest.raises(ConfigError, match="job board"):
        Engine.in_memory(job_types=["generate"])
    with pytest.raises(ConfigError, match="job_types"):
        Engine.postgres(DSN, job_types=["teleport"])
    with pytest.raises(ConfigError, match=">= 0"):
        Engine.postgres(DSN, concurrency=-1)


async def test_an_unknown_job_type_fails_the_job_at_once(schema: str) -> None:
    class Refusing:
        async def run(self, request: JobRequest) -> Video:
            raise ProviderError("no such model", retryable=False)

    async with engines(schema, {"provider": Refusing()}) as (engine,):
        handle = await compose(generate_video(prompt="x")).execute(engine)
        with pytest.raises(ExecutionFailed, match="no such model"):
            await handle.wait(timeout=10)


async def _gather(calls: Sequence[Any]) -> list[str]:
    out: list[str] = [""] * len(calls)

    async def one(i: int) -> None:
        out[i] = await calls[i]()

    async with anyio.create_task_group() as tg:
        for i in range(len(calls)):
            tg.start_soon(one, i)
    return out

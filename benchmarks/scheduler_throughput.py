"""Scheduler throughput and dispatch latency on the in-memory backend.

    python benchmarks/scheduler_throughput.py            # 10,000 and 100,000 executions
    python benchmarks/scheduler_throughput.py --quick    # 2,000 and 10,000

Each execution has the seed's five-job shape: three ``generate``, a ``merge`` of them and a
``reframe`` of the merge. The provider does nothing, so what is measured is the engine: plan
admission, the DAG bookkeeping, storage writes, the queue and the workers. Beside it, in the same
process, runs a bare asyncio DAG dispatcher (in-degree counts and an ``asyncio.Queue``, nothing
else) on the same work: the floor for any Python dispatcher on this machine.

Dispatch latency is measured separately, on a light load (one chain execution at a time): the
time from a provider call returning to its dependent's provider call starting.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import time
from collections.abc import Sequence

import anyio

from adapters.memory import RecordingNotifier
from engine import (
    Engine,
    ExecutionPlan,
    JobRequest,
    Video,
    compose,
    generate_video,
    lip_sync,
    merge,
    reframe,
)

FIVE_JOBS = compose(
    generate_video(prompt="Scene 1", duration=3),
    generate_video(prompt="Scene 2", duration=3),
    generate_video(prompt="Scene 3", duration=3),
    merge(transition="crossfade"),
    reframe(aspect_ratio="9:16"),
).plan()

CHAIN = compose(
    generate_video(prompt="Scene 1"),
    reframe(aspect_ratio="9:16"),
    lip_sync(audio_url="https://cdn.example.com/a.mp3"),
    reframe(aspect_ratio="1:1"),
    reframe(aspect_ratio="16:9"),
).plan()

VIDEO = Video("noop://video.mp4", 3.0, "16:9", 1280, 720)
WORKERS = 16


class NoopProvider:
    async def run(self, request: JobRequest) -> Video:
        return VIDEO


class StampingProvider:
    """Records when each call starts and returns, for dispatch latency."""

    def __init__(self) -> None:
        self.started: dict[tuple[str, str], float] = {}
        self.finished: dict[tuple[str, str], float] = {}

    async def run(self, request: JobRequest) -> Video:
        key = (request.execution_id, request.job_id)
        self.started[key] = time.perf_counter()
        self.finished[key] = time.perf_counter()
        return VIDEO


async def engine_run(plan: ExecutionPlan, executions: int) -> float:
    """Seconds to submit ``executions`` copies of ``plan`` and run them all to completion."""
    notifier = RecordingNotifier()
    async with Engine.in_memory(
        provider=NoopProvider(), notifier=notifier, concurrency=WORKERS
    ) as engine:
        gc.collect()
        started = time.perf_counter()
        for _ in range(executions):
            await engine.submit(plan)
        await notifier.wait_for(executions)
        elapsed = time.perf_counter() - started
        metrics = await engine.metrics()
        if metrics.executions.get("completed") != executions:
            raise RuntimeError(f"not every execution completed: {metrics.executions}")
    return elapsed


async def bare_run(plan: ExecutionPlan, executions: int) -> float:
    """The same work on a bare dispatcher: in-degree counts and an asyncio.Queue."""
    ids = [job.id for job in plan.jobs]
    index = {job_id: i for i, job_id in enumerate(ids)}
    successors: list[list[int]] = [[] for _ in ids]
    for i, job in enumerate(plan.jobs):
        for dep in job.depends_on:
            successors[index[dep]].append(i)
    in_degree = [len(job.depends_on) for job in plan.jobs]
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    waiting: list[list[int]] = []
    remaining = executions * len(ids)
    done = asyncio.Event()
    provider = NoopProvider()
    request = JobRequest("x", "job1", "generate", {}, (), 1, "x/job1")

    async def worker() -> None:
        nonlocal remaining
        while True:
            execution, job = await queue.get()
            await provider.run(request)
            counts = waiting[execution]
            for successor in successors[job]:
                counts[successor] -= 1
                if counts[successor] == 0:
                    queue.put_nowait((execution, successor))
            remaining -= 1
            if remaining == 0:
                done.set()

    workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
    gc.collect()
    started = time.perf_counter()
    for execution in range(executions):
        waiting.append(list(in_degree))
        for i, degree in enumerate(in_degree):
            if degree == 0:
                queue.put_nowait((execution, i))
        await asyncio.sleep(0)
    await done.wait()
    elapsed = time.perf_counter() - started
    for task in workers:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    return elapsed


async def dispatch_latency(executions: int) -> list[float]:
    """Seconds from a job's provider call returning to its dependent's call starting."""
    provider = StampingProvider()
    notifier = RecordingNotifier()
    gaps: list[float] = []
    async with Engine.in_memory(provider=provider, notifier=notifier, concurrency=4) as engine:
        for n in range(executions):
            execution_id = await engine.submit(CHAIN)
            await notifier.wait_for(n + 1)
            for job in CHAIN.jobs:
                for dep in job.depends_on:
                    finished = provider.finished[(execution_id, dep)]
                    gaps.append(provider.started[(execution_id, job.id)] - finished)
    return gaps


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(sizes: Sequence[int], latency_executions: int, rounds: int) -> dict[str, object]:
    jobs_per = len(FIVE_JOBS.jobs)
    results: dict[str, object] = {"workers": WORKERS, "jobsPerExecution": jobs_per}
    per_job: dict[int, float] = {}
    for size in sizes:
        engine_times = [await engine_run(FIVE_JOBS, size) for _ in range(rounds)]
        bare_times = [await bare_run(FIVE_JOBS, size) for _ in range(rounds)]
        engine_best, bare_best = min(engine_times), min(bare_times)
        jobs = size * jobs_per
        per_job[size] = engine_best / jobs
        results[str(size)] = {
            "engineJobsPerSecond": round(jobs / engine_best),
            "bareJobsPerSecond": round(jobs / bare_best),
            "bareOverEngine": round(engine_best / bare_best, 2),
            "engineMicrosecondsPerJob": round(1e6 * engine_best / jobs, 2),
        }
        print(
            f"{size:>7} executions ({jobs:>7} jobs): engine {jobs / engine_best:>9,.0f} jobs/s"
            f" | bare asyncio dispatcher {jobs / bare_best:>9,.0f} jobs/s"
            f" | engine takes {engine_best / bare_best:.1f}x the bare time"
        )
    if len(sizes) > 1:
        small, large = min(sizes), max(sizes)
        scaling = per_job[large] / per_job[small]
        results["perJobTimeLargeOverSmall"] = round(scaling, 3)
        print(f"time per job at {large:,} executions / at {small:,}: {scaling:.2f}x")
    gaps = await dispatch_latency(latency_executions)
    p50, p99 = quantile(gaps, 0.50), quantile(gaps, 0.99)
    results["dispatchLatencyP50Ms"] = round(p50 * 1e3, 4)
    results["dispatchLatencyP99Ms"] = round(p99 * 1e3, 4)
    print(
        f"dispatch latency (job done -> dependent starts), {len(gaps)} edges: "
        f"p50 {p50 * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms, mean {statistics.mean(gaps) * 1e3:.3f} ms"
    )
    return results


def cli() -> None:
    parser = argparse.ArgumentParser(description="Scheduler throughput benchmark")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per size; the best counts")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args()
    sizes = [2_000, 10_000] if args.quick else [10_000, 100_000]
    latency = 200 if args.quick else 2_000
    results = anyio.run(main, sizes, latency, args.rounds)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    cli()

"""Durable throughput on SQLite, beside two baselines run in the same command.

    python benchmarks/sqlite_throughput.py            # 10,000 executions; status() on 1M jobs
    python benchmarks/sqlite_throughput.py --quick    # 2,000 executions; status() on 100k jobs

1. The engine on ``Engine.sqlite`` with ``synchronous=FULL``: executions of the seed's five-job
   shape, submitted by 32 concurrent tasks, run by 64 workers with a no-op provider. Every job's
   start and completion is written and fsynced before it is acted on; group commit batches the
   writes of concurrent workers into one transaction.
2. Baseline (a): a bare loop that commits one ``UPDATE`` per job in WAL mode with FULL.
3. Baseline (b): huey's SQLite queue (``pip install huey``) consuming no-op tasks.

Then ``status()`` latency with a million jobs in the file, and the file's bytes per job.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import anyio

from adapters.memory import RecordingNotifier
from adapters.sqlite import SqliteStorage
from engine import Engine, JobRequest, Video, compose, generate_video, merge, reframe
from engine.engine import new_execution_id
from engine.models import Execution
from engine.scheduler import job_infos

FIVE_JOBS = compose(
    generate_video(prompt="Scene 1", duration=3),
    generate_video(prompt="Scene 2", duration=3),
    generate_video(prompt="Scene 3", duration=3),
    merge(transition="crossfade"),
    reframe(aspect_ratio="9:16"),
).plan()
VIDEO = Video("noop://video.mp4", 3.0, "16:9", 1280, 720)


class NoopProvider:
    async def run(self, request: JobRequest) -> Video:
        return VIDEO


def fresh(path: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


async def engine_run(path: Path, executions: int, submitters: int = 32) -> float:
    notifier = RecordingNotifier()
    engine = Engine.sqlite(str(path), provider=NoopProvider(), notifier=notifier, concurrency=256)
    async with engine:
        per_task = executions // submitters

        async def submit_many() -> None:
            for _ in range(per_task):
                await engine.submit(FIVE_JOBS)

        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for _ in range(submitters):
                group.start_soon(submit_many)
        await notifier.wait_for(per_task * submitters)
        elapsed = time.perf_counter() - started
    return elapsed / (per_task * submitters * len(FIVE_JOBS.jobs))


def bare_commits(path: Path, updates: int) -> float:
    """Seconds per job for one committed UPDATE per job, WAL + FULL."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, status TEXT)")
    conn.executemany("INSERT INTO jobs VALUES (?, 'pending')", [(i,) for i in range(updates)])
    started = time.perf_counter()
    for i in range(updates):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE jobs SET status = 'completed' WHERE id = ?", (i,))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed / updates


def huey_consume(path: Path, tasks: int) -> float | None:
    """Seconds per task for huey's SQLite queue to dequeue and run no-op tasks."""
    try:
        from huey import SqliteHuey
    except ImportError:
        return None
    huey = SqliteHuey(filename=str(path), fsync=True)

    @huey.task()  # type: ignore[untyped-decorator]
    def noop() -> None:
        return None

    for _ in range(tasks):
        noop()
    started = time.perf_counter()
    done = 0
    while done < tasks:
        task = huey.dequeue()
        if task is None:
            break
        huey.execute(task)
        done += 1
    elapsed = time.perf_counter() - started
    if done != tasks:
        raise RuntimeError(f"huey ran {done} of {tasks} tasks")
    return elapsed / tasks


def file_bytes(path: Path) -> int:
    """The store's size on disk: the database file and its WAL."""
    return sum(os.path.getsize(f"{path}{s}") for s in ("", "-wal") if os.path.exists(f"{path}{s}"))


async def status_latency(path: Path, jobs: int, samples: int = 2000) -> tuple[float, float, int]:
    """status() p50/p99 (seconds) with ``jobs`` jobs in the file; also bytes per job."""
    storage = SqliteStorage(path, synchronous="NORMAL")
    executions = jobs // len(FIVE_JOBS.jobs)
    infos = job_infos(FIVE_JOBS.jobs)
    ids: list[str] = []
    async with storage:

        async def create_many(count: int) -> None:
            for _ in range(count):
                execution = Execution(new_execution_id(), "pending", infos, time.time())
                await storage.create(execution)
                ids.append(execution.id)

        async with anyio.create_task_group() as group:
            for _ in range(64):
                group.start_soon(create_many, executions // 64)
    size = await anyio.to_thread.run_sync(file_bytes, path)
    per_job = size // (len(ids) * len(FIVE_JOBS.jobs))
    latencies: list[float] = []
    async with SqliteStorage(path) as reader:
        for i in range(samples):
            execution_id = ids[(i * 7919) % len(ids)]
            started = time.perf_counter()
            execution = await reader.get(execution_id)  # what Engine.status() does
            assert execution is not None
            execution.status_report()
            latencies.append(time.perf_counter() - started)
    latencies.sort()
    return latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)], per_job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    executions = 2_000 if args.quick else 10_000
    status_jobs = 100_000 if args.quick else 1_000_000
    baseline_count = 2_000 if args.quick else 5_000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rounds = [anyio.run(engine_run, fresh(root / "engine.db"), executions) for _ in range(2)]
        engine_per_job = min(rounds)
        bare = bare_commits(fresh(root / "bare.db"), baseline_count)
        huey = huey_consume(fresh(root / "huey.db"), baseline_count)
        print(
            f"engine on SQLite (FULL), {executions:,} executions x 5 jobs: "
            f"{1 / engine_per_job:,.0f} durable jobs/s"
        )
        print(f"(a) bare loop, one UPDATE committed per job (FULL): {1 / bare:,.0f} jobs/s")
        if huey is None:
            print("(b) huey not installed: pip install huey (the 'bench' extra)")
        else:
            print(f"(b) huey SqliteHuey consuming no-op tasks: {1 / huey:,.0f} tasks/s")
            print(f"engine / huey: {huey / engine_per_job:.1f}x")
        print(f"engine / bare single-update commits: {bare / engine_per_job:.1f}x")
        p50, p99, per_job = anyio.run(status_latency, fresh(root / "big.db"), status_jobs)
        print(
            f"status() with {status_jobs:,} jobs in the file: p50 {p50 * 1e3:.3f} ms, "
            f"p99 {p99 * 1e3:.3f} ms; file {per_job} bytes per job"
        )


if __name__ == "__main__":
    main()

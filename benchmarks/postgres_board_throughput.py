"""Claim + complete throughput of the PostgreSQL job board, no-op jobs, one process.

    PYTHONPATH=. python benchmarks/postgres_board_throughput.py [--executions 2000] \
        [--workers 8] [--batch 50] [--dsn postgresql://postgres@127.0.0.1:5432/test]

Submits ``--executions`` five-job executions (3 generates, a merge, a reframe) into a fresh
schema, then runs ``--workers`` concurrent loops of ``claim(limit=batch)`` then
``complete(batch)`` until every execution completed; the completions of concurrent loops share
transactions (group commit). Durable: the server's ``synchronous_commit`` is left as it is.
The schema is dropped at the end.
"""

from __future__ import annotations

import argparse
import time
import uuid

import anyio
import psycopg

from adapters.postgres import PostgresBoard
from engine.models import Execution, JobInfo, Video

VIDEO = Video("https://cdn.example/v.mp4", 3.0, "16:9", 1280, 720)


def five_jobs(execution_id: str) -> Execution:
    jobs = (
        *(JobInfo(f"job{n}", "generate", {"prompt": f"s{n}", "duration": 3}) for n in (1, 2, 3)),
        JobInfo("job4", "merge", {"transition": "none"}, ("job1", "job2", "job3")),
        JobInfo("job5", "reframe", {"aspectRatio": "9:16"}, ("job4",)),
    )
    return Execution(execution_id, "pending", jobs, time.time())


async def main(dsn: str, executions: int, workers: int, batch: int) -> None:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        async with PostgresBoard(dsn, schema=schema, pool_max=workers + 4) as board:
            await board.register("bench", now=time.time(), lease_until=time.time() + 3600)
            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for w in range(workers):

                    async def submitter(w: int = w) -> None:
                        for n in range(w, executions, workers):
                            await board.submit(five_jobs(f"e{n}"), None, now=time.time())

                    tg.start_soon(submitter)
            submit_s = time.perf_counter() - t0
            jobs = executions * 5
            done = 0
            t0 = time.perf_counter()

            async def worker() -> None:
                nonlocal done
                idle = 0
                while done < jobs:
                    claims = await board.claim("bench", limit=batch, now=time.time())
                    if not claims:
                        idle += 1
                        await anyio.sleep(0.001 * min(idle, 10))
                        continue
                    idle = 0
                    out = await board.complete([(c, VIDEO) for c in claims], now=time.time())
                    done += len(claims) - len(out.refused)

            async with anyio.create_task_group() as tg:
                for _ in range(workers):
                    tg.start_soon(worker)
            run_s = time.perf_counter() - t0
            counts = await board.counts()
            print(
                f"{executions} executions ({jobs} jobs) submitted in {submit_s:.2f}s "
                f"({executions / submit_s:.0f} executions/s)"
            )
            print(
                f"claim+complete: {jobs} jobs in {run_s:.2f}s = {jobs / run_s:.0f} jobs/s "
                f"({workers} loops, batch {batch}, {board.complete_transactions} completion "
                f"transactions); executions: {counts}"
            )
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--executions", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    anyio.run(main, args.dsn, args.executions, args.workers, args.batch)

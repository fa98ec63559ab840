"""The fleet as real processes: ``python -m contrib.serve --postgres`` and ``python -m
contrib.worker`` children on a fresh schema, their provider calls logged in the same database
(``fleet_provider``), checked from that log and the board's tables.

- the three-node walkthrough: an API node, a generate worker and two edit workers run the seed's
  Example 1 submitted over HTTP;
- chaos: workers SIGKILLed at random moments while executions stream in (``FLEET_CHAOS_TRIALS``
  trials, 20 by default; ``benchmarks/fleet_soak.py`` runs the same loop for minutes);
- bad DSNs, and a server that goes away mid-run (a TCP proxy cuts every connection).

The in-process engines on one database are in ``test_postgres_engine.py``.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import httpx
import psycopg
import pytest
from fleet_chaos import Fleet, Submitted
from fleet_provider import create_log
from fleet_support import (
    ROOT,
    Call,
    Proc,
    child_env,
    read_board,
    read_calls,
    start_api,
    start_worker,
    wait_terminal,
    worker_ready,
)
from pg_support import DSN, needs_postgres
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from engine import Engine, StorageError, add_subtitles, compose, generate_video, lip_sync, merge

pytestmark = [pytest.mark.anyio, needs_postgres]

SOURCES = ("generate",)
EDITS = ("merge", "lipSync", "addSubtitles", "reframe")
KEY = {"Authorization": "Bearer fleet-key"}

PRODUCT_DEMO = compose(
    generate_video(prompt="Scene 1", duration=3),
    generate_video(prompt="Scene 2", duration=3),
    generate_video(prompt="Scene 3", duration=3),
    merge(transition="crossfade"),
)


def variant_body(base_id: str, language: str, audio: str) -> dict[str, object]:
    pipeline = compose(
        PRODUCT_DEMO,
        lip_sync(audio_url=f"https://cdn.example.com/{audio}.mp3"),
        add_subtitles(language=language),
    )
    return pipeline.plan(base_execution_id=base_id).to_json()


async def test_three_nodes_run_the_seed_example(schema: str, tmp_path: Path) -> None:
    create_log(DSN, schema)
    env = child_env(schema, latency="0.3")
    procs: list[Proc] = []
    try:
        api, url = await start_api(DSN, schema, env, tmp_path, keys="fleet-key=acme")
        procs.append(api)
        maker = await start_worker("maker", DSN, schema, env, tmp_path, types=SOURCES)
        editors = [
            await start_worker(f"editor{i}", DSN, schema, env, tmp_path, types=EDITS)
            for i in (1, 2)
        ]
        procs += [maker, *editors]
        for proc in (maker, *editors):
            await worker_ready(proc)
        async with httpx.AsyncClient(base_url=url, headers=KEY, timeout=10) as client:
            answer = await client.post("/api/execute", json=PRODUCT_DEMO.plan().to_json())
            assert answer.status_code == 202, answer.text
            base = answer.json()["executionId"]
            variants = {}
            for language, audio in (("fr", "french"), ("es", "spanish")):
                answer = await client.post("/api/execute", json=variant_body(base, language, audio))
                assert answer.status_code == 202, answer.text
                variants[language] = answer.json()["executionId"]
            ids = [base, *variants.values()]
            with anyio.fail_after(30):
                for execution_id in ids:
                    while True:
                        status = await client.get(f"/api/execute/{execution_id}/status")
                        assert status.status_code == 200, status.text
                        body = status.json()
                        assert body["status"] not in ("failed", "cancelled"), body
                        if body["status"] == "completed":
                            break
                        await anyio.sleep(0.05)
            assert body["result"]["duration"] == pytest.approx(7.0)  # 3 x 3 s, two 1 s crossfades
        for proc in procs:
            assert await proc.stop() == 0, proc.output()
    finally:
        for proc in procs:
            await proc.kill()
    calls = read_calls(DSN, schema)
    assert len(calls) == 8, calls  # 3 generates, a merge, 2 x (lipSync, addSubtitles)
    assert len({(c.execution_id, c.job_id) for c in calls}) == 8, "a job ran twice"
    assert all(c.outcome == "ok" and c.attempt == 1 for c in calls), calls
    assert {c.pid for c in calls if c.type == "generate"} == {maker.pid}
    assert {c.pid for c in calls if c.type != "generate"} <= {e.pid for e in editors}
    (merge_call,) = [c for c in calls if c.type == "merge"]
    assert merge_call.finished_at is not None
    lips = {c.execution_id: c for c in calls if c.type == "lipSync"}
    gaps = {}
    for language, execution_id in variants.items():
        lip = lips[execution_id]
        assert lip.started_at > merge_call.finished_at
        gaps[language] = (lip.started_at - merge_call.finished_at) * 1000
        subs = next(c for c in calls if c.execution_id == execution_id and c.type != "lipSync")
        assert lip.finished_at is not None
        assert subs.started_at > lip.finished_at
    first, second = sorted(
        (c for c in calls if c.execution_id in variants.values()), key=lambda c: c.started_at
    )[:2]
    assert first.execution_id != second.execution_id
    assert first.finished_at is not None
    assert second.started_at < first.finished_at, "the two variants must overlap"
    print(
        "merge finished -> lipSync started: "
        + ", ".join(f"{lang} {gap:.1f} ms" for lang, gap in gaps.items()),
        f"(merge on pid {merge_call.pid}, lipSync on {sorted({c.pid for c in lips.values()})})",
    )


async def test_chaos_kills_workers_and_every_invariant_holds(schema: str, tmp_path: Path) -> None:
    trials = int(os.environ.get("FLEET_CHAOS_TRIALS", "20"))
    seed = int(os.environ.get("FLEET_CHAOS_SEED", str(random.randrange(1 << 32))))
    rng = random.Random(seed)
    fleet = Fleet(DSN, schema, tmp_path)
    try:
        await fleet.start()
        async with Engine.postgres(DSN, schema=schema, concurrency=0, poll_interval=0.2) as api:
            reports = [await fleet.trial(api, rng, n) for n in range(trials)]
        await fleet.stop()
    finally:
        for proc in fleet.procs:
            await proc.kill()
    failed = [r for r in reports if r.violations]
    cut = sum(r.cut_short for r in reports)
    print(
        f"chaos seed {seed}: {trials} trials, {sum(r.executions for r in reports)} executions, "
        f"{sum(r.calls for r in reports)} calls, {len(fleet.dead)} kills, {cut} calls cut short "
        f"({sum(r.rerun for r in reports)} rerun), peak generate "
        f"{max(r.peak_generate for r in reports)}/{fleet.cap}"
    )
    assert not failed, f"seed {seed}: " + "; ".join(
        f"trial {r.trial}: {r.violations}" for r in failed
    )
    assert len(fleet.dead) == trials
    assert cut > 0, "no kill landed mid-call: the chaos tested nothing"
    _the_checks_see_a_tampered_log(fleet)


def _the_checks_see_a_tampered_log(fleet: Fleet) -> None:
    """The checks are not vacuous: on a log made wrong on purpose, each one reports."""

    def generates(batch: list[Submitted]) -> int:
        return sum(1 for s in batch for j in s.jobs if j["type"] == "generate")

    def dependents(batch: list[Submitted]) -> list[Call]:
        ids = [s.id for s in batch if s.expect == "completed"]
        return [c for c in read_calls(DSN, fleet.schema, ids) if c.job_id != "job1"]

    batch, statuses = max(fleet.trials, key=lambda t: (bool(dependents(t[0])), generates(t[0])))
    calls = read_calls(DSN, fleet.schema, [s.id for s in batch])
    (dependent, *_) = dependents(batch)
    table = f'"{fleet.schema}".calls'
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(  # a second call of one (job, attempt), with another key
            f"INSERT INTO {table} (pid, execution_id, job_id, type, attempt, idempotency_key, "
            "started_at, finished_at, outcome) SELECT pid, execution_id, job_id, type, attempt, "
            f"'another-key', started_at, finished_at, outcome FROM {table} WHERE id = %s",
            (calls[0].id,),
        )
        conn.execute(  # a dependent that started before anything finished
            f"UPDATE {table} SET started_at = 0 WHERE id = %s", (dependent.id,)
        )
        conn.execute(  # every generate of the batch running at once
            f"UPDATE {table} SET started_at = 1, finished_at = 1e10 "
            "WHERE type = 'generate' AND execution_id = ANY(%s)",
            ([s.id for s in batch],),
        )
    report = fleet.check(batch, {**statuses, batch[0].id: "processing"}, -1, 0)
    seen = {v.partition(":")[0] for v in report.violations}
    assert seen >= {"1", "2", "3", "4"} | ({"5"} if generates(batch) > fleet.cap else set()), (
        report.violations
    )


# --- bad DSNs, and a server that goes away -------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "why"),
    [
        ("postgresql://postgres@127.0.0.1:1/test", "the server is unreachable"),
        ("postgresql://postgres@127.0.0.1:5432/no_such_db_here", "the database does not exist"),
        ("postgresql://no_such_user_here@127.0.0.1:5432/test", "the user (role) does not exist"),
    ],
)
async def test_a_worker_on_a_bad_dsn_exits_2_with_one_clear_line(dsn: str, why: str) -> None:
    env = child_env("unused")
    result = await anyio.run_process(
        [sys.executable, "-m", "contrib.worker", "--postgres", dsn, "--provider", "fake"],
        env=env,
        cwd=str(ROOT),
        check=False,
    )
    err = result.stderr.decode()
    assert result.returncode == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    assert why in errors[0]
    assert errors[0] == err.splitlines()[-1]


class Proxy:
    """A TCP proxy to PostgreSQL that can cut every connection and refuse new ones."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.refusing = False
        self.live: set[anyio.abc.SocketStream] = set()
        self.cuts = 0

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        async with listener:
            self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
            task_status.started()
            await listener.serve(self._handle)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            if self.refusing:
                return
            async with await anyio.connect_tcp("127.0.0.1", self.target_port) as server:
                self.live |= {client, server}
                try:
                    async with anyio.create_task_group() as task_group:
                        task_group.start_soon(self._pump, client, server, task_group)
                        task_group.start_soon(self._pump, server, client, task_group)
                finally:
                    self.live -= {client, server}

    @staticmethod
    async def _pump(
        src: anyio.abc.SocketStream, dst: anyio.abc.SocketStream, task_group: anyio.abc.TaskGroup
    ) -> None:
        try:
            async for chunk in src:
                await dst.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        task_group.cancel_scope.cancel()

    async def cut(self) -> None:
        self.refusing = True
        self.cuts += len(self.live)
        for stream in list(self.live):
            await stream.aclose()

    def restore(self) -> None:
        self.refusing = False


@asynccontextmanager
async def proxied() -> AsyncIterator[tuple[Proxy, str]]:
    info = conninfo_to_dict(DSN)
    proxy = Proxy(int(info.get("port") or 5432))
    async with anyio.create_task_group() as task_group:
        await task_group.start(proxy.serve)
        yield proxy, make_conninfo(DSN, host="127.0.0.1", port=str(proxy.port))
        task_group.cancel_scope.cancel()


async def test_work_survives_the_server_going_away(schema: str, tmp_path: Path) -> None:
    create_log(DSN, schema)
    env = child_env(schema, latency="0.05,0.3")
    acknowledged: list[str] = []
    refused = 0
    async with proxied() as (proxy, via):
        workers = [
            await start_worker(f"w{i}", via, schema, env, tmp_path, lease=10, heartbeat=0.5)
            for i in (1, 2)
        ]
        try:
            for proc in workers:
                await worker_ready(proc)
            async with Engine.postgres(via, schema=schema, concurrency=0, poll_interval=0.2) as api:

                async def submit(count: int) -> None:
                    nonlocal refused
                    for i in range(count):
                        try:
                            base = await api.submit(PRODUCT_DEMO.plan())
                            acknowledged.append(base)
                            plan = compose(lip_sync(audio_url=f"https://a.example/{i}.mp3"))
                            acknowledged.append(
                                await api.submit(
                                    plan.plan(base_execution_id=base), base_execution_id=base
                                )
                            )
                        except StorageError:
                            refused += 1
                        await anyio.sleep(0.05)

                await submit(6)
                await anyio.sleep(0.3)  # jobs in flight on both workers
                running = [c for c in read_calls(DSN, schema) if c.finished_at is None]
                await proxy.cut()
                async with anyio.create_task_group() as during:
                    # Submits while the server is away wait for it (or fail: not acknowledged).
                    during.start_soon(submit, 3)
                    await anyio.sleep(1.5)
                    await proxy.cut()  # whatever got through meanwhile
                    proxy.restore()
                await submit(4)
                statuses = await wait_terminal(DSN, schema, acknowledged, within=60)
            for proc in workers:
                assert proc.process.returncode is None, f"{proc.name} died:\n{proc.output()}"
                assert await proc.stop() == 0, proc.output()
        finally:
            for proc in workers:
                await proc.kill()
    assert proxy.cuts > 0
    assert running, "nothing was running when the connections were cut"
    assert statuses == dict.fromkeys(acknowledged, "completed")
    calls = read_calls(DSN, schema)
    _, jobs = read_board(DSN, schema, acknowledged)
    assert {j.status for j in jobs} == {"completed"}
    per_job = {(j.execution_id, j.job_id): j for j in jobs}
    for call in calls:
        assert call.outcome == "ok", call
    assert sorted(c.ref for c in calls if c.ref in per_job) == sorted(per_job), (
        "each acknowledged job must have run exactly once"
    )
    for ref, job in per_job.items():
        assert job.attempts == 1, (ref, job)
    logs = "".join(proc.output() for proc in workers)
    print(
        f"{len(acknowledged)} executions acknowledged, {refused} submits refused, "
        f"{proxy.cuts} connections cut, {len(running)} calls running at the cut; worker "
        f"warnings: {logs.count('WARNING')}"
    )

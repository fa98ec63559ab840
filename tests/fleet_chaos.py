"""The chaos loop over real worker processes, and the checks of one trial (used by
``test_postgres_fleet.py`` and ``benchmarks/fleet_soak.py``).

A :class:`Fleet` runs ``workers`` processes of ``python -m contrib.worker`` (every type,
``--limit generate=<cap>``, short ``--lease``/``--heartbeat``) on one schema. A trial submits a
random batch through an API engine of the caller (bases of 1-3 generates with a merge, some with
a scripted failing generate; variants of bases of this trial or earlier ones; chains: variants of
variants), SIGKILLs one worker at a random moment (mostly one in the middle of a call) and starts
a replacement, waits for every execution to end, then checks, from the provider's call log and
the board's tables:

1. no call of a job started before each dependency's accepted attempt finished (in the
   execution, and a variant's roots after the base's final job);
2. no (job, attempt) was called twice, and each completed job has exactly one finished ``ok``
   call for the attempt the board accepted;
3. every execution ended, with the status its plan implies (a scripted failure fails its
   execution, ``job_failed``, and every execution based on it, ``base_failed``);
4. every call of one job had the same idempotency key, and each call a kill cut short was run
   again (a later attempt) when its execution completed;
5. at most ``cap`` generate calls ran at once: a call is running from its start to its finish,
   or, when its worker was killed mid-call, to the moment the process was dead.
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
from attrs import define, field
from fleet_provider import create_log
from fleet_support import (
    Call,
    Proc,
    child_env,
    read_board,
    read_calls,
    start_worker,
    wait_terminal,
    worker_ready,
)

from engine import Engine, add_subtitles, compose, generate_video, lip_sync, merge, reframe


@define
class Submitted:
    id: str
    jobs: list[dict[str, Any]]
    base: str | None
    expect: str  # "completed" or "failed"
    code: str | None  # the expected error code when failed


@define
class TrialReport:
    trial: int
    executions: int
    calls: int
    killed_pid: int | None
    cut_short: int
    rerun: int
    peak_generate: int
    seconds: float
    violations: list[str] = field(factory=list)


@define
class Fleet:
    dsn: str
    schema: str
    log_dir: Path
    workers: int = 3
    concurrency: int = 3
    cap: int = 2
    lease: float = 1.5
    heartbeat: float = 0.25
    latency: str = "0.02,0.12"
    procs: list[Proc] = field(factory=list)
    dead: list[Proc] = field(factory=list)
    submitted: list[Submitted] = field(factory=list)
    #: Each trial's executions and the statuses they ended with, as checked.
    trials: list[tuple[list[Submitted], dict[str, str]]] = field(factory=list)
    started: int = 0

    async def start(self) -> None:
        create_log(self.dsn, self.schema)
        for _ in range(self.workers):
            self.procs.append(await self._spawn())
        for proc in self.procs:
            await worker_ready(proc)

    async def _spawn(self) -> Proc:
        self.started += 1
        return await start_worker(
            f"worker{self.started}",
            self.dsn,
            self.schema,
            child_env(self.schema, self.latency),
            self.log_dir,
            concurrency=self.concurrency,
            limits={"generate": self.cap},
            lease=self.lease,
            heartbeat=self.heartbeat,
        )

    async def stop(self) -> None:
        for proc in self.procs:
            await proc.stop()

    async def kill_one(self, rng: random.Random) -> Proc:
        """SIGKILL a worker (mostly one in the middle of a call) and start a replacement."""
        busy = {c.pid for c in read_calls(self.dsn, self.schema) if c.finished_at is None}
        candidates = [p for p in self.procs if p.pid in busy] if rng.random() < 0.8 else []
        victim = rng.choice(candidates or self.procs)
        await victim.kill()
        self.procs.remove(victim)
        self.dead.append(victim)
        self.procs.append(await self._spawn())
        return victim

    async def trial(self, engine: Engine, rng: random.Random, number: int) -> TrialReport:
        began = time.monotonic()
        batch: list[Submitted] = []
        victim: list[Proc] = []

        async def killer() -> None:
            await anyio.sleep(rng.uniform(0.05, 0.6))
            victim.append(await self.kill_one(rng))

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(killer)
            for _ in range(rng.randint(3, 6)):
                batch.append(await self._submit_one(engine, rng, batch))
                await anyio.sleep(rng.uniform(0, 0.1))
        self.submitted.extend(batch)
        ids = [s.id for s in batch]
        statuses = await wait_terminal(self.dsn, self.schema, ids, within=60)
        self.trials.append((batch, statuses))
        report = self.check(batch, statuses, number, time.monotonic() - began)
        report.killed_pid = victim[0].pid if victim else None
        return report

    async def _submit_one(
        self, engine: Engine, rng: random.Random, batch: Sequence[Submitted]
    ) -> Submitted:
        earlier = [*self.submitted[-20:], *batch]
        if earlier and rng.random() < 0.5:
            base = rng.choice(earlier)
            steps = (
                [reframe(aspect_ratio="9:16")]
                if rng.random() < 0.3
                else [
                    lip_sync(audio_url=f"https://a.example/{rng.randint(1, 99)}.mp3"),
                    add_subtitles(language=rng.choice(["fr", "es", "de"])),
                ]
            )
            plan = compose(*steps).plan(base_execution_id=base.id)
            execution_id = await engine.submit(plan, base_execution_id=base.id)
            failed = base.expect == "failed"
            return Submitted(
                execution_id,
                plan.to_json()["jobs"],
                base.id,
                "failed" if failed else "completed",
                "base_failed" if failed else None,
            )
        count = rng.randint(1, 3)
        fail_at = rng.randrange(count) if rng.random() < 0.15 else None
        clips = [
            generate_video(prompt=("FAIL" if i == fail_at else "scene") + f" {i}", duration=2)
            for i in range(count)
        ]
        pipeline = compose(*clips, merge(transition="crossfade")) if count > 1 else compose(*clips)
        plan = pipeline.plan()
        execution_id = await engine.submit(plan)
        failed = fail_at is not None
        return Submitted(
            execution_id,
            plan.to_json()["jobs"],
            None,
            "failed" if failed else "completed",
            "job_failed" if failed else None,
        )

    # --- the checks ----------------------------------------------------------------------------

    def check(
        self, batch: Sequence[Submitted], statuses: dict[str, str], number: int, seconds: float
    ) -> TrialReport:
        by_id = {s.id: s for s in self.submitted}
        ids = {s.id for s in batch}
        ids |= {s.base for s in batch if s.base is not None}
        calls = read_calls(self.dsn, self.schema, sorted(ids))
        executions, jobs = read_board(self.dsn, self.schema, sorted(ids))
        job_rows = {(j.execution_id, j.job_id): j for j in jobs}
        by_job: defaultdict[tuple[str, str], list[Call]] = defaultdict(list)
        for call in calls:
            by_job[call.ref].append(call)
        bad: list[str] = []
        mine = [c for c in calls if c.execution_id in {s.id for s in batch}]

        def accepted(ref: tuple[str, str]) -> Call | None:
            row = job_rows.get(ref)
            if row is None or row.status != "completed":
                return None
            done = [
                c
                for c in by_job.get(ref, [])
                if c.attempt == row.attempts and c.outcome == "ok" and c.finished_at is not None
            ]
            return done[0] if len(done) == 1 else None

        # 3. terminal statuses, as the plans imply
        for s in batch:
            status = statuses.get(s.id)
            if status not in ("completed", "failed", "cancelled"):
                bad.append(f"3: {s.id} did not end (status {status})")
                continue
            stored = executions[s.id]
            if status != s.expect or stored.error_code != s.code:
                bad.append(
                    f"3: {s.id} ended {status} ({stored.error_code}), expected {s.expect} "
                    f"({s.code})"
                )
            if stored.final_job != s.jobs[-1]["id"]:
                bad.append(f"3: {s.id} has final job {stored.final_job}, not {s.jobs[-1]['id']}")
            if status == "completed":
                for job in s.jobs:
                    row = job_rows.get((s.id, job["id"]))
                    if row is None or row.status != "completed":
                        bad.append(f"3: {s.id} completed but {job['id']} is {row}")

        # 1. dependencies first
        for s in batch:
            for job in s.jobs:
                deps = [(s.id, d) for d in job.get("dependsOn", [])]
                if not deps and s.base is not None:
                    deps = [(s.base, by_id[s.base].jobs[-1]["id"])]
                for call in by_job.get((s.id, job["id"]), []):
                    for dep in deps:
                        done = accepted(dep)
                        if done is None:
                            bad.append(f"1: {call.ref} a{call.attempt} ran, {dep} not completed")
                        elif not (
                            done.finished_at is not None and done.finished_at < call.started_at
                        ):
                            bad.append(
                                f"1: {call.ref} a{call.attempt} started at {call.started_at:.4f}"
                                f" before {dep} finished at {done.finished_at}"
                            )

        # 2. once per (job, attempt); one accepted call per completed job
        twice = Counter((c.execution_id, c.job_id, c.attempt) for c in mine)
        bad += [f"2: {key} was called {n} times" for key, n in twice.items() if n > 1]
        for s in batch:
            for job in s.jobs:
                ref = (s.id, job["id"])
                row = job_rows.get(ref)
                if row is not None and row.status == "completed" and accepted(ref) is None:
                    bad.append(
                        f"2: {ref} completed at attempt {row.attempts} without exactly one "
                        f"finished ok call of it: {by_job[ref]}"
                    )

        # 4. the same key on every attempt; what a kill cut short ran again
        killed_at = {p.pid: p.killed_at for p in self.dead}
        cut_short = rerun = 0
        for ref, group in by_job.items():
            if not group or ref[0] not in {s.id for s in batch}:
                continue
            if len({c.key for c in group}) != 1:
                bad.append(f"4: {ref} ran with keys {sorted({c.key for c in group})}")
            for call in group:
                if call.finished_at is not None:
                    continue
                if call.pid not in killed_at:
                    bad.append(f"4: {ref} a{call.attempt} never finished in live pid {call.pid}")
                    continue
                cut_short += 1
                if any(c.attempt > call.attempt for c in group):
                    rerun += 1
                elif statuses.get(ref[0]) == "completed":
                    bad.append(f"4: {ref} a{call.attempt} was killed and never run again")

        # 5. the generate cap
        events: list[tuple[float, int]] = []
        for call in mine:
            if call.type != "generate":
                continue
            end = call.finished_at if call.finished_at is not None else killed_at.get(call.pid)
            if end is None:
                continue  # reported under 4
            events += [(call.started_at, 1), (end, -1)]
        running = peak = 0
        for _, delta in sorted(events):  # at equal times an end (-1) sorts before a start
            running += delta
            peak = max(peak, running)
        if peak > self.cap:
            bad.append(f"5: {peak} generate calls ran at once (cap {self.cap})")
        return TrialReport(
            number, len(batch), len(mine), None, cut_short, rerun, peak, seconds, bad
        )

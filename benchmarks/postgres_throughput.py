"""Durable throughput on PostgreSQL: videoflow's worker fleet beside procrastinate and pg-boss.

    PYTHONPATH=. python benchmarks/postgres_throughput.py          # 10,000 executions, 20,000 jobs
    PYTHONPATH=. python benchmarks/postgres_throughput.py --quick  # 2,000 executions, 4,000 jobs

Everything runs on one server (``--dsn``, default this machine's, database ``test``) with its
``synchronous_commit`` as configured (printed first; every commit measured here waits for its
WAL flush when it is ``on``). Each run uses fresh schemas, dropped after.

1. **videoflow**: executions of the seed's five-job shape (3 generates, a merge, a reframe) are
   submitted beforehand by this process (an API-node engine, 16 concurrent submitters; one
   transaction per execution), then N worker processes start
   (``python -m contrib.worker --postgres DSN --schema S --concurrency C --provider
   benchmarks.postgres_throughput:NoopProvider``). Throughput is jobs / (last completion - first
   claim), both read from the database (``jobs.started_at``, ``jobs.finished_at``).
2. **Dispatch latency**: a ``generate`` worker and a ``reframe`` worker (two processes);
   executions generate -> reframe submitted one at a time, spaced out; each provider call logs
   its monotonic start and finish (CLOCK_MONOTONIC is system-wide on Linux). Latency =
   reframe start - generate finish: the completion's commit, NOTIFY, the other process's
   claim transaction and its task start.
3. **Peers**, the same number of no-op jobs each: procrastinate (PyPI, concurrency 16 per
   process; ``pip install procrastinate``, the ``bench`` extra), pg-boss 10.x (npm; installed
   by this script into ``--pgboss-dir`` if missing; 16 ``work()`` loops per process polling every
   0.5 s, pg-boss's minimum, with batches of 50 and of 1), both timed from the first job's start
   to the last job's completion as their own tables record them; and the bare floor: one
   connection committing one ``UPDATE`` per job.

PostgreSQL's CPU is read from ``/proc/<pid>/stat`` of the server's processes over each timed
run: "ours" is the backends of the measured processes (found by ``application_name``) plus
the server's own background processes (WAL writer, checkpointer...); "all" includes every
other client of the server (other work on this machine). Cores used = CPU seconds / wall
seconds; the machine has ``os.cpu_count()`` cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import psycopg
from attrs import frozen

from adapters.memory import RecordingNotifier
from engine import Engine, JobRequest, Video, compose, generate_video, merge, reframe

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
APP = "vfbench"  # application_name prefix of every connection this benchmark measures

FIVE_JOBS = compose(
    generate_video(prompt="Scene 1", duration=3),
    generate_video(prompt="Scene 2", duration=3),
    generate_video(prompt="Scene 3", duration=3),
    merge(transition="crossfade"),
    reframe(aspect_ratio="9:16"),
).plan()
CHAIN = compose(generate_video(prompt="Scene", duration=3), reframe(aspect_ratio="9:16")).plan()
VIDEO = Video("noop://video.mp4", 3.0, "16:9", 1280, 720)


# --- providers the worker processes load (--provider benchmarks.postgres_throughput:...) ------


class NoopProvider:
    """Returns the same video at once."""

    async def run(self, request: JobRequest) -> Video:
        return VIDEO


class LoggingProvider:
    """No-op, appending ``type start|finish execution monotonic`` lines to ``$VFBENCH_LOG``."""

    def __init__(self) -> None:
        self._fd = os.open(os.environ["VFBENCH_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    async def run(self, request: JobRequest) -> Video:
        self._log(request, "start")
        self._log(request, "finish")
        return VIDEO

    def _log(self, request: JobRequest, what: str) -> None:
        line = f"{request.type} {what} {request.execution_id} {time.monotonic():.6f}\n"
        os.write(self._fd, line.encode())


# --- helpers ------------------------------------------------------------------------------------


def with_app(dsn: str, name: str) -> str:
    """The DSN with ``application_name`` set, so the server's backends can be told apart."""
    sep = "&" if "?" in dsn else "?"
    return f"{dsn}{sep}application_name={APP}-{name}"


def new_schema(kind: str) -> str:
    return f"bench_{kind}_{uuid.uuid4().hex[:8]}"


def drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def scalar(dsn: str, query: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
        return None if row is None else row[0]


def wait_for(
    dsn: str,
    query: str,
    target: int,
    *,
    timeout: float,
    poll: float = 0.1,
    alive: tuple[Sequence[subprocess.Popen[bytes]], Path] | None = None,
) -> None:
    """Poll ``query`` (a count) on one connection until it reaches ``target``; fail clearly
    after ``timeout`` or when one of the ``alive`` processes exited (with their logs)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            if alive is not None:
                check_alive(*alive)
            row = conn.execute(query).fetchone()
            count = 0 if row is None else int(row[0])
            if count >= target:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f}s at {count}/{target}: {query}")
            time.sleep(poll)


_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def _postgres_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == "postgres":
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def _machine_busy() -> float:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / _TICK


@frozen
class CpuShare:
    ours: float  # cores: the measured processes' backends + the server's background processes
    all: float  # cores: every postgres process
    machine: float  # cores busy on the whole machine
    clients: float  # cores: the measured client processes (workers)


class CpuMeter:
    """PostgreSQL's CPU over an interval, from /proc (see the module docstring)."""

    def __init__(self, dsn: str, client_pids: Sequence[int] = ()) -> None:
        self.dsn = dsn
        self.client_pids = list(client_pids)
        self._start: dict[int, float] = {}
        self._clients0 = 0.0
        self._machine0 = 0.0
        self._t0 = 0.0

    def start(self) -> None:
        self._start = {p: c for p in _postgres_pids() if (c := _proc_cpu(p)) is not None}
        self._clients0 = sum(_proc_cpu(p) or 0.0 for p in self.client_pids)
        self._machine0 = _machine_busy()
        self._t0 = time.monotonic()

    def stop(self) -> CpuShare:
        elapsed = time.monotonic() - self._t0
        now = {p: c for p in _postgres_pids() if (c := _proc_cpu(p)) is not None}
        machine = _machine_busy() - self._machine0
        clients = sum(_proc_cpu(p) or 0.0 for p in self.client_pids) - self._clients0
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s "
                "OR backend_type NOT IN ('client backend', 'autovacuum worker')",
                (f"{APP}-%",),
            ).fetchall()
        ours = {int(r[0]) for r in rows}
        delta = {p: c - self._start.get(p, 0.0) for p, c in now.items()}
        return CpuShare(
            ours=sum(v for p, v in delta.items() if p in ours) / elapsed,
            all=sum(delta.values()) / elapsed,
            machine=machine / elapsed,
            clients=clients / elapsed,
        )


@frozen
class Result:
    name: str
    jobs: int
    seconds: float
    cpu: CpuShare | None
    note: str = ""

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    def cpu_per_job(self) -> tuple[float, float] | None:
        """Microseconds of CPU per job: (PostgreSQL's, for the measured backends and the
        server's background processes; the clients')."""
        if self.cpu is None:
            return None
        return self.cpu.ours / self.rate * 1e6, self.cpu.clients / self.rate * 1e6

    def per_cpu_second(self) -> float | None:
        """Jobs per CPU-second spent by PostgreSQL and the clients: what a machine of one's
        own would do per core, less sensitive to other load than jobs/s."""
        if self.cpu is None or self.cpu.ours + self.cpu.clients <= 0:
            return None
        return self.rate / (self.cpu.ours + self.cpu.clients)


def cpu_text(cpu: CpuShare | None) -> str:
    if cpu is None:
        return ""
    return (
        f"pg ours {cpu.ours:.2f} / all {cpu.all:.2f} cores; clients {cpu.clients:.2f}; "
        f"machine {cpu.machine:.2f}"
    )


@contextmanager
def processes(
    commands: Sequence[Sequence[str]], env: dict[str, str], logs: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start the commands; at the end SIGTERM them and wait (their output in ``logs``)."""
    started: list[subprocess.Popen[bytes]] = []
    files = []
    try:
        for n, command in enumerate(commands):
            out = open(logs / f"{uuid.uuid4().hex[:6]}-{n}.log", "wb")  # noqa: SIM115
            files.append(out)
            started.append(
                subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
            )
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in started:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for out in files:
            out.close()


def check_alive(procs: Sequence[subprocess.Popen[bytes]], logs: Path) -> None:
    for proc in procs:
        if proc.poll() is not None:
            tails = "\n".join(p.read_text()[-2000:] for p in sorted(logs.glob("*.log")))
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{tails}")


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    return env


# --- videoflow ------------------------------------------------------------------------------------


async def submit_executions(dsn: str, schema: str, plan: Any, count: int, tasks: int) -> float:
    """Submit ``count`` executions through an API-node engine; seconds taken."""
    engine = Engine.postgres(
        dsn, notifier=RecordingNotifier(), schema=schema, concurrency=0, pool_max=tasks + 2
    )
    async with engine:
        started = time.perf_counter()

        async def submitter(n: int) -> None:
            for _ in range(n, count, tasks):
                await engine.submit(plan)

        async with anyio.create_task_group() as group:
            for n in range(tasks):
                group.start_soon(submitter, n)
        return time.perf_counter() - started


def worker_command(
    dsn: str, schema: str, concurrency: int, provider: str, types: str | None = None
) -> list[str]:
    command = [sys.executable, "-m", "contrib.worker", "--postgres", dsn, "--schema", schema]
    command += ["--concurrency", str(concurrency), "--provider", provider, "--grace", "5"]
    return command + (["--types", types] if types else [])


def videoflow_run(
    dsn: str, executions: int, workers: int, concurrency: int, logs: Path, profile: Path | None
) -> tuple[Result, float]:
    schema = new_schema("vf")
    jobs = executions * len(FIVE_JOBS.jobs)
    try:
        submit_s = anyio.run(submit_executions, dsn, schema, FIVE_JOBS, executions, 16)
        q = f'"{schema}"'
        commands = [
            worker_command(
                with_app(dsn, f"vf{n}"),
                schema,
                concurrency,
                "benchmarks.postgres_throughput:NoopProvider",
            )
            for n in range(workers)
        ]
        with processes(commands, python_env(), logs) as procs:
            meter = CpuMeter(dsn, [p.pid for p in procs])
            wait_for(
                dsn, f"SELECT count(*) FROM {q}.jobs WHERE attempts > 0", 1, timeout=60, poll=0.01
            )
            meter.start()
            spies = [] if profile is None else start_profiles(procs, profile, workers)
            wait_for(
                dsn,
                f"SELECT count(*) FROM {q}.executions WHERE status = 'completed'",
                executions,
                timeout=60 + jobs / 50,
                alive=(procs, logs),
            )
            cpu = meter.stop()
            stop_profiles(spies)
        first, last, completed = scalar_row(
            dsn,
            f"SELECT min(started_at), max(finished_at), count(*) FILTER "
            f"(WHERE status = 'completed') FROM {q}.jobs",
        )
        if completed != jobs:
            raise RuntimeError(f"videoflow: {completed} of {jobs} jobs completed")
        result = Result(
            f"videoflow, {workers} worker process{'es' if workers > 1 else ''}",
            jobs,
            float(last - first),
            cpu,
            f"concurrency {concurrency} each",
        )
        return result, executions / submit_s
    finally:
        drop_schema(dsn, schema)


def start_profiles(
    procs: Sequence[subprocess.Popen[bytes]], directory: Path, workers: int
) -> list[subprocess.Popen[bytes]]:
    """py-spy on each worker process while it runs (``--profile DIR``)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    directory.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(p.pid),
                "--format",
                "raw",
                "--rate",
                "200",
                "--nonblocking",
                "-o",
                str(directory / f"worker{n}-of-{workers}.txt"),
            ],
            stdout=subprocess.DEVNULL,
        )
        for n, p in enumerate(procs)
    ]


def stop_profiles(spies: Sequence[subprocess.Popen[bytes]]) -> None:
    for spy in spies:
        spy.send_signal(signal.SIGINT)
    for spy in spies:
        spy.wait(timeout=60)


def scalar_row(dsn: str, query: str) -> tuple[Any, ...]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        return tuple(row)


async def submit_spaced(dsn: str, schema: str, count: int, gap: float) -> None:
    engine = Engine.postgres(dsn, notifier=RecordingNotifier(), schema=schema, concurrency=0)
    async with engine:
        for _ in range(count):
            await engine.submit(CHAIN)
            await anyio.sleep(gap)


def dispatch_latency(dsn: str, chains: int, logs: Path) -> tuple[float, float, float, int]:
    """p50, p99, max (seconds) of reframe start - generate finish across two processes."""
    schema = new_schema("lat")
    provider = "benchmarks.postgres_throughput:LoggingProvider"
    try:
        # Create the schema first, so both workers find it (and the API node) ready.
        anyio.run(submit_executions, dsn, schema, CHAIN, 0, 1)
        env = python_env()
        gen_log, ref_log = logs / "generate.events", logs / "reframe.events"
        commands = [
            worker_command(with_app(dsn, "lat-gen"), schema, 4, provider, "generate"),
            worker_command(with_app(dsn, "lat-ref"), schema, 4, provider, "reframe"),
        ]
        envs = [{**env, "VFBENCH_LOG": str(gen_log)}, {**env, "VFBENCH_LOG": str(ref_log)}]
        started: list[subprocess.Popen[bytes]] = []
        try:
            for command, child_env in zip(commands, envs, strict=True):
                out = open(logs / f"lat-{len(started)}.log", "wb")  # noqa: SIM115
                started.append(
                    subprocess.Popen(
                        command, cwd=ROOT, env=child_env, stdout=out, stderr=subprocess.STDOUT
                    )
                )
                out.close()
            q = f'"{schema}"'
            wait_for(dsn, f"SELECT count(*) FROM {q}.engines", 2, timeout=60, poll=0.05)
            time.sleep(0.5)  # both listening
            anyio.run(submit_spaced, dsn, schema, chains, 0.02)
            wait_for(
                dsn,
                f"SELECT count(*) FROM {q}.executions WHERE status = 'completed'",
                chains,
                timeout=60,
            )
            check_alive(started, logs)
        finally:
            for proc in started:
                proc.send_signal(signal.SIGTERM)
            for proc in started:
                proc.wait(timeout=30)
        finished = {
            e: float(t)
            for kind, what, e, t in (line.split() for line in gen_log.read_text().splitlines())
            if what == "finish"
        }
        begun = {
            e: float(t)
            for kind, what, e, t in (line.split() for line in ref_log.read_text().splitlines())
            if what == "start"
        }
        gaps = sorted(begun[e] - finished[e] for e in begun if e in finished)
        gaps = gaps[min(10, len(gaps) // 10) :]  # the first chains warm connections up
        if not gaps:
            raise RuntimeError("dispatch latency: no chain completed")
        p99 = gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))]
        return statistics.median(gaps), p99, gaps[-1], len(gaps)
    finally:
        drop_schema(dsn, schema)


# --- the bare floor -------------------------------------------------------------------------------


def bare_floor(dsn: str, jobs: int) -> Result:
    schema = new_schema("bare")
    try:
        with psycopg.connect(with_app(dsn, "bare")) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
            conn.execute(f'CREATE TABLE "{schema}".jobs (id int PRIMARY KEY, status text)')
            conn.execute(
                f"INSERT INTO \"{schema}\".jobs SELECT g, 'ready' FROM generate_series(1, %s) g",
                (jobs,),
            )
            conn.commit()
            update = f"UPDATE \"{schema}\".jobs SET status = 'completed' WHERE id = %s"
            meter = CpuMeter(dsn, [os.getpid()])
            meter.start()
            started = time.perf_counter()
            for n in range(1, jobs + 1):
                conn.execute(update, (n,))
                conn.commit()
            elapsed = time.perf_counter() - started
            cpu = meter.stop()
        return Result("bare floor: UPDATE + COMMIT per job", jobs, elapsed, cpu, "1 connection")
    finally:
        drop_schema(dsn, schema)


# --- procrastinate --------------------------------------------------------------------------------


def _procrastinate_app(dsn: str, schema: str, pool_max: int) -> Any:
    import logging

    import procrastinate

    # It warns that the app lives in a __main__ module (this script): harmless here.
    logging.getLogger("procrastinate").setLevel(logging.ERROR)

    connector = procrastinate.PsycopgConnector(
        conninfo=dsn, kwargs={"options": f"-c search_path={schema}"}, max_size=pool_max
    )
    app = procrastinate.App(connector=connector)

    @app.task(name="noop")  # type: ignore[untyped-decorator, unused-ignore]
    async def noop() -> None:
        return None

    return app


def procrastinate_worker(dsn: str, schema: str, concurrency: int) -> None:
    """A worker process (``_procrastinate-worker``); runs until SIGTERM."""
    app = _procrastinate_app(dsn, schema, concurrency + 4)

    async def main() -> None:
        async with app.open_async():
            await app.run_worker_async(concurrency=concurrency, wait=True)

    asyncio.run(main())


def procrastinate_run(dsn: str, jobs: int, workers: int, logs: Path) -> Result | str:
    try:
        import procrastinate  # noqa: F401
    except ImportError:
        return "procrastinate not installed: pip install procrastinate (the 'bench' extra)"
    schema = new_schema("proc")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        app = _procrastinate_app(dsn, schema, 4)

        async def setup() -> None:
            async with app.open_async():
                await app.schema_manager.apply_schema_async()
                task = app.tasks["noop"]
                for start in range(0, jobs, 1000):
                    await task.batch_defer_async(*({} for _ in range(min(1000, jobs - start))))

        asyncio.run(setup())
        q = f'"{schema}"'
        commands = [
            [
                sys.executable,
                __file__,
                "_procrastinate-worker",
                "--dsn",
                with_app(dsn, f"proc{n}"),
                "--schema",
                schema,
            ]
            for n in range(workers)
        ]
        with processes(commands, python_env(), logs) as procs:
            meter = CpuMeter(dsn, [p.pid for p in procs])
            wait_for(
                dsn,
                f"SELECT count(*) FROM {q}.procrastinate_jobs WHERE status <> 'todo'",
                1,
                timeout=60,
                poll=0.01,
            )
            meter.start()
            wait_for(
                dsn,
                f"SELECT count(*) FROM {q}.procrastinate_jobs WHERE status = 'succeeded'",
                jobs,
                timeout=60 + jobs / 20,
                alive=(procs, logs),
            )
            cpu = meter.stop()
        seconds = scalar(
            dsn,
            f"SELECT extract(epoch FROM max(at) FILTER (WHERE type = 'succeeded') "
            f"- min(at) FILTER (WHERE type = 'started')) FROM {q}.procrastinate_events",
        )
        plural = "es" if workers > 1 else ""
        return Result(
            f"procrastinate, {workers} process{plural}",
            jobs,
            float(seconds),
            cpu,
            "concurrency 16 each",
        )
    finally:
        drop_schema(dsn, schema)


# --- pg-boss --------------------------------------------------------------------------------------

PGBOSS_SCRIPT = r"""
// pg-boss benchmark helper: `node pgboss_bench.js setup|work DSN SCHEMA ...`
const PgBoss = require('pg-boss');
const [mode, dsn, schema, a, b] = process.argv.slice(2);

async function main () {
  const boss = new PgBoss({ connectionString: dsn, schema, supervise: false, schedule: false,
                            max: 20 });
  boss.on('error', err => console.error(err));
  await boss.start();
  if (mode === 'setup') {
    const jobs = Number(a);
    await boss.createQueue('noop');
    for (let start = 0; start < jobs; start += 1000) {
      const batch = [];
      for (let i = start; i < Math.min(jobs, start + 1000); i++) {
        batch.push({ name: 'noop', data: {} });
      }
      await boss.insert(batch);
    }
    await boss.stop({ graceful: true, wait: true });
    return;
  }
  const batchSize = Number(a);
  const loops = Number(b);
  for (let i = 0; i < loops; i++) {
    await boss.work('noop', { batchSize, pollingIntervalSeconds: 0.5 }, async jobs => {});
  }
  const version = require('pg-boss/package.json').version;
  console.log(`pg-boss ${version}: ${loops} loops, batch ${batchSize}`);
  process.on('SIGTERM', async () => {
    await boss.stop({ graceful: true, wait: true, timeout: 5000 });
    process.exit(0);
  });
}
main().catch(err => { console.error(err); process.exit(1); });
"""


def ensure_pgboss(directory: Path) -> tuple[Path, str] | str:
    """pg-boss 10.x installed in ``directory`` (npm install, outside the repository)."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        return "pg-boss skipped: node and npm are needed (Node 20)"
    package = directory / "node_modules" / "pg-boss" / "package.json"
    if not package.exists():
        directory.mkdir(parents=True, exist_ok=True)
        if not (directory / "package.json").exists():
            (directory / "package.json").write_text('{"name": "pgboss-bench", "private": true}\n')
        print(f"installing pg-boss@10 into {directory} (npm install; not a library dependency)")
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "pg-boss@10"],
            cwd=directory,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    version = json.loads(package.read_text())["version"]
    if not version.startswith("10."):
        return f"pg-boss {version} in {directory} is not 10.x"
    script = directory / "pgboss_bench.js"
    script.write_text(PGBOSS_SCRIPT)
    return script, version


def pgboss_run(
    dsn: str,
    script: Path,
    version: str,
    jobs: int,
    workers: int,
    batch: int,
    loops: int,
    logs: Path,
) -> Result:
    schema = new_schema("boss")
    node = shutil.which("node")
    assert node is not None
    try:
        subprocess.run(
            [node, str(script), "setup", dsn, schema, str(jobs)], check=True, cwd=script.parent
        )
        q = f'"{schema}"'
        commands = [
            [node, str(script), "work", with_app(dsn, f"boss{n}"), schema, str(batch), str(loops)]
            for n in range(workers)
        ]
        env = dict(os.environ)
        with processes(commands, env, logs) as procs:
            meter = CpuMeter(dsn, [p.pid for p in procs])
            wait_for(
                dsn,
                f"SELECT count(*) FROM {q}.job WHERE name = 'noop' AND started_on IS NOT NULL",
                1,
                timeout=60,
                poll=0.01,
            )
            meter.start()
            wait_for(
                dsn,
                f"SELECT count(*) FROM {q}.job WHERE name = 'noop' AND state = 'completed'",
                jobs,
                timeout=60 + jobs / 10,
                alive=(procs, logs),
            )
            cpu = meter.stop()
        seconds = scalar(
            dsn,
            f"SELECT extract(epoch FROM max(completed_on) - min(started_on)) FROM {q}.job "
            f"WHERE name = 'noop'",
        )
        plural = "es" if workers > 1 else ""
        return Result(
            f"pg-boss {version}, batch {batch}, {workers} process{plural}",
            jobs,
            float(seconds),
            cpu,
            f"{loops} work() loops each, 0.5 s polling",
        )
    finally:
        drop_schema(dsn, schema)


# --- the report -----------------------------------------------------------------------------------


def server_settings(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        names = ("server_version", "synchronous_commit", "fsync", "wal_sync_method", "commit_delay")
        return {n: str(conn.execute(f"SHOW {n}").fetchone()[0]) for n in names}  # type: ignore[index]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--quick", action="store_true", help="2,000 executions, 4,000 peer jobs")
    parser.add_argument("--executions", type=int, help="five-job executions (default 10,000)")
    parser.add_argument("--peer-jobs", type=int, help="no-op jobs for peers (default 20,000)")
    parser.add_argument("--workers", default="1,2,4", help="videoflow worker processes to try")
    parser.add_argument(
        "--concurrency", type=int, default=256, help="videoflow jobs at once per worker (256)"
    )
    parser.add_argument("--chains", type=int, help="latency chains (default 300)")
    parser.add_argument(
        "--batch1-jobs",
        type=int,
        help="jobs for pg-boss with batch size 1, bound by its polling (default 2,000; quick 500)",
    )
    parser.add_argument(
        "--pgboss-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "videoflow-pgboss",
        help="where pg-boss 10.x is (or gets) npm-installed",
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy each videoflow worker into DIR (raw, folded stacks)"
    )
    parser.add_argument("--skip", default="", help="comma list of: videoflow,latency,peers,bare")
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["_procrastinate-worker"]:
        sub = argparse.ArgumentParser()
        sub.add_argument("--dsn", required=True)
        sub.add_argument("--schema", required=True)
        sub.add_argument("--concurrency", type=int, default=16)
        w = sub.parse_args(argv[1:])
        procrastinate_worker(w.dsn, w.schema, w.concurrency)
        return
    args = parser.parse_args(argv)
    executions = args.executions or (2_000 if args.quick else 10_000)
    peer_jobs = args.peer_jobs or (4_000 if args.quick else 20_000)
    chains = args.chains or (200 if args.quick else 300)
    batch1_jobs = args.batch1_jobs or (500 if args.quick else 2_000)
    skip = set(filter(None, args.skip.split(",")))
    workers = [int(n) for n in args.workers.split(",")]
    settings = server_settings(args.dsn)
    print("command: PYTHONPATH=. python " + " ".join(["benchmarks/postgres_throughput.py", *argv]))
    print(
        f"server: PostgreSQL {settings['server_version']} at {args.dsn}; synchronous_commit="
        f"{settings['synchronous_commit']}, fsync={settings['fsync']}, wal_sync_method="
        f"{settings['wal_sync_method']}, commit_delay={settings['commit_delay']}; "
        f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at start"
    )
    results: list[Result] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vfbench-") as tmp:
        logs = Path(tmp)
        if "videoflow" not in skip:
            for n in workers:
                result, submit_rate = videoflow_run(
                    args.dsn, executions, n, args.concurrency, logs, args.profile
                )
                results.append(result)
                print(
                    f"  {result.name}: {result.rate:,.0f} jobs/s ({executions:,} executions "
                    f"pre-submitted at {submit_rate:,.0f}/s); {cpu_text(result.cpu)}",
                    flush=True,
                )
        if "latency" not in skip:
            p50, p99, worst, n = dispatch_latency(args.dsn, chains, logs)
            line = (
                f"dispatch latency (generate done in one process -> reframe's provider call "
                f"starts in another), {n} chains: p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, "
                f"max {worst * 1e3:.1f} ms (target p99 < 20 ms: "
                f"{'met' if p99 < 0.020 else 'NOT met'})"
            )
            notes.append(line)
            print("  " + line, flush=True)
        if "bare" not in skip:
            result = bare_floor(args.dsn, peer_jobs)
            results.append(result)
            print(f"  {result.name}: {result.rate:,.0f} jobs/s; {cpu_text(result.cpu)}", flush=True)
        if "peers" not in skip:
            for n in (1, 2):
                outcome = procrastinate_run(args.dsn, peer_jobs, n, logs)
                if isinstance(outcome, str):
                    notes.append(outcome)
                    print("  " + outcome)
                    break
                results.append(outcome)
                print(
                    f"  {outcome.name}: {outcome.rate:,.0f} jobs/s; {cpu_text(outcome.cpu)}",
                    flush=True,
                )
            boss = ensure_pgboss(args.pgboss_dir)
            if isinstance(boss, str):
                notes.append(boss)
                print("  " + boss)
            else:
                script, version = boss
                for batch, count in ((50, peer_jobs), (1, batch1_jobs)):
                    for n in (1, 2):
                        result = pgboss_run(args.dsn, script, version, count, n, batch, 16, logs)
                        results.append(result)
                        print(
                            f"  {result.name}: {result.rate:,.0f} jobs/s; {cpu_text(result.cpu)}",
                            flush=True,
                        )
    report(results, notes, executions, peer_jobs)


def report(results: Sequence[Result], notes: Sequence[str], executions: int, jobs: int) -> None:
    ours = [r for r in results if r.name.startswith("videoflow")]
    others = [r for r in results if not r.name.startswith("videoflow")]
    print()
    print(
        f"videoflow: {executions:,} five-job executions ({executions * 5:,} jobs); peers and "
        f"floor: {jobs:,} no-op jobs unless the row says otherwise"
    )
    print(f"{'':54} | {'CPU, cores':^21} | {'us CPU/job':^13} | {'jobs per':>8} |")
    print(
        f"{'':46} {'jobs/s':>7} | {'pg':>5} {'clients':>7} {'machine':>7} | {'pg':>5} "
        f"{'clients':>7} | {'CPU-s':>8} |"
    )
    for r in results:
        cpu, per_job = r.cpu, r.cpu_per_job()
        cores = f"{cpu.ours:5.2f} {cpu.clients:7.2f} {cpu.machine:7.2f}" if cpu else " " * 21
        costs = f"{per_job[0]:5.0f} {per_job[1]:7.0f}" if per_job else " " * 13
        extra = (
            f", {r.jobs:,} jobs" if r.jobs != jobs and not r.name.startswith("videoflow") else ""
        )
        efficiency = r.per_cpu_second()
        per_s = f"{efficiency:8,.0f}" if efficiency else " " * 8
        print(f"{r.name:46} {r.rate:7,.0f} | {cores} | {costs} | {per_s} | {r.note}{extra}")
    print(
        f"(cores: of the machine's {os.cpu_count()}; 'pg' is the measured backends plus the "
        "server's background processes, 'machine' includes everything else running)"
    )
    if ours and others:
        print()
        print(
            "videoflow's jobs/s over the other's, with (columns) "
            + ", ".join(r.name.removeprefix("videoflow, ") for r in ours)
        )
        for o in others:
            print(f"  over {o.name:42} " + " ".join(f"{r.rate / o.rate:7.1f}x" for r in ours))
        print(
            "the same per CPU-second (PostgreSQL's and the clients'), less sensitive to other load:"
        )
        for o in others:
            oe = o.per_cpu_second()
            cells = [
                f"{e / oe:7.1f}x" if (e := r.per_cpu_second()) and oe else "      -" for r in ours
            ]
            print(f"  over {o.name:42} " + " ".join(cells))
    two = [r for r in ours if "2 worker" in r.name]
    if two:
        verdict = "met" if two[0].rate >= 5000 else "NOT met"
        print(
            f"target >= 5,000 durable jobs/s with 2 worker processes: {two[0].rate:,.0f} "
            f"({verdict})"
        )
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()

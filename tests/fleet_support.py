"""Real fleet processes for tests: ``python -m contrib.worker`` and ``python -m contrib.serve``
started with ``anyio.open_process``, their output in files, and the call log of
``fleet_provider`` read back.

Each process gets ``PYTHONPATH`` = this worktree and ``tests/`` (so ``--provider
fleet_provider:make`` imports), ``FLEET_LOG_SCHEMA`` and ``FLEET_LATENCY`` for the provider.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import psycopg
from attrs import define, frozen
from fleet_provider import TABLE

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def child_env(log_schema: str, latency: str = "0.05", **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    path = [str(ROOT), str(TESTS)]
    if env.get("PYTHONPATH"):
        path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(path)
    env["FLEET_LOG_SCHEMA"] = log_schema
    env["FLEET_LATENCY"] = latency
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@define
class Proc:
    """A child process whose stdout and stderr go to ``log_path``."""

    name: str
    process: anyio.abc.Process
    log_path: Path
    killed_at: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_for(self, pattern: str, within: float = 20) -> re.Match[str]:
        """The first match of ``pattern`` in the output; an error (with the output) if the
        process exits or ``within`` seconds pass first."""
        regex = re.compile(pattern)
        with anyio.move_on_after(within):
            while True:
                found = regex.search(self.output())
                if found:
                    return found
                if self.process.returncode is not None:
                    break
                await anyio.sleep(0.05)
        raise AssertionError(
            f"{self.name} (pid {self.pid}, exit {self.process.returncode}) never printed "
            f"{pattern!r}; its output:\n{self.output()[-3000:]}"
        )

    async def kill(self) -> None:
        """SIGKILL, reaped; ``killed_at`` is when it was certainly dead (epoch seconds)."""
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        self.killed_at = time.time()

    async def stop(self, within: float = 15) -> int:
        """SIGTERM and wait; SIGKILL (and an error) if it does not stop ``within`` seconds."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(within):
                return await self.process.wait()
            await self.kill()
            raise AssertionError(f"{self.name} ignored SIGTERM for {within} s")
        return self.process.returncode


async def spawn(name: str, args: Sequence[str], env: Mapping[str, str], log_dir: Path) -> Proc:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as out:
        process = await anyio.open_process(
            [sys.executable, *args], stdout=out, stderr=out, env=dict(env), cwd=str(ROOT)
        )
    return Proc(name, process, log_path)


def worker_args(
    dsn: str,
    schema: str,
    *,
    types: Sequence[str] | None = None,
    concurrency: int = 4,
    limits: Mapping[str, int] | None = None,
    lease: float | None = None,
    heartbeat: float | None = None,
    grace: float = 5,
) -> list[str]:
    args = ["-m", "contrib.worker", "--postgres", dsn, "--schema", schema]
    args += ["--provider", "fleet_provider:make", "--concurrency", str(concurrency)]
    args += ["--grace", str(grace)]
    if types:
        args += ["--types", ",".join(types)]
    for kind, cap in (limits or {}).items():
        args += ["--limit", f"{kind}={cap}"]
    if lease is not None:
        args += ["--lease", str(lease)]
    if heartbeat is not None:
        args += ["--heartbeat", str(heartbeat)]
    return args


async def start_worker(
    name: str, dsn: str, schema: str, env: Mapping[str, str], log_dir: Path, **options: Any
) -> Proc:
    return await spawn(name, worker_args(dsn, schema, **options), env, log_dir)


async def worker_ready(proc: Proc, within: float = 30) -> None:
    await proc.wait_for(r"worker \S+ \(pid \d+ on .*\) runs", within)


async def start_api(
    dsn: str, schema: str, env: Mapping[str, str], log_dir: Path, keys: str
) -> tuple[Proc, str]:
    """``contrib.serve --postgres`` on a free port (``--port 0``); its URL, from its log."""
    args = ["-m", "contrib.serve", "--postgres", dsn, "--schema", schema, "--port", "0"]
    proc = await spawn("api", [*args, "--no-access-log"], {**env, "ENGINE_API_KEYS": keys}, log_dir)
    found = await proc.wait_for(r"serving .* on (http://\S+)", 30)
    return proc, found.group(1)


# --- the call log and the board, read back ---------------------------------------------------


@frozen
class Call:
    id: int
    pid: int
    execution_id: str
    job_id: str
    type: str
    attempt: int
    key: str
    started_at: float
    finished_at: float | None
    outcome: str | None

    @property
    def ref(self) -> tuple[str, str]:
        return (self.execution_id, self.job_id)


def read_calls(dsn: str, schema: str, execution_ids: Sequence[str] | None = None) -> list[Call]:
    query = (
        "SELECT id, pid, execution_id, job_id, type, attempt, idempotency_key, started_at, "
        f'finished_at, outcome FROM "{schema}".{TABLE}'
    )
    params: tuple[Any, ...] = ()
    if execution_ids is not None:
        query += " WHERE execution_id = ANY(%s)"
        params = (list(execution_ids),)
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(query + " ORDER BY id", params).fetchall()
    return [Call(*row) for row in rows]


@frozen
class JobRow:
    execution_id: str
    job_id: str
    type: str
    status: str
    attempts: int


@frozen
class ExecutionRow:
    id: str
    status: str
    final_job: str
    error_code: str | None
    completed_at: float | None


def read_board(
    dsn: str, schema: str, execution_ids: Sequence[str]
) -> tuple[dict[str, ExecutionRow], list[JobRow]]:
    ids = list(execution_ids)
    with psycopg.connect(dsn, autocommit=True) as conn:
        executions = conn.execute(
            f"SELECT id, status, final_job, error->>'code', completed_at "
            f'FROM "{schema}".executions WHERE id = ANY(%s)',
            (ids,),
        ).fetchall()
        jobs = conn.execute(
            f'SELECT execution_id, job_id, type, status, attempts FROM "{schema}".jobs '
            "WHERE execution_id = ANY(%s)",
            (ids,),
        ).fetchall()
    return {row[0]: ExecutionRow(*row) for row in executions}, [JobRow(*row) for row in jobs]


TERMINAL = ("completed", "failed", "cancelled")


async def wait_terminal(
    dsn: str, schema: str, execution_ids: Sequence[str], within: float
) -> dict[str, str]:
    """Each execution's status once all are terminal, or when ``within`` seconds have passed."""
    ids = list(execution_ids)
    statuses: dict[str, str] = {}
    with anyio.move_on_after(within):
        while True:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                cur = await conn.execute(
                    f'SELECT id, status FROM "{schema}".executions WHERE id = ANY(%s)', (ids,)
                )
                statuses = {str(i): str(s) for i, s in await cur.fetchall()}
            if len(statuses) == len(ids) and all(s in TERMINAL for s in statuses.values()):
                break
            await anyio.sleep(0.1)
    return statuses

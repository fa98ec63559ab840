"""Kill a real engine process with SIGKILL at random moments; nothing acknowledged is lost.

Each trial runs ``tests/engine_child.py`` on a fresh SQLite file, kills it (one to three times)
once its provider has started a random number of jobs, then runs a last child until the store is
idle, and checks the file. ``CRASH_TRIALS`` sets the number of trials (CI: 30).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest

from adapters.sqlite import SqliteStorage

CHILD = Path(__file__).with_name("engine_child.py")
TRIALS = int(os.environ.get("CRASH_TRIALS", "30" if os.environ.get("CI") else "6"))


def start_child(
    db: Path, log: Path, *, submit: int, seed: int, until_idle: bool = False
) -> subprocess.Popen[str]:
    command = [sys.executable, str(CHILD), "--db", str(db), "--log", str(log)]
    command += ["--submit", str(submit), "--seed", str(seed)]
    if until_idle:
        command.append("--until-idle")
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def log_lines(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [line.split() for line in log.read_text().splitlines() if line.strip()]


def prepare(db: Path) -> None:
    """Create the store, plus an audit table of every write that marks a job completed."""

    async def create() -> None:
        async with SqliteStorage(db):
            pass

    anyio.run(create)
    with sqlite3.connect(db) as conn:
        conn.executescript(
            """
            CREATE TABLE completion_audit (execution_id TEXT, job_id TEXT, old_status TEXT);
            CREATE TRIGGER audit_completion AFTER UPDATE OF status ON jobs
            WHEN NEW.status = 'completed'
            BEGIN
                INSERT INTO completion_audit VALUES (NEW.execution_id, NEW.job_id, OLD.status);
            END;
            """
        )


def kill_when_busy(child: subprocess.Popen[str], log: Path, after_calls: int) -> list[str]:
    """SIGKILL the child once the log has ``after_calls`` more lines (or it exits)."""
    start = len(log_lines(log))
    deadline = time.monotonic() + 30
    while child.poll() is None and time.monotonic() < deadline:
        if len(log_lines(log)) >= start + after_calls:
            break
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    out, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, err[-2000:]
    return [line.split()[1] for line in out.splitlines() if line.startswith("ACK ")]


def check_store(db: Path, log: Path, acknowledged: set[str]) -> int:
    """Every invariant of a store after crashes; returns how many job attempts were reruns."""
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        statuses = dict(conn.execute("SELECT id, status FROM executions"))
        job_statuses = Counter(status for (status,) in conn.execute("SELECT status FROM jobs"))
        audit = list(conn.execute("SELECT execution_id, job_id, old_status FROM completion_audit"))
    # Nothing acknowledged is lost, and everything stored reached the end it should.
    assert acknowledged <= set(statuses)
    assert set(statuses.values()) == {"completed"}, Counter(statuses.values())
    assert set(job_statuses) == {"completed"}
    # A job's completion is written exactly once.
    completions = Counter((execution, job) for execution, job, _ in audit)
    assert all(n == 1 for n in completions.values()), completions.most_common(3)
    assert all(old != "completed" for _, _, old in audit)
    assert len(completions) == job_statuses["completed"]
    # Reruns reuse the idempotency key, and no attempt of a job ran twice.
    calls = log_lines(log)
    attempts = Counter((execution, job, attempt) for _, execution, job, attempt, _ in calls)
    assert all(n == 1 for n in attempts.values()), attempts.most_common(3)
    assert all(key == f"{execution}/{job}" for _, execution, job, _, key in calls)
    return sum(1 for _, _, _, attempt, _ in calls if int(attempt) > 1)


@pytest.mark.timeout(900)
def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("CRASH_SEED", "20261129")))
    reruns = 0
    for trial in range(TRIALS):
        db, log = tmp_path / f"trial{trial}.db", tmp_path / f"trial{trial}.log"
        prepare(db)
        acknowledged: set[str] = set()
        for kill in range(rng.randint(1, 3)):
            submit = rng.randint(2, 8)
            child = start_child(db, log, submit=submit, seed=trial * 10 + kill)
            # The first submission is a five-job base, each other one at least one job.
            acknowledged.update(kill_when_busy(child, log, rng.randint(1, 4 + submit)))
        final = start_child(db, log, submit=0, seed=trial, until_idle=True)
        out, err = final.communicate(timeout=120)
        assert final.returncode == 0, err[-2000:]
        assert "IDLE" in out
        reruns += check_store(db, log, acknowledged)
    # The kills did land while jobs were in flight: some attempts ran again.
    assert reruns > 0


def test_two_processes_on_one_file_both_make_progress(tmp_path: Path) -> None:
    db, log = tmp_path / "shared.db", tmp_path / "shared.log"
    prepare(db)
    children = [start_child(db, log, submit=8, seed=seed, until_idle=True) for seed in (1, 2)]
    acknowledged: set[str] = set()
    try:
        for child in children:
            out, err = child.communicate(timeout=120)
            assert child.returncode == 0, err[-2000:]
            acked = (line.split()[1] for line in out.splitlines() if line.startswith("ACK "))
            acknowledged.update(acked)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate()
    assert len(acknowledged) == 16
    check_store(db, log, acknowledged)
    workers = {pid for pid, *_ in log_lines(log)}
    assert len(workers) == 2

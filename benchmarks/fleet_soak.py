"""Soak the PostgreSQL fleet: the chaos loop of ``tests/test_postgres_fleet.py`` for minutes.

    python benchmarks/fleet_soak.py --minutes 10 --workers 4

Runs ``--workers`` real ``python -m contrib.worker`` processes (every type, ``--limit
generate=CAP``, short leases) on a fresh schema of ``VIDEOFLOW_TEST_DSN`` (default: this
machine's server, database ``test``), and repeats trials until the time is up: a random batch of
executions (bases, variants, chains, scripted failures) submitted by an API engine in this
process, one worker SIGKILLed at a random moment and replaced, then the checks of
``tests/fleet_chaos.py`` (dependencies first, each (job, attempt) once and each completion once,
every execution ended as its plan implies, reruns keep the idempotency key, the generate cap
held). Prints one line per trial and the totals; exits 1 if any check failed. The schema is
dropped at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).parents[1] / "tests")]

import psycopg  # noqa: E402
from fleet_chaos import Fleet, TrialReport  # noqa: E402

from engine import Engine  # noqa: E402

DSN = os.environ.get("VIDEOFLOW_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")


async def soak(args: argparse.Namespace, schema: str, log_dir: Path) -> list[TrialReport]:
    rng = random.Random(args.seed)
    fleet = Fleet(
        DSN,
        schema,
        log_dir,
        workers=args.workers,
        concurrency=args.concurrency,
        cap=args.cap,
        lease=args.lease,
        heartbeat=args.heartbeat,
    )
    reports: list[TrialReport] = []
    deadline = time.monotonic() + args.minutes * 60
    try:
        await fleet.start()
        async with Engine.postgres(DSN, schema=schema, concurrency=0, poll_interval=0.2) as api:
            while time.monotonic() < deadline:
                report = await fleet.trial(api, rng, len(reports))
                reports.append(report)
                print(
                    f"trial {report.trial:4d}: {report.executions} executions, {report.calls:3d} "
                    f"calls, killed pid {report.killed_pid}, {report.cut_short} cut short "
                    f"({report.rerun} rerun), peak generate {report.peak_generate}/{args.cap}, "
                    f"{report.seconds:.1f} s: "
                    + ("ok" if not report.violations else "; ".join(report.violations)),
                    flush=True,
                )
        await fleet.stop()
    finally:
        for proc in fleet.procs:
            await proc.kill()
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=3, help="jobs at once per worker")
    parser.add_argument("--cap", type=int, default=2, help="the fleet-wide generate limit")
    parser.add_argument("--lease", type=float, default=1.5)
    parser.add_argument("--heartbeat", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the schema (and its log)")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1 << 32)
    schema = f"soak_{uuid.uuid4().hex[:10]}"
    log_dir = Path(tempfile.mkdtemp(prefix="fleet_soak_"))
    print(f"schema {schema}, seed {args.seed}, worker logs in {log_dir}", flush=True)
    began = time.monotonic()
    try:
        reports = anyio.run(soak, args, schema, log_dir)
    finally:
        if not args.keep:
            with psycopg.connect(DSN, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    failed = [r for r in reports if r.violations]
    print(
        f"{len(reports)} trials in {time.monotonic() - began:.0f} s: "
        f"{sum(r.executions for r in reports)} executions, {sum(r.calls for r in reports)} "
        f"calls, {len(reports)} kills, {sum(r.cut_short for r in reports)} calls cut short "
        f"({sum(r.rerun for r in reports)} rerun), peak generate "
        f"{max((r.peak_generate for r in reports), default=0)}/{args.cap}; "
        f"{len(failed)} trials with violations (seed {args.seed})"
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

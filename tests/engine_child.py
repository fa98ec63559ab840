"""A child process for the crash tests: runs an engine on a SQLite file and can be killed.

    python tests/engine_child.py --db F --log L [--submit N] [--seed S] [--until-idle]

It submits ``N`` executions (bases and variants of them), printing ``ACK <id>`` once each
``submit`` has returned, then works until killed, or with ``--until-idle`` until the store has no
unfinished execution. The provider appends a line per call to the log: ``pid execution job
attempt idempotency-key``, written before the call's work starts.
"""

from __future__ import annotations

import argparse
import os
import random
import sys

import anyio

from adapters.http import HttpNotifier
from adapters.memory import RecordingNotifier
from engine import (
    Engine,
    ExecutionPlan,
    JobRequest,
    Notifier,
    Video,
    compose,
    generate_video,
    lip_sync,
    merge,
    reframe,
)

BASE = compose(
    generate_video(prompt="Scene 1", duration=3),
    generate_video(prompt="Scene 2", duration=3),
    generate_video(prompt="Scene 3", duration=3),
    merge(transition="crossfade"),
    reframe(aspect_ratio="9:16"),
).plan()
#: A variant's own jobs; the base is given at submit.
VARIANT = ExecutionPlan(
    compose(lip_sync(audio_url="https://cdn.example.com/fr.mp3")).plan(base_execution_id="any").jobs
)


class LoggingProvider:
    def __init__(self, log_path: str, rng: random.Random) -> None:
        self._fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._rng = rng

    async def run(self, request: JobRequest) -> Video:
        line = (
            f"{os.getpid()} {request.execution_id} {request.job_id} {request.attempt} "
            f"{request.idempotency_key}\n"
        )
        os.write(self._fd, line.encode())
        await anyio.sleep(self._rng.uniform(0.0, 0.02))
        return Video(f"test://{request.idempotency_key}", 3.0, "16:9", 1280, 720)


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    provider = LoggingProvider(args.log, rng)
    notifier: Notifier = RecordingNotifier()
    if args.webhook:
        notifier = HttpNotifier(allowed_networks=("127.0.0.0/8",))
    engine = Engine.sqlite(
        args.db,
        provider=provider,
        notifier=notifier,
        concurrency=4,
        lease=args.lease,
        sweep_interval=args.lease / 4,
    )
    async with engine:
        if args.webhook:
            hook = {
                "url": args.webhook,
                "secret": "whsec_c2VjcmV0LWZvci10ZXN0cy1vZi10aGlydHktdHdvLWI=",
            }
            execution_id = await engine.submit(BASE, webhook=hook)
            print(f"ACK {execution_id}", flush=True)
            async for progress in engine.watch(execution_id):
                if progress.status == "completed":
                    print("ENDED", flush=True)
            await anyio.sleep_forever()
        bases: list[str] = []
        for _ in range(args.submit):
            if bases and rng.random() < 0.4:
                execution_id = await engine.submit(VARIANT, base_execution_id=rng.choice(bases))
            else:
                execution_id = await engine.submit(BASE)
                bases.append(execution_id)
            print(f"ACK {execution_id}", flush=True)
        print("SUBMITTED", flush=True)
        while True:
            counts = await engine.storage.counts()
            if args.until_idle and not counts.get("pending") and not counts.get("processing"):
                break
            await anyio.sleep(0.05)
    print("IDLE", flush=True)


def cli() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--submit", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--until-idle", action="store_true")
    parser.add_argument("--webhook", help="submit one execution with this webhook, then wait")
    anyio.run(main, parser.parse_args())
    sys.stdout.flush()


if __name__ == "__main__":
    cli()

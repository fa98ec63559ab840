"""Webhook deliveries per second, and completion-to-receipt latency, to a receiver on loopback.

    python benchmarks/webhook_delivery.py            # 2,000 executions per run
    python benchmarks/webhook_delivery.py --quick    # 300

The receiver is a minimal ASGI app under uvicorn in a process of its own on 127.0.0.1 (so its CPU
is not the engine's): it reads each POST, notes ``time.time()`` against the ``webhook-id`` header
once the body is in, and answers 200 with no body. Engines and receiver run on one host, so the
two processes' ``time.time()`` are the same clock.

Five runs against that receiver, in this order:

1. ``Engine.in_memory`` with ``FakeVideoProvider(latency=0)`` and
   ``HttpNotifier(allowed_networks=("127.0.0.0/8",))``: N one-job executions, each with a signed
   webhook, submitted by 32 tasks. The notifier as the factories make it: a new
   ``httpx.AsyncClient`` for every attempt.
2. The same with ``HttpNotifier(client=...)``: one ``httpx.AsyncClient`` shared by all attempts.
3. and 4. Both again on ``Engine.sqlite`` (``synchronous=FULL``): every execution, its outbox
   event, each delivery attempt and the event's end are durable writes.
5. Baseline: N bare POSTs of the same kind of signed body (headers made by ``engine.webhooks``)
   sent with one shared ``httpx.AsyncClient`` by as many concurrent tasks as run 1 had deliveries
   in flight on average (``--concurrency`` to choose): the loopback path and the receiver alone.

For each engine run: the rate of 2xx receipts (over the span from the first execution's
completion to the last receipt) and end to end (from the first submit), how fast the executions
completed, and per execution the latency from its ``completed_at`` (``Engine.get``) to its
webhook's arrival at the receiver, p50 and p99; also the engine's own ``delivery_latency_p50/p99``
(completion to the notifier seeing the 2xx) as a cross-check, and how many deliveries were in
flight (from the notifier's attempts). For the baseline: POSTs per second, and each POST's start
to its arrival. Reading the latencies: in memory all N executions complete in well under a second,
so an execution's latency is mostly the wait for the deliveries ahead of it (a burst); on SQLite
executions complete at about the delivery rate, so it is closer to one delivery's cost.

Bounded: N at most 20,000, each run at most 300 s, 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
from attrs import frozen

from adapters.http import HttpNotifier
from adapters.memory import FakeVideoProvider
from engine import Engine
from engine.models import Video
from engine.webhooks import encode_payload, headers_for, payload_for

SECRET = "whsec_" + "YmVuY2htYXJrLXNlY3JldC1ieXRlcy0wMTIzNDU2Nzg="
PLAN = {"jobs": [{"id": "job1", "type": "generate", "params": {"prompt": "Scene", "duration": 3}}]}
SUBMITTERS = 32
RUN_TIMEOUT = 300.0
MAX_EXECUTIONS = 20_000
LOOPBACK = ("127.0.0.0/8",)


# --- the receiver (a child process) ---------------------------------------------------------------


def receiver_main() -> None:
    """Serve the receiver on 127.0.0.1 until SIGTERM; print ``PORT <n>`` once listening.

    ``POST /hook`` records the arrival; ``GET /arrivals`` answers ``{webhook-id: [times]}`` and
    forgets them (so each run reads its own).
    """
    from contrib.serve import RunningServer, serve_app
    from contrib.types import Receive, Scope, Send

    arrivals: dict[str, list[float]] = {}
    ok = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]}
    empty = {"type": "http.response.body", "body": b""}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":
            body = json.dumps(arrivals).encode()
            arrivals.clear()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        while True:  # the whole body, then the arrival
            message = await receive()
            if not message.get("more_body"):
                break
        now = time.time()
        webhook_id = ""
        for name, value in scope["headers"]:
            if name == b"webhook-id":
                webhook_id = value.decode("latin-1")
                break
        arrivals.setdefault(webhook_id, []).append(now)
        await send(ok)
        await send(empty)

    async def main() -> None:
        async with anyio.create_task_group() as task_group:

            async def serve(task_status: Any) -> None:
                await serve_app(
                    app,
                    host="127.0.0.1",
                    port=0,
                    timeout_graceful_shutdown=2,
                    task_status=task_status,
                )
                task_group.cancel_scope.cancel()

            running: RunningServer = await task_group.start(serve)
            print(f"PORT {running.port}", flush=True)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    running.stop()
                    return

    anyio.run(main)


class Receiver:
    """The receiver process: ``with Receiver() as receiver: receiver.url``."""

    def __init__(self) -> None:
        self.url = ""

    def __enter__(self) -> Receiver:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--receiver"], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            word, _, value = line.strip().partition(" ")
            if word == "PORT":
                self.url = f"http://127.0.0.1:{value}"
                return self
        raise RuntimeError("the receiver did not start")

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    async def arrivals(self) -> dict[str, list[float]]:
        """The arrivals since the last call, by ``webhook-id``."""
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.get(self.url + "/arrivals", timeout=30)
            response.raise_for_status()
            found: dict[str, list[float]] = response.json()
            return found


# --- measuring ------------------------------------------------------------------------------------


@frozen
class Result:
    name: str
    count: int
    received: int
    duplicates: int
    rate: float
    end_to_end: float | None
    completions: float | None
    p50: float
    p99: float
    engine_p50: float | None = None
    engine_p99: float | None = None
    in_flight_mean: float | None = None
    in_flight_peak: int | None = None
    failed_attempts: int = 0


def quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def in_flight(intervals: Sequence[tuple[float, float]]) -> tuple[float, int]:
    """Mean and peak number of overlapping ``(start, end)`` intervals."""
    if not intervals:
        return 0.0, 0
    span = max(end for _, end in intervals) - min(start for start, _ in intervals)
    busy = sum(end - start for start, end in intervals)
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return (busy / span if span > 0 else float(len(intervals))), peak


async def engine_run(
    name: str, engine: Engine, notifier: HttpNotifier, receiver: Receiver, count: int
) -> Result:
    hook = {"url": receiver.url + "/hook", "secret": SECRET}
    ids: list[str] = []
    async with engine:
        started = time.time()

        async def submit_many(share: int) -> None:
            for _ in range(share):
                ids.append(await engine.submit(PLAN, webhook=hook))

        async with anyio.create_task_group() as group:
            for i in range(SUBMITTERS):
                group.start_soon(submit_many, count // SUBMITTERS + (i < count % SUBMITTERS))
        with anyio.fail_after(RUN_TIMEOUT):
            while True:
                metrics = await engine.metrics()
                done = metrics.deliveries.get("delivered", 0) + metrics.deliveries.get("failed", 0)
                if done >= count:
                    break
                await anyio.sleep(0.02)
        completed_at = {}
        for execution_id in ids:
            execution = await engine.get(execution_id)
            assert execution.completed_at is not None, execution.status
            completed_at[f"evt_{execution_id}_{execution.generation}"] = execution.completed_at
    arrivals = await receiver.arrivals()
    latencies = [arrivals[e][0] - at for e, at in completed_at.items() if e in arrivals]
    last = max((times[-1] for times in arrivals.values()), default=math.nan)
    first_completion = min(completed_at.values())
    mean, peak = in_flight([(a.at, a.at + a.latency) for a in notifier.attempts])
    return Result(
        name=name,
        count=count,
        received=len(latencies),
        duplicates=sum(len(times) - 1 for times in arrivals.values()),
        rate=len(latencies) / (last - first_completion),
        end_to_end=len(latencies) / (last - started),
        completions=count / (max(completed_at.values()) - started),
        p50=quantile(latencies, 0.50),
        p99=quantile(latencies, 0.99),
        engine_p50=metrics.delivery_latency_p50,
        engine_p99=metrics.delivery_latency_p99,
        in_flight_mean=mean,
        in_flight_peak=peak,
        failed_attempts=sum(a.outcome != "delivered" for a in notifier.attempts),
    )


async def baseline_run(receiver: Receiver, count: int, concurrency: int) -> Result:
    """``count`` signed POSTs through one shared client, ``concurrency`` at a time."""
    video = Video("fake://videos/x.mp4", 3.0, "16:9", 1280, 720)
    url = receiver.url + "/hook"
    started_at: dict[str, float] = {}
    statuses: list[int] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    send, receive = anyio.create_memory_object_stream[int](count)
    for i in range(count):
        send.send_nowait(i)
    send.close()
    async with httpx.AsyncClient(trust_env=False, limits=limits, timeout=15) as client:

        async def worker() -> None:
            async for i in receive:
                event_id = f"evt_bare{i:06d}_0"
                body = encode_payload(payload_for(f"bare{i:06d}", "completed", video, None))
                headers = headers_for(body, SECRET, msg_id=event_id, timestamp=int(time.time()))
                headers["Content-Type"] = "application/json"
                started_at[event_id] = time.time()
                response = await client.post(url, content=body, headers=headers)
                statuses.append(response.status_code)

        begun = time.time()
        with anyio.fail_after(RUN_TIMEOUT):
            async with anyio.create_task_group() as group:
                for _ in range(concurrency):
                    group.start_soon(worker)
        elapsed = time.time() - begun
    arrivals = await receiver.arrivals()
    latencies = [arrivals[e][0] - at for e, at in started_at.items() if e in arrivals]
    ok = sum(200 <= s < 300 for s in statuses)
    return Result(
        name=f"baseline: bare POSTs, shared client, {concurrency} at a time",
        count=count,
        received=len(latencies),
        duplicates=sum(len(times) - 1 for times in arrivals.values()),
        rate=ok / elapsed,
        end_to_end=None,
        completions=None,
        p50=quantile(latencies, 0.50),
        p99=quantile(latencies, 0.99),
        failed_attempts=count - ok,
    )


def _ms(value: float | None) -> str:
    return "    n/a" if value is None or math.isnan(value) else f"{value * 1e3:7.1f}"


def report(result: Result) -> None:
    print(f"\n{result.name}")
    print(
        f"  received {result.received:,} of {result.count:,} (duplicates {result.duplicates}, "
        f"non-2xx or failed attempts {result.failed_attempts})"
    )
    rate = f"  {result.rate:8,.0f} deliveries/s"
    if result.end_to_end is not None and result.completions is not None:
        rate += (
            f"   end to end (first submit to last receipt) {result.end_to_end:,.0f}/s;"
            f"   executions completed {result.completions:,.0f}/s"
        )
    print(rate)
    what = "completion -> receipt" if result.end_to_end is not None else "POST start -> receipt"
    print(f"  {what}: p50 {_ms(result.p50)} ms   p99 {_ms(result.p99)} ms")
    if result.in_flight_peak is not None:
        print(
            f"  engine metrics (completion -> 2xx seen): p50 {_ms(result.engine_p50)} ms   "
            f"p99 {_ms(result.engine_p99)} ms;   deliveries in flight: mean "
            f"{result.in_flight_mean:.1f}, peak {result.in_flight_peak}"
        )


async def run(count: int, concurrency: int | None) -> None:
    with Receiver() as receiver, tempfile.TemporaryDirectory() as tmp:
        print(
            f"{count:,} executions per run, one job each (FakeVideoProvider(latency=0)), "
            f"submitted by {SUBMITTERS} tasks; receiver {receiver.url} in another process"
        )
        # Warm up the receiver and this process's imports and code paths.
        await baseline_run(receiver, min(200, count), 8)
        results: dict[str, Result] = {}
        for store in ("memory", "sqlite"):
            for shared in (False, True):
                async with httpx.AsyncClient(trust_env=False, follow_redirects=False) as client:
                    notifier = HttpNotifier(
                        client=client if shared else None,
                        allowed_networks=LOOPBACK,
                        retry_schedule=(0, 1, 1),
                    )
                    provider = FakeVideoProvider(latency=0)
                    if store == "memory":
                        engine = Engine.in_memory(provider=provider, notifier=notifier)
                        title = "Engine.in_memory"
                    else:
                        path = Path(tmp) / f"engine-{len(results)}.db"
                        engine = Engine.sqlite(str(path), provider=provider, notifier=notifier)
                        title = "Engine.sqlite (synchronous=FULL, durable outbox)"
                    how = (
                        "HttpNotifier(client=one shared AsyncClient)"
                        if shared
                        else "HttpNotifier() (default: a new client per attempt)"
                    )
                    result = await engine_run(f"{title} + {how}", engine, notifier, receiver, count)
                results[f"{store}/{'shared' if shared else 'default'}"] = result
                report(result)
        if concurrency is None:
            concurrency = max(1, round(results["memory/default"].in_flight_mean or 1))
        bare = await baseline_run(receiver, count, concurrency)
        report(bare)
        print("\ndelivery rate / baseline rate:")
        for key, result in results.items():
            print(f"  {key:<16} {result.rate / bare.rate:6.0%}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 executions per run")
    parser.add_argument("--executions", type=int, default=None)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="the baseline's concurrent POSTs (default: the in-memory run's mean in flight)",
    )
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.receiver:
        receiver_main()
        return
    count = args.executions or (300 if args.quick else 2000)
    count = max(1, min(count, MAX_EXECUTIONS))
    concurrency = None if args.concurrency is None else max(1, min(args.concurrency, 1000))
    anyio.run(run, count, concurrency)


if __name__ == "__main__":
    main()

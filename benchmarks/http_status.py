"""Requests per second of the HTTP API under uvicorn, beside a bare ASGI app on the same server.

    python benchmarks/http_status.py             # 5 s per measurement
    python benchmarks/http_status.py --quick     # 2 s per measurement

Three servers run in turn, each in a process of its own on 127.0.0.1: a bare ASGI app that answers
``{"status":"ok"}`` (the floor for uvicorn on this machine), then the app over an SQLite engine.
The load generator is ``wrk`` when it is installed (``apt-get install wrk``), else a keep-alive
HTTP/1.1 loop on asyncio streams in another process (httpx's pool is too slow to load a server);
either way it runs on loopback only, for a fixed time. Measured:

- ``GET /api/execute/{id}/status`` (auth, rate limiting off, JSON) against the bare app's
  ``GET /``; the target is at least 50 % of bare. Twice: on a completed execution (whose status
  body the app keeps, since nothing changes it any more) and on a running one (a storage read
  every time).
- ``POST /api/execute`` end to end: a two-job plan parsed, validated, stored and started (its jobs
  run on the fake provider while the load goes on).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import anyio

KEY = "bench-key"
PLAN = {
    "jobs": [
        {"id": "job1", "type": "generate", "params": {"prompt": "Scene 1", "duration": 3}},
        {"id": "job2", "type": "reframe", "params": {"aspectRatio": "9:16"}, "dependsOn": ["job1"]},
    ]
}
HELLO = b'{"status":"ok"}'


# --- the servers (run as a child process) ---------------------------------------------------------


async def _hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    headers = [(b"content-type", b"application/json"), (b"content-length", b"15")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": HELLO})


async def _serve(kind: str, db: str) -> None:
    from adapters.memory import FakeVideoProvider, RecordingNotifier
    from contrib.asgi import create_app
    from contrib.serve import RunningServer, serve_app
    from engine import Engine

    async def until_signal(running: RunningServer) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                running.stop()
                return

    async def run(app: Any) -> None:
        async with anyio.create_task_group() as task_group:

            async def serve(task_status: Any) -> None:
                await serve_app(app, host="127.0.0.1", port=0, task_status=task_status)
                task_group.cancel_scope.cancel()

            running: RunningServer = await task_group.start(serve)
            task_group.start_soon(until_signal, running)
            print(f"PORT {running.port}", flush=True)

    if kind == "hello":
        await run(_hello)
        return
    never = anyio.Event()

    async def hold(request: Any) -> None:
        if request.params.get("prompt") == "hold":
            await never.wait()

    provider = FakeVideoProvider(on_call=hold)
    engine = Engine.sqlite(db, provider=provider, notifier=RecordingNotifier())
    async with engine:
        execution_id = await engine.submit(PLAN, tenant="bench")
        held = {"jobs": [{"id": "job1", "type": "generate", "params": {"prompt": "hold"}}]}
        running_id = await engine.submit(held, tenant="bench")
        print(f"RUNNING {running_id}", flush=True)
        print(f"EXECUTION {execution_id}", flush=True)
        await run(create_app(engine, api_keys={KEY: "bench"}, rate_limit=None))


class Server:
    """A server child process: ``with Server("app", db) as server: server.url``."""

    def __init__(self, kind: str, db: str) -> None:
        self.kind = kind
        self.db = db
        self.execution_id = ""
        self.running_id = ""
        self.url = ""

    def __enter__(self) -> Server:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", self.kind, "--db", self.db],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            word, _, value = line.strip().partition(" ")
            if word == "EXECUTION":
                self.execution_id = value
            elif word == "RUNNING":
                self.running_id = value
            elif word == "PORT":
                self.url = f"http://127.0.0.1:{value}"
                return self
        raise RuntimeError(f"the {self.kind} server did not start")

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


# --- the load -------------------------------------------------------------------------------------


def _wrk(url: str, seconds: float, connections: int, post: bool) -> dict[str, float]:
    script = None
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    args += ["-H", f"Authorization: Bearer {KEY}"]
    if post:
        body = json.dumps(PLAN).replace("'", "\\'")
        script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)  # noqa: SIM115
        with script:
            script.write(
                f"wrk.method = 'POST'\nwrk.body = '{body}'\n"
                "wrk.headers['Content-Type'] = 'application/json'\n"
            )
        args += ["-s", script.name]
    try:
        out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    finally:
        if script is not None:
            os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result = {"rps": rps, "errors": float(non_2xx[1]) if non_2xx else 0.0}
    for label in ("50%", "99%"):
        match = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out)
        if match:
            scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[match[2]]
            result[f"p{label[:-1]}_ms"] = float(match[1]) * scale
    return result


def _socket_child(
    url: str, seconds: float, connections: int, post: bool, queue: multiprocessing.Queue[Any]
) -> None:
    """Keep-alive HTTP/1.1 over plain asyncio streams: httpx's pool tops out at a few hundred
    requests a second here, far below the server, so it would measure itself."""
    import asyncio
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    body = json.dumps(PLAN).encode()
    head = f"{'POST' if post else 'GET'} {parts.path} HTTP/1.1\r\nHost: {host}\r\n"
    head += f"Authorization: Bearer {KEY}\r\n"
    if post:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    request = head.encode() + b"\r\n" + (body if post else b"")

    async def main() -> dict[str, float]:
        latencies: list[float] = []
        errors = 0
        deadline = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal errors
            reader, writer = await asyncio.open_connection(host, port)
            try:
                while time.monotonic() < deadline:
                    started = time.perf_counter()
                    writer.write(request)
                    answer = await reader.readuntil(b"\r\n\r\n")
                    length = re.search(rb"(?i)content-length: *(\d+)", answer)
                    await reader.readexactly(int(length[1]) if length else 0)
                    latencies.append(time.perf_counter() - started)
                    errors += not answer.startswith((b"HTTP/1.1 2", b"HTTP/1.0 2"))
            finally:
                writer.close()
                await writer.wait_closed()

        begun = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.monotonic() - begun
        latencies.sort()
        return {
            "rps": len(latencies) / elapsed,
            "errors": float(errors),
            "p50_ms": latencies[len(latencies) // 2] * 1e3,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
        }

    queue.put(asyncio.run(main()))


def _sockets(url: str, seconds: float, connections: int, post: bool) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[Any] = context.Queue()
    child = context.Process(target=_socket_child, args=(url, seconds, connections, post, queue))
    child.start()
    result: dict[str, float] = queue.get(timeout=seconds + 60)
    child.join()
    return result


def load(
    url: str, seconds: float, connections: int, *, post: bool = False, tool: str = "wrk"
) -> dict[str, float]:
    """Hammer ``url`` for ``seconds`` (after a short warm-up) and report what it answered."""
    generate = _wrk if tool == "wrk" else _sockets
    generate(url, min(1.0, seconds), connections, post)  # warm-up
    return generate(url, seconds, connections, post)


# --- main -----------------------------------------------------------------------------------------


def _row(name: str, result: dict[str, float]) -> str:
    return (
        f"{name:<34} {result['rps']:>9,.0f} req/s   p50 {result.get('p50_ms', 0):6.2f} ms"
        f"   p99 {result.get('p99_ms', 0):6.2f} ms   non-2xx {result['errors']:.0f}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s per measurement")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--load", choices=("auto", "wrk", "python"), default="auto", help="the load generator"
    )
    parser.add_argument("--serve", choices=("hello", "app"), help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        anyio.run(_serve, args.serve, args.db or ":memory:")
        return
    seconds = min(args.seconds or (2.0 if args.quick else 5.0), 30.0)
    tool = args.load if args.load != "auto" else ("wrk" if shutil.which("wrk") else "python")
    shown = "python asyncio keep-alive (another process)" if tool == "python" else tool
    print(f"load: {shown}, {args.connections} connections, {seconds:g} s each, 127.0.0.1 only")
    with tempfile.TemporaryDirectory() as tmp:
        with Server("hello", "") as hello:
            bare = load(hello.url + "/", seconds, args.connections, tool=tool)
        with Server("app", os.path.join(tmp, "engine.db")) as app:
            status = load(
                f"{app.url}/api/execute/{app.execution_id}/status",
                seconds,
                args.connections,
                tool=tool,
            )
            running = load(
                f"{app.url}/api/execute/{app.running_id}/status",
                seconds,
                args.connections,
                tool=tool,
            )
            submit = load(app.url + "/api/execute", seconds, args.connections, post=True, tool=tool)
    print(_row("bare ASGI hello (GET /)", bare))
    print(_row("GET .../status (completed)", status))
    print(_row("GET .../status (running)", running))
    print(_row("POST /api/execute (end to end)", submit))
    for name, result in (("completed", status), ("running", running)):
        ratio = result["rps"] / bare["rps"]
        verdict = "meets" if ratio >= 0.5 else "misses"
        print(f"status ({name}) / bare: {ratio:.0%} ({verdict} the 50 % target)")


if __name__ == "__main__":
    main()

"""Server memory under a flood of large plans: is what the server keeps per execution bounded?

    python benchmarks/soak_memory.py            # 1,000 plans of ~1 MB
    python benchmarks/soak_memory.py --quick    # 200 plans

A real server (``python -m contrib.serve --db <tmp>/soak.db --provider fake``) runs in a process of
its own on 127.0.0.1. One tenant ("flood") submits ``--plans`` valid plans of about 1 MB each (a
``generate`` and an ``addSubtitles`` with 16,000 cues, as the attack that found the leak did),
``--concurrency`` at a time, as fast as the server takes them (a 429 from the live-plan limit is
waited out and retried). Meanwhile another tenant ("calm") polls the status of one of its own
executions. Reported: the server's RSS (``VmRSS`` of ``/proc/<pid>/status``) every ``--every``
plans, and the calm tenant's status latency p50 / p99 / max during the flood. The target: RSS flat
within 50 MB after warm-up (the first ``--warmup`` plans); the exit status is 1 when it is not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import anyio
import httpx

FLOOD = {"Authorization": "Bearer flood-key"}
CALM = {"Authorization": "Bearer calm-key"}
ROOT = Path(__file__).resolve().parents[1]


def large_plan(cues: int = 16_000) -> bytes:
    """A valid plan of about 1 MB: subtitles over a 10-minute clip."""
    step = 600 / cues
    plan = {
        "jobs": [
            {"id": "clip", "type": "generate", "params": {"prompt": "soak", "duration": 600}},
            {
                "id": "subs",
                "type": "addSubtitles",
                "dependsOn": ["clip"],
                "params": {
                    "language": "en",
                    "cues": [
                        {
                            "start": round(i * step, 4),
                            "end": round(i * step + step * 0.8, 4),
                            "text": f"line {i} of the text",
                        }
                        for i in range(cues)
                    ],
                },
            },
        ]
    }
    return json.dumps(plan, separators=(",", ":")).encode()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def start_server(db: str) -> tuple[subprocess.Popen[str], str, list[str]]:
    command = [sys.executable, "-m", "contrib.serve", "--db", db, "--port", "0"]
    command += ["--no-access-log", "--rate-limit", "none", "--provider", "fake"]
    env = {
        **os.environ,
        "ENGINE_API_KEYS": "flood-key=flood,calm-key=calm",
        "PYTHONPATH": str(ROOT),
    }
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    assert process.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    for line in process.stderr:
        lines.append(line.rstrip())
        match = re.search(r"serving .* on (http://\S+)", line)
        if match:
            url = match[1]
            break
        if time.monotonic() > deadline:
            break
    else:
        raise RuntimeError("the server did not start:\n" + "\n".join(lines))

    def drain() -> None:  # keep reading, or the server blocks on a full pipe
        assert process.stderr is not None
        for rest in process.stderr:
            lines.append(rest.rstrip())

    threading.Thread(target=drain, daemon=True).start()
    return process, url, lines


async def live_executions(client: httpx.AsyncClient) -> str:
    """The server's ``live_executions`` gauge, as ``/metrics`` shows it to the flooding tenant
    (``?`` when it does not)."""
    answer = await client.get("/metrics", headers=FLOOD)
    match = re.search(r"^\S*live_executions\S* (\S+)$", answer.text, re.MULTILINE)
    return match[1] if answer.status_code == 200 and match else "?"


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def soak(url: str, pid: int, args: argparse.Namespace) -> dict[str, object]:
    body = large_plan(args.cues)
    samples: list[tuple[int, float]] = [(0, rss_mb(pid))]
    latencies: list[float] = []
    refused = 0
    submitted = 0
    done = anyio.Event()
    headers = {**FLOOD, "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=args.concurrency + 2)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        small = {"jobs": [{"id": "a", "type": "generate", "params": {"prompt": "calm"}}]}
        calm = await client.post("/api/execute", json=small, headers=CALM)
        calm.raise_for_status()
        calm_id = calm.json()["executionId"]

        async def poll() -> None:
            while not done.is_set():
                started = time.perf_counter()
                answer = await client.get(f"/api/execute/{calm_id}/status", headers=CALM)
                latencies.append((time.perf_counter() - started) * 1000)
                answer.raise_for_status()
                await anyio.sleep(0.02)

        async def flood(count: int) -> None:
            nonlocal refused, submitted
            for _ in range(count):
                while True:
                    answer = await client.post("/api/execute", content=body, headers=headers)
                    if answer.status_code != 429:
                        break
                    refused += 1
                    await anyio.sleep(float(answer.headers.get("Retry-After", "1")))
                if answer.status_code != 202:
                    raise RuntimeError(f"{answer.status_code}: {answer.text[:300]}")
                submitted += 1
                if submitted % args.every == 0:
                    samples.append((submitted, rss_mb(pid)))
                    live = await live_executions(client)
                    print(
                        f"  {submitted:5d} plans  RSS {samples[-1][1]:7.1f} MB  live {live}",
                        flush=True,
                    )

        async with anyio.create_task_group() as group:
            group.start_soon(poll)
            async with anyio.create_task_group() as submitters:
                share, extra = divmod(args.plans, args.concurrency)
                for index in range(args.concurrency):
                    submitters.start_soon(flood, share + (1 if index < extra else 0))
            done.set()
        await anyio.sleep(args.idle)
        samples.append((submitted, rss_mb(pid)))
        print(f"  idle {args.idle:g} s    RSS {samples[-1][1]:7.1f} MB", flush=True)
    after = [mb for n, mb in samples if n >= args.warmup]
    return {
        "plan_bytes": len(body),
        "plans": submitted,
        "refused_429": refused,
        "rss_start_mb": round(samples[0][1], 1),
        "rss_after_warmup_mb": round(after[0], 1),
        "rss_end_mb": round(samples[-1][1], 1),
        "rss_max_after_warmup_mb": round(max(after), 1),
        "growth_after_warmup_mb": round(max(after) - after[0], 1),
        "calm_status_ms": {
            "count": len(latencies),
            "p50": round(quantile(latencies, 0.5), 2),
            "p99": round(quantile(latencies, 0.99), 2),
            "max": round(max(latencies), 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plans", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="200 plans")
    parser.add_argument("--cues", type=int, default=16_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--every", type=int, default=50, help="sample RSS every N plans")
    parser.add_argument("--warmup", type=int, default=100, help="plans before the flat target")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds idle before the last")
    args = parser.parse_args()
    if args.quick:
        args.plans = 200
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        process, url, _lines = start_server(str(Path(tmp) / "soak.db"))
        try:
            print(f"server pid {process.pid} at {url}; {args.plans} plans", flush=True)
            report = anyio.run(soak, url, process.pid, args)
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    print(json.dumps(report, indent=2))
    growth = report["growth_after_warmup_mb"]
    assert isinstance(growth, float)
    if growth > 50:
        print(f"FAIL: RSS grew {growth} MB after warm-up (target: within 50 MB)")
        sys.exit(1)
    print(f"ok: RSS within {growth} MB after warm-up")


if __name__ == "__main__":
    main()

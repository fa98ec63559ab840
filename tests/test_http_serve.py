"""``python -m contrib.serve``: keys, a real process serving, and a graceful stop on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from contrib.auth import KeyRing, RateLimiter, parse_keys
from engine import ConfigError


def test_parse_keys() -> None:
    assert parse_keys("k1=t1, k2=t2,") == {"k1": "t1", "k2": "t2"}
    assert parse_keys("# comment\nabc==tenant\n\n  x = y \n", separator="\n") == {
        "abc=": "tenant",
        "x": "y",
    }
    assert parse_keys("") == {}
    for bad in ("nokey", "=tenant", "key="):
        with pytest.raises(ConfigError):
            parse_keys(bad)


def test_key_ring_and_rate_limiter() -> None:
    ring = KeyRing({"k1": "t1"})
    assert ring.identify(b"Bearer k1") is not None
    assert ring.identify(b"BEARER   k1  ") is not None
    assert ring.identify(b"Bearer k2") is None
    assert ring.identify(None) is None
    for bad in ("", "has space", "é"):
        with pytest.raises(ConfigError):
            KeyRing({bad: "t"})
    with pytest.raises(ConfigError):
        KeyRing({"k": ""})
    now = [0.0]
    limiter = RateLimiter(2, 1.0, clock=lambda: now[0])
    assert limiter.acquire(b"a") == 0.0 and limiter.acquire(b"a") == 0.0
    assert limiter.acquire(b"a") == pytest.approx(0.5)
    assert limiter.acquire(b"b") == 0.0
    now[0] = 0.5
    assert limiter.acquire(b"a") == 0.0
    for requests, seconds in ((0, 1.0), (1, 0.0), (float("nan"), 1.0)):
        with pytest.raises(ConfigError):
            RateLimiter(requests, seconds)


async def _serving_url(process: Process) -> tuple[str, list[str]]:
    assert process.stderr is not None
    lines: list[str] = []
    with anyio.fail_after(20):
        async for text in TextReceiveStream(process.stderr):
            lines.extend(text.splitlines())
            for line in lines:
                match = re.search(r"serving .* on (http://\S+)", line)
                if match:
                    return match[1], lines
    raise AssertionError("\n".join(lines))


async def _drain(process: Process) -> str:
    assert process.stderr is not None
    chunks: list[str] = []
    try:
        async for text in TextReceiveStream(process.stderr):
            chunks.append(text)
    except (anyio.EndOfStream, anyio.ClosedResourceError):
        pass
    return "".join(chunks)


@pytest.mark.anyio
async def test_serve_runs_and_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# the file form\nfile-key=tenant-a\n")
    command = [sys.executable, "-m", "contrib.serve", "--db", str(tmp_path / "e.db"), "--port", "0"]
    command += ["--keys-file", str(keys), "--no-access-log"]
    env = {**os.environ, "ENGINE_API_KEYS": "ignored=when-a-file-is-given"}
    async with await anyio.open_process(command, env=env, cwd=Path(__file__).parents[1]) as process:
        try:
            url, lines = await _serving_url(process)
            async with httpx.AsyncClient(base_url=url) as client:
                assert (await client.get("/healthz")).status_code == 200
                auth = {"Authorization": "Bearer file-key"}
                plan = {"jobs": [{"id": "a", "type": "generate", "params": {"prompt": "x"}}]}
                submitted = await client.post("/api/execute", json=plan, headers=auth)
                assert submitted.status_code == 202
                wrong = await client.get("/metrics", headers={"Authorization": "Bearer ignored"})
                assert wrong.status_code == 401
        finally:
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(20):
                code = await process.wait()
        rest = await _drain(process)
    assert code == 0
    log = "\n".join(lines) + rest
    assert "engine stopped" in log and "Traceback" not in log


def test_serve_needs_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from contrib.serve import main

    monkeypatch.delenv("ENGINE_API_KEYS", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["--db", str(tmp_path / "e.db")])
    assert exited.value.code == 2

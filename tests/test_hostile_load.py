"""Hostile load against the HTTP face (issue 12, items 2 to 4): floods of wrong keys, slow and
excess sockets, large plans held live, and what the server keeps per execution.

Every server here is real: uvicorn on 127.0.0.1 (in the test's task group, or ``python -m
contrib.serve`` in a process of its own), reached by httpx or by raw sockets. Linux routes all
of 127.0.0.0/8 to the loopback interface, so a client bound to 127.0.0.2 is "another address".
Slow-socket tests assert on outcomes (a 408, a closed connection) inside generous bounds (at
least 5 times the configured limit), never on how long the server took.
"""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from anyio.abc import SocketStream
from anyio.streams.text import TextReceiveStream
from http_support import ALPHA, BETA, live_api

from adapters.memory import FakeVideoProvider
from contrib.auth import FailureLimiter, address_key
from contrib.serve import RunningServer, serve_app
from contrib.types import ASGIApp
from engine import Engine
from engine.models import JobRequest
from engine.plan import ExecutionPlan

ROOT = Path(__file__).parents[1]


def _client(url: str, address: str = "127.0.0.1") -> httpx.AsyncClient:
    """An httpx client whose connections come from ``address``."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=url, transport=transport, timeout=10)


def _plan(prompt: str = "x", padding: int = 0, jobs: int = 1) -> dict[str, Any]:
    params: dict[str, Any] = {"prompt": prompt + " " * padding}
    return {"jobs": [{"id": f"j{n}", "type": "generate", "params": params} for n in range(jobs)]}


JSON = {"Content-Type": "application/json"}


def _body(plan: dict[str, Any]) -> bytes:
    return json.dumps(plan).encode()


# --- failed-auth limiting -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_wrong_key_flood_from_one_address_is_refused_and_others_are_not() -> None:
    """600 wrong keys from 127.0.0.2: 401 for the budget (20), then 429 with Retry-After, even
    for a valid key from that address; a valid tenant on 127.0.0.1 keeps getting 200."""
    async with live_api(None) as live, _client(live.url) as calm:
        created = await calm.post("/api/execute", json=_plan(), headers=ALPHA)
        assert created.status_code == 202
        status_url = f"/api/execute/{created.json()['executionId']}/status"
        codes: list[int] = []
        retry_after: list[str | None] = []
        calm_codes: list[int] = []
        flooding = True

        async def flood(client: httpx.AsyncClient, count: int) -> None:
            for number in range(count):
                wrong = {"Authorization": f"Bearer wrong-{number}"}
                answer = await client.get(status_url, headers=wrong)
                codes.append(answer.status_code)
                retry_after.append(answer.headers.get("Retry-After"))

        async def poll(client: httpx.AsyncClient) -> None:
            while flooding or not calm_codes:
                calm_codes.append((await client.get(status_url, headers=ALPHA)).status_code)
                await anyio.sleep(0.05)  # 20 a second: under the per-key rate limit

        async with _client(live.url, "127.0.0.2") as attacker, _client(live.url) as calm:
            async with anyio.create_task_group() as group:
                group.start_soon(poll, calm)
                async with anyio.create_task_group() as floods:
                    for _ in range(6):
                        floods.start_soon(flood, attacker, 100)
                flooding = False
            # The attacker's address is refused whatever it sends, a right key included:
            # otherwise 429-or-200 would still tell it when it guessed right.
            refused = await attacker.get(status_url, headers=ALPHA)
            still_fine = await calm.get(status_url, headers=ALPHA)

    assert len(codes) == 600
    assert codes.count(401) == 20, codes[:40]
    assert codes.count(429) == 580
    assert set(codes) == {401, 429}
    for code, wait in zip(codes, retry_after, strict=True):
        if code == 429:
            assert wait is not None and wait.isdigit() and int(wait) >= 1
    assert refused.status_code == 429
    assert refused.json()["type"] == "urn:videoflow:problem:rate-limited"
    assert "failed API keys from this address" in refused.json()["detail"]
    assert calm_codes and set(calm_codes) == {200}
    assert still_fine.status_code == 200


@pytest.mark.anyio
async def test_the_global_ceiling_refuses_failing_addresses_only() -> None:
    """Once failures over all addresses pass the ceiling, an address that failed recently is
    refused at once; one that never failed still gets in with a valid key."""
    options: dict[str, Any] = {"auth_failures": (5, 60.0), "auth_failure_ceiling": (10, 60.0)}
    async with live_api(None, **options) as live:
        wrong = {"Authorization": "Bearer nope"}
        for host in range(10, 22):
            async with _client(live.url, f"127.0.0.{host}") as client:
                assert (await client.get("/metrics", headers=wrong)).status_code == 401
        async with _client(live.url, "127.0.0.21") as failed_before:
            second = await failed_before.get("/metrics", headers=ALPHA)
        async with _client(live.url, "127.0.0.50") as clean:
            fine = await clean.get("/metrics", headers=BETA)
    assert second.status_code == 429 and int(second.headers["Retry-After"]) >= 1
    assert fine.status_code == 200


def test_failure_limiter_refills_and_stays_bounded() -> None:
    now = [0.0]
    limiter = FailureLimiter(3, 30.0, clock=lambda: now[0], max_addresses=100)
    for _ in range(3):
        assert limiter.refused("10.0.0.1") == 0.0
        limiter.failed("10.0.0.1")
    assert limiter.refused("10.0.0.1") == pytest.approx(10.0)  # one failure back every 10 s
    assert limiter.refused("10.0.0.2") == 0.0
    now[0] = 10.0
    assert limiter.refused("10.0.0.1") == 0.0
    for number in range(1000):
        limiter.failed(f"10.1.{number // 256}.{number % 256}")
    assert len(limiter) == 100  # the addresses that failed longest ago are forgotten
    now[0] = 1000.0
    assert limiter.refused("10.1.3.231") == 0.0
    assert len(limiter) == 99  # recovered: forgotten
    # One host usually holds a whole IPv6 /64: it is one address here.
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert address_key("::ffff:10.0.0.1") == "10.0.0.1"


# --- slow and excess clients --------------------------------------------------------------------


@asynccontextmanager
async def _guarded(app: ASGIApp, **limits: Any) -> AsyncIterator[RunningServer]:
    async with anyio.create_task_group() as group:
        server: RunningServer = await group.start(
            partial(serve_app, app, host="127.0.0.1", port=0, timeout_graceful_shutdown=1, **limits)
        )
        try:
            yield server
        finally:
            server.stop(force=True)


async def _trickle(stream: SocketStream, data: bytes, every: float) -> None:
    """Send ``data`` a byte every ``every`` seconds until it is sent or the server hangs up."""
    try:
        for index in range(len(data)):
            await stream.send(data[index : index + 1])
            await anyio.sleep(every)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass


async def _read_until_closed(stream: SocketStream, bound: float) -> bytes:
    """Everything the server sends until it closes the connection; fails after ``bound`` s."""
    received = b""
    with anyio.fail_after(bound):
        while True:
            try:
                received += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                return received


async def _slow_request(url_port: int, data: bytes, every: float, bound: float) -> bytes:
    async with (
        await anyio.connect_tcp("127.0.0.1", url_port) as stream,
        anyio.create_task_group() as group,
    ):
        group.start_soon(_trickle, stream, data, every)
        received = await _read_until_closed(stream, bound)
        group.cancel_scope.cancel()
    return received


@pytest.mark.anyio
async def test_headers_trickled_a_byte_at_a_time_are_answered_408_and_closed() -> None:
    """A header byte every 0.25 s, 1 s allowed: 408 and closed (read bounded at 10 s; the
    whole request would take 12 s to trickle)."""
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"s" * 10 + b"\r\n\r\n"
    async with live_api(None) as live, _guarded(live.app, header_timeout=1.0) as server:
        received = await _slow_request(server.port, request, 0.25, 10)
    assert received.startswith(b"HTTP/1.1 408 "), received


@pytest.mark.anyio
async def test_a_connection_that_sends_nothing_is_closed() -> None:
    async with (
        live_api(None) as live,
        _guarded(live.app, header_timeout=1.0) as server,
        await anyio.connect_tcp("127.0.0.1", server.port) as stream,
    ):
        received = await _read_until_closed(stream, 10)
    assert received == b""


@pytest.mark.anyio
async def test_a_trickled_body_is_answered_408_by_the_app_and_closed() -> None:
    """POST /api/execute with a body a byte every 0.25 s, 1 s allowed: a 408 problem, closed."""
    body = json.dumps(_plan()).encode()
    head = (
        b"POST /api/execute HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer key-alpha\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
    )
    async with (
        live_api(None, body_timeout=1.0) as live,
        _guarded(live.app) as server,
        await anyio.connect_tcp("127.0.0.1", server.port) as stream,
    ):
        await stream.send(head)
        async with anyio.create_task_group() as group:
            group.start_soon(_trickle, stream, body, 0.25)
            received = await _read_until_closed(stream, 10)
            group.cancel_scope.cancel()
    status_line, _, rest = received.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 408 "), received
    problem = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert problem["type"] == "urn:videoflow:problem:request-timeout"
    assert "did not arrive within 1 s" in problem["detail"]


@pytest.mark.anyio
async def test_a_trickled_body_to_a_route_that_does_not_read_it_is_closed() -> None:
    """The app answers at once without reading the body; the server still closes the
    connection once the body is late (before, each trickled byte kept it open)."""
    head = (
        b"POST /api/execute/nope/cancel HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer key-alpha\r\nContent-Length: 1000\r\n\r\n"
    )
    async with (
        live_api(None) as live,
        _guarded(live.app, body_timeout=1.0) as server,
        await anyio.connect_tcp("127.0.0.1", server.port) as stream,
    ):
        await stream.send(head)
        async with anyio.create_task_group() as group:
            group.start_soon(_trickle, stream, b"x" * 1000, 0.25)
            received = await _read_until_closed(stream, 10)
            group.cancel_scope.cancel()
    assert received.startswith(b"HTTP/1.1 404 "), received


@pytest.mark.anyio
async def test_connections_over_the_cap_are_answered_503_and_closed() -> None:
    async with live_api(None) as live, _guarded(live.app, max_connections=3) as server:
        held = [await anyio.connect_tcp("127.0.0.1", server.port) for _ in range(3)]
        try:
            async with await anyio.connect_tcp("127.0.0.1", server.port) as extra:
                refused = await _read_until_closed(extra, 10)
        finally:
            for stream in held:
                await stream.aclose()
        with anyio.fail_after(10):
            while True:  # the server sees the closes soon; then a new connection is served
                async with httpx.AsyncClient(base_url=server.url) as client:
                    answer = await client.get("/healthz")
                if answer.status_code == 200:
                    break
                assert answer.status_code == 503
                await anyio.sleep(0.05)
    assert refused.startswith(b"HTTP/1.1 503 "), refused
    assert b"retry-after: 1" in refused.lower()


async def _serving_url(process: anyio.abc.Process) -> str:
    assert process.stderr is not None
    lines: list[str] = []
    with anyio.fail_after(30):
        async for text in TextReceiveStream(process.stderr):
            lines.extend(text.splitlines())
            for line in lines:
                match = re.search(r"serving .* on (http://\S+)", line)
                if match:
                    return match[1]
    raise AssertionError("\n".join(lines))


@pytest.mark.anyio
async def test_serve_flags_bound_slow_sockets_and_failed_keys(tmp_path: Path) -> None:
    """``python -m contrib.serve --header-timeout 1 --auth-failures 3/60``: a trickled header
    is answered 408, the fourth wrong key 429."""
    command = [sys.executable, "-m", "contrib.serve", "--db", str(tmp_path / "e.db")]
    command += ["--port", "0", "--no-access-log", "--header-timeout", "1"]
    command += ["--body-timeout", "1", "--max-connections", "50", "--auth-failures", "3/60"]
    env = {**os.environ, "ENGINE_API_KEYS": "good=tenant", "PYTHONPATH": str(ROOT)}
    async with await anyio.open_process(command, env=env, cwd=ROOT) as process:
        try:
            url = await _serving_url(process)
            port = int(url.rsplit(":", 1)[1])
            request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"s" * 40
            slow = await _slow_request(port, request, 0.25, 10)
            async with httpx.AsyncClient(base_url=url) as client:
                wrong = {"Authorization": "Bearer bad"}
                codes = [
                    (await client.get("/metrics", headers=wrong)).status_code for _ in range(4)
                ]
        finally:
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(20):
                await process.wait()
    assert slow.startswith(b"HTTP/1.1 408 "), slow
    assert codes == [401, 401, 401, 429]


# --- bounded memory -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_tenant_over_its_live_plan_bytes_gets_429_until_executions_end() -> None:
    gate = anyio.Event()

    async def hold(request: JobRequest) -> None:
        await gate.wait()

    provider = FakeVideoProvider(on_call=hold)
    body_size = len(_body(_plan("x", 3000)))
    limit = 3 * body_size + body_size // 2  # room for three such plans, not four
    async with (
        live_api(None, provider=provider, max_live_plan_bytes=limit) as live,
        _client(live.url) as client,
    ):
        accepted = []
        for number in range(3):
            answer = await client.post(
                "/api/execute",
                content=_body(_plan(str(number), 3000)),
                headers={**ALPHA, **JSON},
            )
            assert answer.status_code == 202, answer.text
            accepted.append(answer.json()["executionId"])
        over = await client.post(
            "/api/execute", content=_body(_plan("3", 3000)), headers={**ALPHA, **JSON}
        )
        other = await client.post(
            "/api/execute", content=_body(_plan("b", 3000)), headers={**BETA, **JSON}
        )
        too_big = await client.post(
            "/api/execute", content=_body(_plan("x", 3000, jobs=5)), headers={**BETA, **JSON}
        )
        gate.set()
        with anyio.fail_after(10):
            for execution_id in accepted:
                while True:
                    status = await client.get(f"/api/execute/{execution_id}/status", headers=ALPHA)
                    if status.json()["status"] == "completed":
                        break
                    await anyio.sleep(0.02)
        again = await client.post(
            "/api/execute", content=_body(_plan("3", 3000)), headers={**ALPHA, **JSON}
        )
    assert over.status_code == 429
    problem = over.json()
    assert problem["type"] == "urn:videoflow:problem:live-plans-limit"
    assert f"{3 * body_size:,} bytes of plans" in problem["detail"]
    assert f"limit of {limit:,} bytes" in problem["detail"]
    assert over.headers["Retry-After"].isdigit()
    assert other.status_code == 202  # another tenant's budget is its own
    assert too_big.status_code == 413
    assert again.status_code == 202  # released when the executions ended


async def _ended(engine: Engine, execution_id: str) -> None:
    with anyio.fail_after(10):
        async for progress in engine.watch(execution_id):
            last = progress
    assert last.status == "completed"


@pytest.mark.anyio
async def test_the_fake_provider_keeps_only_the_latest_calls() -> None:
    provider = FakeVideoProvider(keep_calls=3)
    async with Engine.in_memory(provider=provider) as engine:
        for number in range(5):
            handle = await engine.submit(_plan(str(number)))
            await _ended(engine, handle)
    assert [call.params["prompt"] for call in provider.calls] == ["2", "3", "4"]
    assert {call.outcome for call in provider.calls} == {"completed"}
    assert all(call.finished_at is not None for call in provider.calls)
    off = FakeVideoProvider(keep_calls=0)
    async with Engine.in_memory(provider=off) as engine:
        handle = await engine.submit(_plan())
        await _ended(engine, handle)
    assert off.calls == []
    with pytest.raises(ValueError, match="keep_calls"):
        FakeVideoProvider(keep_calls=-1)


def test_served_fake_provider_records_no_calls(capsys: pytest.CaptureFixture[str]) -> None:
    from contrib.providers import load_provider

    provider = load_provider("fake")
    assert isinstance(provider, FakeVideoProvider) and provider.keep_calls == 0
    assert "NOT real videos" in capsys.readouterr().err


@pytest.mark.anyio
async def test_the_engine_keeps_no_plan_submitted_as_json_once_it_ended() -> None:
    """Plans parsed from JSON (every plan a server gets) are not cached after they ended (the
    cache of validated plan objects held the last 64, ~8 MB each for a 1 MB plan)."""
    async with Engine.in_memory(provider=FakeVideoProvider(keep_calls=0)) as engine:
        for number in range(5):
            execution_id = await engine.submit(_plan(str(number), 1000))
            await _ended(engine, execution_id)
        gc.collect()
        alive = [o for o in gc.get_objects() if isinstance(o, ExecutionPlan)]
        assert alive == []

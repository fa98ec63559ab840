"""The hostile-input suite (issue 12): what an attacker tried against the server on loopback.

Real servers (uvicorn on 127.0.0.1), real SQLite files, real FFmpeg for the file cases. Each
scenario counts its attempts; the counts are what the issue's closing note reports. The other
half of the suite (memory bounds, failed-auth floods, slow sockets) is ``test_hostile_load.py``.
"""

from __future__ import annotations

import base64
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import anyio
import httpx
import pytest
import uvicorn.config
from http_support import ALPHA, BETA, KEYS, OPERATOR, Live, live_api
from pg_support import DSN, needs_postgres
from test_http_api import CORPUS, PLAN, assert_problem, parse_prometheus
from test_net import REFUSED

from adapters.ffmpeg import FFmpegVideoProvider, make_tone
from adapters.http import HttpNotifier
from adapters.memory import FakeVideoProvider, RecordingNotifier
from contrib.asgi import create_app
from contrib.serve import RunningServer, serve_app
from engine import Engine, PlanError, ProviderError
from engine.models import JobRequest, Video

pytestmark = pytest.mark.anyio

SMALL = 180
CLIP = {"id": "clip", "type": "generate", "params": {"prompt": "tenant A", "duration": 0.4}}
ENDED = ("completed", "failed", "cancelled")


def dub(audio_url: str) -> dict[str, Any]:
    """A plan: a short clip, then its sound replaced by ``audio_url``."""
    step = {
        "id": "dub",
        "type": "lipSync",
        "dependsOn": ["clip"],
        "params": {"audioUrl": audio_url},
    }
    return {"jobs": [CLIP, step]}


async def submitted(client: httpx.AsyncClient, body: Any, headers: Mapping[str, str]) -> str:
    response = await client.post("/api/execute", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return cast(str, response.json()["executionId"])


async def ended(
    client: httpx.AsyncClient, execution_id: str, headers: Mapping[str, str]
) -> dict[str, Any]:
    """``GET /api/execute/{id}`` once the execution has ended."""
    with anyio.fail_after(60):
        while True:
            response = await client.get(f"/api/execute/{execution_id}", headers=headers)
            assert response.status_code == 200, response.text
            body = cast(dict[str, Any], response.json())
            if body["status"] in ENDED:
                return body
            await anyio.sleep(0.05)


@asynccontextmanager
async def ffmpeg_api(
    root: Path, *, input_dirs: Sequence[Path] = (), temp_dir: Path | None = None
) -> AsyncIterator[tuple[Live, httpx.AsyncClient, FFmpegVideoProvider]]:
    """The API over an engine whose provider is FFmpeg (reading ``input_dirs``), the app allowing
    the same directories for ``file://`` URLs."""
    await anyio.Path(root).mkdir(parents=True, exist_ok=True)
    provider = FFmpegVideoProvider(
        output_dir=root / "out",
        temp_dir=temp_dir or root / "tmp",
        input_dirs=list(input_dirs),
        short_side=SMALL,
    )
    engine = Engine.sqlite(str(root / "e.db"), provider=provider, notifier=RecordingNotifier())
    async with (
        live_api(None, engine=engine, input_dirs=list(input_dirs), rate_limit=None) as live,
        httpx.AsyncClient(base_url=live.url, timeout=30) as client,
    ):
        yield live, client, provider


def errors_of(body: dict[str, Any]) -> str:
    """The error texts of an execution (its params echo what the tenant sent, paths included)."""
    return str([body.get("error"), *(job.get("error") for job in body["jobs"])])


def no_server_path(text: str, root: Path) -> None:
    for path in {str(root), str(root.resolve()), tempfile.gettempdir()}:
        assert path not in text, f"{path} shown in {text[:400]}"


# --- 1. files belong to tenants ------------------------------------------------------------------


async def test_tenant_b_cannot_read_tenant_a_output_by_naming_it(tmp_path: Path) -> None:
    """The trial's attack: B names A's output file as its ``audioUrl``."""
    voices = tmp_path / "voices"
    voices.mkdir()
    attempts = 0
    async with ffmpeg_api(tmp_path / "default") as (live, client, provider):
        a_id = await submitted(client, {"jobs": [CLIP]}, ALPHA)
        a = await ended(client, a_id, ALPHA)
        assert a["status"] == "completed", a
        # Results show signed http links, not the server's file:// paths.
        assert a["result"]["url"].startswith(f"{live.url}/results/")
        no_server_path(str(a), tmp_path)
        a_file = provider.output_path(f"{a_id}/clip")
        assert a_file.is_file()
        attempts += await forged_links(
            client, a, b_id=await submitted(client, {"jobs": [CLIP]}, BETA)
        )
        for spelling in (a_file.as_uri(), f"file:{a_file}", f"FILE://localhost{a_file}"):
            attempts += 1
            response = await client.post("/api/execute", json=dub(spelling), headers=BETA)
            problem = assert_problem(response, 422, "invalid-plan")
            assert "file:// URLs are not accepted over HTTP" in problem["detail"]
            assert problem["errors"][0] == {
                "jobId": "dub",
                "field": "params.audioUrl",
                "message": problem["errors"][0]["message"],
            }
    # A server for one trusted tenant that allows local directories, even one that holds the
    # output directory: the output directory is still not readable by name.
    root = tmp_path / "allowing"
    await anyio.Path(root / "voices").mkdir(parents=True)
    tone = await make_tone(root / "voices" / "tone.wav", 0.3)
    async with ffmpeg_api(root, input_dirs=[root]) as (live, client, provider):
        a_id = await submitted(client, {"jobs": [CLIP]}, ALPHA)
        assert (await ended(client, a_id, ALPHA))["status"] == "completed"
        a_file = provider.output_path(f"{a_id}/clip")
        for spelling in (a_file.as_uri(), f"file://{root}/voices/../out/{a_id}/clip.mp4"):
            attempts += 1
            b_id = await submitted(client, dub(spelling), BETA)
            b = await ended(client, b_id, BETA)
            assert b["status"] == "failed", b
            assert b["error"]["jobId"] == "dub"
            message = b["error"]["message"]
            assert message.startswith("audioUrl: the file:// URL is outside the directories")
            assert "dependsOn" in message
            no_server_path(errors_of(b), root)
        # What the provider may read by name still works, and so does an input by dependsOn.
        attempts += 1
        ok = await ended(client, await submitted(client, dub(tone.as_uri()), BETA), BETA)
        assert ok["status"] == "completed", ok
    assert attempts == 12


async def forged_links(client: httpx.AsyncClient, a: dict[str, Any], b_id: str) -> int:
    """A's signed result link fetches with no key; swapping its execution id, path, expiry or
    signature for tenant B's is 403 (or 404), B's key or not. Returns the attempts made."""
    url = a["result"]["url"]
    fetched = await client.get(url, headers={"Range": "bytes=0-9"})
    assert fetched.status_code == 206, fetched.text
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    forged = [
        f"{parts.path}?{urlencode({**query, 'execution': b_id})}",
        f"{parts.path}?{urlencode({**query, 'expires': int(query['expires']) + 3600})}",
        f"{parts.path.replace(a['id'], b_id)}?{parts.query}",
        f"{parts.path.replace(a['id'], b_id)}?{urlencode({**query, 'execution': b_id})}",
        f"{parts.path}?{urlencode({**query, 'sig': 'A' * 43})}",
        f"/results/{b_id}/../{a['id']}/clip.mp4?{urlencode({**query, 'execution': b_id})}",
    ]
    for target in forged:
        for headers in ({}, BETA):
            response = await client.get(target, headers=headers)
            assert response.status_code in (403, 404), (target, response.status_code)
    return len(forged)


def file_spellings(allowed: Path, outside: Path, output: Path) -> list[str]:
    """Ways to name a file outside the allowed directory (or one under the output directory)."""
    secret = outside / "secret.wav"
    escape = f"{allowed}/../{outside.name}/secret.wav"
    return [
        secret.as_uri(),
        f"file:{secret}",
        f"file:/{secret}",
        f"FILE://{secret}",
        f"File://{secret}",
        f"file://localhost{secret}",
        f"file://LOCALHOST{secret}",
        f"file://{quote(str(secret), safe='')}",
        f"file://{quote(str(secret))}".replace("secret", "%73ecret"),
        f"file://{escape}",
        f"file://{allowed}/%2e%2e/{outside.name}/secret.wav",
        f"file://{allowed}/%2E%2E/%2E%2E/{allowed.parent.name}/{outside.name}/secret.wav",
        f"file://{allowed}/./../{outside.name}/./secret.wav",
        f"file://{allowed}/link.wav",  # a symlink in the allowed dir to the file outside
        f"file://{allowed}/linked/secret.wav",  # a directory symlink to outside
        f"file://{allowed}/../out/exec_x/clip.mp4",
        f"file://{output}/exec_x/clip.mp4",
        f"file://{allowed}/out-link/exec_x/clip.mp4",  # a symlink to the output dir
        f"file://127.0.0.1{secret}",
        f"file://evil.example{secret}",
        f"file:{quote(str(secret))}%00.wav",
        "file:///etc/passwd",
        "file:///proc/self/environ",
        "file:////etc/passwd",
        "file://localhost/etc/passwd",
        f"file://{allowed}/../../../../../../etc/passwd",
    ]


@pytest.fixture
async def layout(tmp_path: Path) -> tuple[Path, Path, Path]:
    """``root/allowed`` (with hostile symlinks), ``root/outside/secret.wav``, ``root/out``."""
    allowed, outside, output = tmp_path / "allowed", tmp_path / "outside", tmp_path / "out"
    for directory in (allowed, outside, output / "exec_x"):
        directory.mkdir(parents=True)
    await make_tone(outside / "secret.wav", 0.3)
    await make_tone(output / "exec_x" / "clip.mp4", 0.3)
    (allowed / "link.wav").symlink_to(outside / "secret.wav")
    (allowed / "linked").symlink_to(outside, target_is_directory=True)
    (allowed / "out-link").symlink_to(output, target_is_directory=True)
    await make_tone(allowed / "fine.wav", 0.3)
    return allowed, outside, output


async def test_file_spellings_are_refused_over_http(
    tmp_path: Path, layout: tuple[Path, Path, Path]
) -> None:
    allowed, outside, output = layout
    spellings = file_spellings(allowed, outside, output)
    async with ffmpeg_api(tmp_path, input_dirs=()) as (_, client, _provider):
        for spelling in spellings:
            response = await client.post("/api/execute", json=dub(spelling), headers=ALPHA)
            problem = assert_problem(response, 422, "invalid-plan")
            assert "params.audioUrl" in problem["detail"], spelling
    async with ffmpeg_api(tmp_path, input_dirs=[allowed]) as (_, client, _provider):
        refused_here = 0
        for spelling in spellings:
            response = await client.post("/api/execute", json=dub(spelling), headers=ALPHA)
            if response.status_code == 422:
                refused_here += 1
                continue
            # Accepted by the app's check (it names a path under the allowed dir); the
            # provider, which resolves symlinks where it reads, refuses it.
            assert response.status_code == 202, (spelling, response.text)
            body = await ended(client, response.json()["executionId"], ALPHA)
            assert body["status"] == "failed", (spelling, body)
            assert body["error"]["message"].startswith("audioUrl:"), body
            no_server_path(errors_of(body), tmp_path)
        assert refused_here >= len(spellings) // 2
        fine = await ended(
            client, await submitted(client, dub((allowed / "fine.wav").as_uri()), ALPHA), ALPHA
        )
        assert fine["status"] == "completed", fine
    assert len(spellings) == 26


async def test_file_spellings_are_refused_by_the_provider_itself(
    tmp_path: Path, layout: tuple[Path, Path, Path]
) -> None:
    """Behind the HTTP check (an embedded engine runs none): the provider reads named files only
    under its input dirs (symlinks resolved), and never its output or scratch directories, even
    when an input dir holds them."""
    allowed, outside, output = layout
    scratch = tmp_path / "scratch"
    (scratch / "ffmpeg-job-other").mkdir(parents=True)
    other_scratch = await make_tone(scratch / "ffmpeg-job-other" / "audio.wav", 0.3)

    def provider(input_dirs: list[Path]) -> FFmpegVideoProvider:
        return FFmpegVideoProvider(
            output_dir=output, temp_dir=scratch, input_dirs=input_dirs, short_side=SMALL
        )

    strict, lax = provider([allowed]), provider([tmp_path])
    generate = JobRequest("e", "clip", "generate", {"prompt": "b", "duration": 0.4}, (), 1, "e/c")
    clip = await strict.run(generate)

    async def outcome(of: FFmpegVideoProvider, url: str) -> str:
        request = JobRequest("e", "dub", "lipSync", {"audioUrl": url}, (clip,), 1, "e/dub")
        try:
            await of.run(request)
        except ProviderError as exc:
            assert exc.message.startswith("audioUrl:"), exc.message  # noqa: PT017
            assert exc.retryable is False  # noqa: PT017
            no_server_path(exc.message, tmp_path)
            return exc.message
        return "READ"

    spellings = file_spellings(allowed, outside, output)
    for spelling in spellings:
        assert await outcome(strict, spelling) != "READ", spelling
    # An input dir that holds the output and scratch directories still reads neither by name.
    by_name = [
        other_scratch.as_uri(),
        (output / "exec_x" / "clip.mp4").as_uri(),
        f"file://{tmp_path}/allowed/../out/exec_x/clip.mp4",
        f"file://{allowed}/out-link/exec_x/clip.mp4",
        clip.url,  # the provider's own output, named
    ]
    for spelling in by_name:
        message = await outcome(lax, spelling)
        assert "outside the directories" in message, (spelling, message)
    # What the input dir holds is read, and an output as an input (dependsOn) still works.
    assert await outcome(lax, (allowed / "fine.wav").as_uri()) == "READ"
    assert await outcome(strict, (allowed / "fine.wav").as_uri()) == "READ"
    assert len(spellings) + len(by_name) == 31


async def test_provider_errors_show_no_server_paths(tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    (media / "not-audio.wav").write_bytes(b"this is not media")
    provider = FFmpegVideoProvider(
        output_dir=tmp_path / "out", temp_dir=tmp_path / "tmp", input_dirs=[media], short_side=SMALL
    )
    clip = await provider.run(
        JobRequest("e", "clip", "generate", {"prompt": "x", "duration": 0.4}, (), 1, "e/clip")
    )
    ghost = Video(
        url=(tmp_path / "out" / "e" / "ghost.mp4").as_uri(), duration=1, aspect_ratio="16:9"
    )
    cases = [
        ("lipSync", {"audioUrl": (media / "not-audio.wav").as_uri()}, (clip,)),
        ("lipSync", {"audioUrl": (media / "missing.wav").as_uri()}, (clip,)),
        ("reframe", {"aspectRatio": "9:16"}, (ghost,)),
        ("addSubtitles", {"language": "fr", "srtUrl": (media / "not-audio.wav").as_uri()}, (clip,)),
    ]
    for kind, params, inputs in cases:
        with pytest.raises(ProviderError) as caught:
            await provider.run(JobRequest("e", "j", kind, params, inputs, 1, "e/j"))
        no_server_path(caught.value.message, tmp_path)
        no_server_path(str(caught.value), tmp_path)


# --- 2. tenant swaps on every route --------------------------------------------------------------


async def test_tenant_swaps_on_every_route_are_404(tmp_path: Path) -> None:
    attempts = 0
    hook = {
        "url": "https://example.com/hook",
        "secret": "whsec_" + base64.b64encode(b"k" * 32).decode(),
    }
    async with (
        live_api(tmp_path / "e.db", rate_limit=None) as live,
        httpx.AsyncClient(base_url=live.url) as client,
    ):
        a_id = await submitted(client, {**PLAN, "webhook": hook}, ALPHA)
        a = await ended(client, a_id, ALPHA)
        assert a["status"] == "completed"
        routes = [
            ("GET", f"/api/execute/{a_id}"),
            ("GET", f"/api/execute/{a_id}/status"),
            ("POST", f"/api/execute/{a_id}/cancel"),
            ("POST", f"/api/execute/{a_id}/resume"),
            ("POST", f"/api/execute/{a_id}/redeliver"),
        ]
        for method, path in routes:
            attempts += 1
            assert_problem(await client.request(method, path, headers=BETA), 404, "not-found")
        # The deliveries are shown only in A's own view.
        attempts += 1
        assert (
            "deliveries"
            in (await client.get(f"/api/execute/{a_id}", headers=ALPHA)).json()["webhook"]
        )
        # A base execution of another tenant is no base.
        attempts += 1
        response = await client.post(
            "/api/execute", json={**PLAN, "baseExecutionId": a_id}, headers=BETA
        )
        assert_problem(response, 404, "not-found")
        continued = {
            "baseExecutionId": a_id,
            "jobs": [{"id": "r", "type": "reframe", "params": {"aspectRatio": "9:16"}}],
        }
        attempts += 1
        assert_problem(await client.post("/api/execute", json=continued, headers=BETA), 404)
        # The same idempotency key is another tenant's own scope.
        attempts += 1
        key = {"Idempotency-Key": "shared-key"}
        first = await client.post("/api/execute", json=PLAN, headers={**ALPHA, **key})
        second = await client.post("/api/execute", json=PLAN, headers={**BETA, **key})
        assert first.json()["executionId"] != second.json()["executionId"]
        # /metrics: B sees only its own numbers, none of A's.
        attempts += 1
        text = (await client.get("/metrics", headers=BETA)).text
        assert "alpha" not in text
        b_samples = parse_prometheus(text)
        assert dict(b_samples["videoflow_executions"])['{tenant="beta",status="completed"}'] <= 1
        assert 'tenant="beta"' not in (await client.get("/metrics", headers=OPERATOR)).text
    assert attempts == 10


# --- 3. webhook SSRF spellings over HTTP ---------------------------------------------------------


SSRF_HOSTS = [f"[{a}]" if ":" in a else a for a in REFUSED] + [
    "2130706433",
    "0x7f.0.0.1",
    "0177.0.0.1",
    "127.1",
    "0",
    "localhost",
    "127.0.0.1.",
]


async def test_webhook_ssrf_spellings_are_never_reached(tmp_path: Path) -> None:
    notifier = HttpNotifier(retry_schedule=(0,), timeout=5)
    engine = Engine.sqlite(str(tmp_path / "e.db"), FakeVideoProvider(), notifier)
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    async with (
        live_api(None, engine=engine, rate_limit=None) as live,
        httpx.AsyncClient(base_url=live.url) as client,
    ):
        ids = []
        for host in SSRF_HOSTS:
            hook = {"url": f"http://{host}:9/hook", "secret": secret}
            ids.append(await submitted(client, {**PLAN, "webhook": hook}, ALPHA))
        for execution_id in ids:
            with anyio.fail_after(30):
                while True:
                    body = await ended(client, execution_id, ALPHA)
                    deliveries = body["webhook"].get("deliveries") or []
                    if deliveries and deliveries[-1]["outcome"] == "failed":
                        break
                    await anyio.sleep(0.05)
            for attempt in deliveries:
                assert attempt["statusCode"] is None
                # Refused at the guard, or not even a valid URL to it (``0177.0.0.1``).
                assert "refused" in attempt["error"] or "not valid" in attempt["error"], attempt
                assert secret not in str(body)
    assert len(SSRF_HOSTS) == 39


# --- 4. malformed bodies, short webhook secrets --------------------------------------------------


async def test_malformed_bodies_are_4xx_problems(tmp_path: Path) -> None:
    async with (
        live_api(tmp_path / "e.db", rate_limit=None) as live,
        httpx.AsyncClient(base_url=live.url) as client,
    ):
        for name, body, headers, status, kind in CORPUS:
            response = await client.post("/api/execute", content=body, headers={**ALPHA, **headers})
            assert_problem(response, status, kind)
            assert name
        assert live.app.responses.keys() <= {400, 404, 413, 415, 422}, live.app.responses
    assert len(CORPUS) >= 40


SHORT_SECRETS = [
    "s",
    "secret123",
    "s3cret",
    "x" * 15,
    "é" * 7,
    "whsec_",
    "whsec_c2hvcnQ=",
    "whsec_" + "A" * 30,
    "whsec_%%%",
]


async def test_short_webhook_secrets_are_refused_with_how_to_make_one(tmp_path: Path) -> None:
    async with (
        live_api(None, rate_limit=None) as live,
        httpx.AsyncClient(base_url=live.url) as client,
    ):
        for secret in SHORT_SECRETS:
            body = {**PLAN, "webhook": {"url": "https://example.com/h", "secret": secret}}
            problem = assert_problem(
                await client.post("/api/execute", json=body, headers=ALPHA), 422, "invalid-plan"
            )
            [error] = problem["errors"]
            assert error["field"] == "webhook.secret"
            assert (
                'make one with "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()'
                in error["message"]
            )
            if len(secret) > 3 and secret != "whsec_":
                assert secret not in problem["detail"]
            with pytest.raises(PlanError, match=r"webhook\.secret"):
                await live.engine.submit(PLAN, webhook=body["webhook"])
        good = ["x" * 16, "whsec_" + base64.b64encode(b"k" * 24).decode()]
        for secret in good:
            await submitted(
                client,
                {**PLAN, "webhook": {"url": "https://example.com/h", "secret": secret}},
                ALPHA,
            )
    assert len(SHORT_SECRETS) == 9


# --- 5. the access log ---------------------------------------------------------------------------


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def test_the_access_log_holds_no_query_string_or_key(tmp_path: Path) -> None:
    engine = Engine.in_memory(notifier=RecordingNotifier())
    lines = _Lines()
    access = logging.getLogger("uvicorn.access")
    async with engine, anyio.create_task_group() as tg:
        app = create_app(engine, api_keys=KEYS)
        server: RunningServer = await tg.start(
            partial(
                serve_app,
                app,
                port=0,
                log_level="info",
                log_config=uvicorn.config.LOGGING_CONFIG,
                access_log=True,
                timeout_graceful_shutdown=1,
            )
        )
        access.addHandler(lines)
        try:
            async with httpx.AsyncClient(base_url=server.url) as client:
                await client.get("/healthz?api_key=key-alpha&token=t0psecret")
                await client.get("/metrics?api_key=key-beta", headers=ALPHA)
                await client.get("/results/x.mp4?execution=e&expires=1&sig=SIGNATURE")
        finally:
            access.removeHandler(lines)
            server.stop()
    text = "\n".join(lines.lines)
    assert "GET /healthz HTTP/1.1" in text and "GET /metrics HTTP/1.1" in text, text
    for secret in ("api_key", "key-alpha", "key-beta", "t0psecret", "SIGNATURE", "?"):
        assert secret not in text, text
    assert len(lines.lines) == 3


@needs_postgres
async def test_tenant_scoped_metrics_on_postgres(schema: str) -> None:
    engine = Engine.postgres(
        DSN, FakeVideoProvider(), RecordingNotifier(), schema=schema, concurrency=2
    )
    async with (
        live_api(None, engine=engine, rate_limit=None) as live,
        httpx.AsyncClient(base_url=live.url) as client,
    ):
        for headers in (ALPHA, ALPHA, BETA):
            await ended(client, await submitted(client, PLAN, headers), headers)
        alpha = parse_prometheus((await client.get("/metrics", headers=ALPHA)).text)
        fleet = parse_prometheus((await client.get("/metrics", headers=OPERATOR)).text)
        done = 'status="completed"'
        assert dict(alpha["videoflow_executions"])[f'{{tenant="alpha",{done}}}'] == 2
        assert dict(fleet["videoflow_executions"])[f"{{{done}}}"] == 3
        assert "beta" not in (await client.get("/metrics", headers=ALPHA)).text

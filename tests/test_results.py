"""Results a client can fetch: signed expiring links served by the API, byte ranges, webhooks
with the same links, S3 uploads with presigned URLs (against moto's S3 server), and the
provider options of ``contrib.serve``/``contrib.worker`` (``http``, the ``fake`` warning).

A real engine with the real FFmpeg provider (1 s clips, 320x180) behind a real uvicorn server.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
from http_support import ALPHA, BETA, Live, live_api, loopback_notifier, webhook_receiver

from adapters.ffmpeg import FFmpegVideoProvider, probe
from adapters.http import HttpVideoProvider
from adapters.memory import FakeVideoProvider, RecordingNotifier
from contrib.files import Unsatisfiable, parse_range
from contrib.providers import FAKE_WARNING, load_provider
from contrib.result_options import require_webhook_links, result_setup
from contrib.results import ResultLinkNotifier, ResultLinks
from engine import ConfigError, Engine, ManualClock

pytestmark = pytest.mark.anyio

PLAN: dict[str, Any] = {
    "jobs": [
        {
            "id": "clip",
            "type": "generate",
            "params": {"prompt": "a short test", "duration": 1, "aspectRatio": "16:9"},
        },
        {
            "id": "tall",
            "type": "reframe",
            "params": {"aspectRatio": "9:16"},
            "dependsOn": ["clip"],
            "output": "$tall",
        },
    ]
}
SECRET = "a-result-secret-of-enough-bytes"


def ffmpeg_provider(root: Path) -> FFmpegVideoProvider:
    return FFmpegVideoProvider(root / "out", short_side=180, temp_dir=root / "tmp")


async def submit(client: httpx.AsyncClient, body: Any = PLAN) -> str:
    response = await client.post("/api/execute", json=body, headers=ALPHA)
    assert response.status_code == 202, response.text
    execution_id: str = response.json()["executionId"]
    return execution_id


async def completed(client: httpx.AsyncClient, execution_id: str) -> dict[str, Any]:
    with anyio.fail_after(60):
        while True:
            response = await client.get(f"/api/execute/{execution_id}/status", headers=ALPHA)
            body: dict[str, Any] = response.json()
            if body["status"] == "completed":
                return body
            assert body["status"] not in ("failed", "cancelled"), body
            await anyio.sleep(0.05)


@asynccontextmanager
async def served(
    tmp_path: Path, links: ResultLinks | None = None, notifier: Any = None
) -> AsyncIterator[tuple[Live, httpx.AsyncClient, ResultLinks]]:
    provider = ffmpeg_provider(tmp_path)
    links = links or ResultLinks(root=provider.output_dir, secret=SECRET)
    engine = Engine.in_memory(provider=provider, notifier=notifier or RecordingNotifier())
    async with (
        live_api(None, engine=engine, results=links) as live,
        httpx.AsyncClient(base_url=live.url, timeout=30) as client,
    ):
        links.server_url = live.url  # what contrib.serve sets: webhooks only
        yield live, client, links


def with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return parts._replace(path=path).geturl()


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return parts._replace(query="&".join(f"{k}={v}" for k, v in query.items())).geturl()


def assert_problem(response: httpx.Response, status: int, kind: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == f"urn:videoflow:problem:{kind}"


# --- the served links ----------------------------------------------------------------------------


async def test_a_result_is_a_signed_link_that_downloads_a_playable_mp4_in_ranges(
    tmp_path: Path,
) -> None:
    async with served(tmp_path) as (live, client, _):
        execution_id = await submit(client)
        status = await completed(client, execution_id)
        url = status["result"]["url"]
        assert url.startswith(f"{live.url}/results/{execution_id}/"), url
        assert "file:" not in json.dumps(status) and str(tmp_path) not in json.dumps(status)

        async with httpx.AsyncClient(timeout=30) as anonymous:  # no API key
            whole = await anonymous.get(url)
            assert whole.status_code == 200, whole.text
            assert whole.headers["content-type"] == "video/mp4"
            assert whole.headers["accept-ranges"] == "bytes"
            assert int(whole.headers["content-length"]) == len(whole.content) > 1000
            downloaded = tmp_path / "downloaded.mp4"
            downloaded.write_bytes(whole.content)
            info = await probe(downloaded)
            assert info.has_video and (info.width, info.height) == (180, 320)
            assert info.duration == pytest.approx(1.0, abs=0.05)
            size = len(whole.content)

            first = await anonymous.get(url, headers={"Range": "bytes=0-99"})
            assert first.status_code == 206
            assert first.content == whole.content[:100]
            assert first.headers["content-range"] == f"bytes 0-99/{size}"
            assert first.headers["content-length"] == "100"

            tail = await anonymous.get(url, headers={"Range": "bytes=-50"})
            assert tail.status_code == 206 and tail.content == whole.content[-50:]
            assert tail.headers["content-range"] == f"bytes {size - 50}-{size - 1}/{size}"

            rest = await anonymous.get(url, headers={"Range": f"bytes={size - 10}-"})
            assert rest.status_code == 206 and rest.content == whole.content[-10:]

            past = await anonymous.get(url, headers={"Range": f"bytes={size}-"})
            assert_problem(past, 416, "range-not-satisfiable")
            assert past.headers["content-range"] == f"bytes */{size}"

            stale = await anonymous.get(
                url, headers={"Range": "bytes=0-9", "If-Range": '"not-the-etag"'}
            )
            assert stale.status_code == 200 and stale.content == whole.content
            fresh = await anonymous.get(
                url, headers={"Range": "bytes=0-9", "If-Range": whole.headers["etag"]}
            )
            assert fresh.status_code == 206 and fresh.content == whole.content[:10]

            head = await anonymous.head(url)
            assert head.status_code == 200 and head.content == b""
            assert head.headers["content-length"] == str(size)
            assert_problem(await anonymous.post(url), 405, "method-not-allowed")


async def test_altered_foreign_and_expired_links_are_refused(tmp_path: Path) -> None:
    clock = ManualClock(now=time.time())
    provider_root = tmp_path / "out"
    links = ResultLinks(root=provider_root, secret=SECRET, ttl=60, clock=clock)
    async with served(tmp_path, links) as (_, client, _links):
        first = await submit(client)
        second = await submit(client)
        url = (await completed(client, first))["result"]["url"]
        other = (await completed(client, second))["result"]["url"]
        sig = parse_qs(urlsplit(url).query)["sig"][0]
        async with httpx.AsyncClient(timeout=30) as anonymous:
            assert (await anonymous.get(url)).status_code == 200
            tampered = sig[:-2] + ("AA" if not sig.endswith("AA") else "BB")
            assert_problem(await anonymous.get(with_query(url, sig=tampered)), 403, "link-refused")
            # The other execution's file, with this link's (valid) signature and expiry.
            foreign = with_path(url, urlsplit(other).path)
            assert_problem(await anonymous.get(foreign), 403, "link-refused")
            assert_problem(
                await anonymous.get(with_query(url, execution=second)), 403, "link-refused"
            )
            later = str(int(parse_qs(urlsplit(url).query)["expires"][0]) + 3600)
            assert_problem(await anonymous.get(with_query(url, expires=later)), 403, "link-refused")
            assert_problem(await anonymous.get(url.split("?")[0]), 403, "link-refused")
            # A path outside the directory, even signed by the server, is never served.
            escape = links.link(
                first, "../../etc/passwd", base_url=client.base_url.__str__(), ttl=60
            )
            assert_problem(await anonymous.get(escape), 404, "not-found")

            clock.advance(61)
            assert_problem(await anonymous.get(url), 410, "link-expired")
            fresh = (await completed(client, first))["result"]["url"]
            assert fresh != url
            assert (await anonymous.get(fresh, headers={"Range": "bytes=0-0"})).status_code == 206


async def test_a_server_with_another_secret_refuses_the_links(tmp_path: Path) -> None:
    async with served(tmp_path) as (live, client, links):
        execution_id = await submit(client)
        url = (await completed(client, execution_id))["result"]["url"]
        live.app.results = ResultLinks(root=links.root, secret="another-secret-of-16-bytes")
        async with httpx.AsyncClient(timeout=30) as anonymous:
            assert_problem(await anonymous.get(url), 403, "link-refused")


async def test_the_execution_view_and_its_jobs_show_links(tmp_path: Path) -> None:
    async with served(tmp_path) as (live, client, _):
        execution_id = await submit(client)
        await completed(client, execution_id)
        view = (await client.get(f"/api/execute/{execution_id}", headers=ALPHA)).json()
        assert "file:" not in json.dumps(view)
        urls = [view["result"]["url"], *(job["result"]["url"] for job in view["jobs"])]
        assert len(urls) == 3
        async with httpx.AsyncClient(timeout=30) as anonymous:
            for url in urls:
                assert url.startswith(f"{live.url}/results/{execution_id}/")
                assert (await anonymous.head(url)).headers["content-type"] == "video/mp4"
        # Another tenant still cannot see the execution, so it gets no link either.
        hidden = await client.get(f"/api/execute/{execution_id}", headers=BETA)
        assert hidden.status_code == 404


async def test_webhooks_carry_the_same_fetchable_links(tmp_path: Path) -> None:
    provider = ffmpeg_provider(tmp_path)
    links = ResultLinks(root=provider.output_dir, secret=SECRET)
    async with webhook_receiver() as receiver:
        notifier = ResultLinkNotifier(loopback_notifier(), links)
        async with served(tmp_path, links, notifier) as (live, client, _):
            body = {
                **PLAN,
                "webhook": {
                    "url": receiver.url,
                    "secret": "whsec_c2VjcmV0LWJ5dGVzLW9mLWF0LWxlYXN0LTI0",
                },
            }
            execution_id = await submit(client, body)
            (arrived,) = await receiver.wait_for(1)
            payload = json.loads(arrived.body)
            assert payload["executionId"] == execution_id
            url = payload["video"]["url"]
            assert url.startswith(f"{live.url}/results/{execution_id}/")
            expires = int(parse_qs(urlsplit(url).query)["expires"][0])
            assert expires - time.time() > 6 * 24 * 3600  # webhook links last a week
            async with httpx.AsyncClient(timeout=30) as anonymous:
                response = await anonymous.get(url, headers={"Range": "bytes=0-99"})
                assert response.status_code == 206 and len(response.content) == 100
            from engine.webhooks import verify_webhook

            verify_webhook(
                arrived.body, arrived.headers, "whsec_c2VjcmV0LWJ5dGVzLW9mLWF0LWxlYXN0LTI0"
            )


# --- what is shown for each kind of stored URL ---------------------------------------------------


async def test_only_servable_urls_are_shown(tmp_path: Path) -> None:
    root = tmp_path / "out"
    (root / "exec_a").mkdir(parents=True)
    (root / "exec_a" / "clip.mp4").write_bytes(b"x")
    links = ResultLinks(root=root, secret=SECRET, public_url="https://api.example.com/v")
    inside = (root / "exec_a" / "clip.mp4").as_uri()

    async def shown(url: str) -> str | None:
        return await links.fetchable(url, "exec_a", base_url=None, ttl=60)

    link = await shown(inside)
    assert link is not None
    assert link.startswith("https://api.example.com/v/results/exec_a/clip.mp4?execution=exec_a&")
    assert await shown("https://cdn.example.com/a.mp4") == "https://cdn.example.com/a.mp4"
    assert await shown("fake://exec_a/clip") == "fake://exec_a/clip"
    assert await shown((tmp_path / "elsewhere.mp4").as_uri()) is None
    assert await shown("file://otherhost/out/exec_a/clip.mp4") is None
    assert await shown("s3://bucket/key.mp4") is None
    assert (
        await ResultLinks(secret=SECRET).fetchable(inside, "e", base_url="http://h", ttl=5) is None
    )


def test_result_links_check_their_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="16 bytes"):
        ResultLinks(secret="short")
    with pytest.raises(ConfigError, match="ttl"):
        ResultLinks(ttl=0)
    with pytest.raises(ConfigError, match="public URL"):
        ResultLinks(public_url="ftp://x")
    assert ResultLinks().ephemeral and not ResultLinks(secret=SECRET).ephemeral
    # Defaults follow the provider: the FFmpeg provider's directory is served.
    assert ResultLinks.for_provider(ffmpeg_provider(tmp_path)).root == (tmp_path / "out").resolve()
    assert ResultLinks.for_provider(FakeVideoProvider()).root is None


def test_a_worker_that_writes_files_needs_the_api_address_and_secret(tmp_path: Path) -> None:
    provider = ffmpeg_provider(tmp_path)
    _, links = result_setup(provider, output_dir=None, environ={})
    with pytest.raises(ConfigError, match="--public-url"):
        require_webhook_links(links)
    _, links = result_setup(
        provider,
        output_dir=None,
        environ={
            "VIDEOFLOW_PUBLIC_URL": "https://api.example.com",
            "VIDEOFLOW_RESULT_SECRET": SECRET,
        },
    )
    require_webhook_links(links)
    assert links.public_url == "https://api.example.com"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-99", (0, 99)),
        ("bytes=10-", (10, 999)),
        ("bytes=-100", (900, 999)),
        ("bytes=-5000", (0, 999)),
        ("bytes=990-5000", (990, 999)),
        ("BYTES=0-0", (0, 0)),
        ("bytes=5-1", None),  # invalid: ignored
        ("bytes=0-1,5-9", None),  # several ranges: the whole file
        ("items=0-1", None),
        ("bytes=-", None),
    ],
)
def test_parse_range(header: str, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=-0", "bytes=5000-6000"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, 1000)


# --- S3 ------------------------------------------------------------------------------------------


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a free port), with throwaway credentials."""
    server_module = pytest.importorskip("moto.server")
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


async def test_results_uploaded_to_s3_are_shown_presigned(tmp_path: Path, moto_s3: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket="videos")
    provider, links = result_setup(
        ffmpeg_provider(tmp_path),
        output_dir=str(tmp_path / "out"),
        s3_bucket="videos",
        s3_endpoint_url=moto_s3,
        s3_prefix="results/",
        environ={},
    )
    assert links.s3 is not None
    engine = Engine.in_memory(provider=provider, notifier=RecordingNotifier())
    async with (
        live_api(None, engine=engine, results=links) as live,
        httpx.AsyncClient(base_url=live.url, timeout=30) as client,
    ):
        execution_id = await submit(client)
        status = await completed(client, execution_id)
        stored = await engine.status(execution_id, tenant="alpha")
        assert stored.result is not None
        assert stored.result.url == f"s3://videos/results/{execution_id}/tall.mp4"
        url = status["result"]["url"]
        assert url.startswith(f"{moto_s3}/videos/results/{execution_id}/tall.mp4?")
        assert "Signature" in url or "X-Amz-Signature" in url
        async with httpx.AsyncClient(timeout=30) as anonymous:
            video = await anonymous.get(url)
            assert video.status_code == 200
            (tmp_path / "from-s3.mp4").write_bytes(video.content)
            info = await probe(tmp_path / "from-s3.mp4")
            assert (info.width, info.height) == (180, 320)
            # Not presigned: refused by the store.
            assert (await anonymous.get(url.split("?")[0])).status_code == 403
    # The merge-side input path: an s3:// input missing here is downloaded first.
    listed = boto3.client("s3", endpoint_url=moto_s3).list_objects_v2(Bucket="videos")
    keys = sorted(item["Key"] for item in listed["Contents"])
    assert keys == [f"results/{execution_id}/clip.mp4", f"results/{execution_id}/tall.mp4"]


async def test_an_s3_input_missing_on_this_host_is_downloaded(tmp_path: Path, moto_s3: str) -> None:
    import boto3

    from contrib.s3 import S3Store, S3UploadingProvider
    from engine.models import JobRequest

    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket="videos")
    store = S3Store("videos", endpoint_url=moto_s3)
    here = S3UploadingProvider(
        ffmpeg_provider(tmp_path / "a"), store, output_dir=tmp_path / "a/out"
    )
    there_inner = ffmpeg_provider(tmp_path / "b")
    there = S3UploadingProvider(there_inner, store, output_dir=there_inner.output_dir)
    clip = await here.run(
        JobRequest("exec_x", "clip", "generate", PLAN["jobs"][0]["params"], (), 1, "exec_x/clip")
    )
    assert clip.url == "s3://videos/exec_x/clip.mp4"
    tall = await there.run(
        JobRequest("exec_x", "tall", "reframe", {"aspectRatio": "9:16"}, (clip,), 1, "exec_x/tall")
    )
    assert tall.url == "s3://videos/exec_x/tall.mp4"
    assert (there_inner.output_dir / "exec_x" / "clip.mp4").is_file()  # fetched from the bucket
    assert (tall.width, tall.height) == (180, 320)


# --- providers -----------------------------------------------------------------------------------


def test_fake_says_on_stderr_that_results_are_not_real(capsys: pytest.CaptureFixture[str]) -> None:
    assert isinstance(load_provider("fake"), FakeVideoProvider)
    assert FAKE_WARNING in capsys.readouterr().err
    assert "NOT real" in FAKE_WARNING


def test_http_provider_from_a_toml_file_and_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "provider.toml"
    config.write_text(
        'base_url = "https://queue.example.com"\n'
        "timeout = 120\n"
        "[models]\n"
        'generate = "acme/video-gen"\n'
        'merge = { path = "acme/merge/v2", queue_path = "acme/merge" }\n'
    )
    provider = load_provider(
        "http", config_file=str(config), environ={"VIDEOFLOW_HTTP_API_KEY": "k-123"}
    )
    assert isinstance(provider, HttpVideoProvider)
    assert provider.routes["generate"].path == "acme/video-gen"
    assert provider.routes["merge"].queue_path == "acme/merge"
    assert "k-123" not in repr(provider)


def test_http_provider_from_the_environment_alone() -> None:
    provider = load_provider(
        "http",
        environ={
            "VIDEOFLOW_HTTP_BASE_URL": "https://queue.example.com",
            "VIDEOFLOW_HTTP_MODELS": "generate=acme/gen,lipSync=acme/lips",
        },
    )
    assert isinstance(provider, HttpVideoProvider)
    assert sorted(provider.routes) == ["generate", "lipSync"]


@pytest.mark.parametrize(
    ("content", "environ", "message"),
    [
        (None, {}, "VIDEOFLOW_HTTP_BASE_URL"),
        ('{"base_url": "https://q.example.com"}', {}, "VIDEOFLOW_HTTP_MODELS"),
        ('{"base_url": "https://q", "models": {"generate": "a"}, "colour": 1}', {}, "colour"),
        ('{"base_url": "https://q", "models": {"generate": 3}}', {}, "models.generate"),
        ('{"base_url": "https://q", "models": {"a": "b"}, "timeout": "x"}', {}, "timeout"),
        ("[1]", {}, "an object"),
        ("{", {}, "not valid"),
        (None, {"VIDEOFLOW_HTTP_BASE_URL": "https://q", "VIDEOFLOW_HTTP_MODELS": "gen"}, "TYPE="),
    ],
)
def test_http_provider_errors_name_what_is_wrong(
    tmp_path: Path, content: str | None, environ: dict[str, str], message: str
) -> None:
    config = None
    if content is not None:
        path = tmp_path / "provider.json"
        path.write_text(content)
        config = str(path)
    with pytest.raises(ConfigError, match=message):
        load_provider("http", config_file=config, environ=environ)


# --- the command ---------------------------------------------------------------------------------


async def test_contrib_serve_with_ffmpeg_hands_out_links_that_download(tmp_path: Path) -> None:
    import os
    import signal
    import sys

    from test_http_serve import _drain, _serving_url

    command = [sys.executable, "-m", "contrib.serve", "--db", str(tmp_path / "e.db")]
    command += ["--port", "0", "--no-access-log", "--provider", "ffmpeg"]
    command += ["--output-dir", str(tmp_path / "videos"), "--result-ttl", "600"]
    env = {**os.environ, "ENGINE_API_KEYS": "key-alpha=alpha", "VIDEOFLOW_RESULT_SECRET": SECRET}
    root = Path(__file__).parents[1]
    async with await anyio.open_process(command, env=env, cwd=root) as process:
        try:
            url, lines = await _serving_url(process)
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                plan = {"jobs": [PLAN["jobs"][0] | {"output": "$clip"}]}
                status = await completed(client, await submit(client, plan))
                link = status["result"]["url"]
                assert link.startswith(f"{url}/results/exec_")
                expires = int(parse_qs(urlsplit(link).query)["expires"][0])
                assert 0 < expires - time.time() <= 601
                async with httpx.AsyncClient(timeout=30) as anonymous:
                    video = await anonymous.get(link)
                assert video.status_code == 200, video.text
            (tmp_path / "got.mp4").write_bytes(video.content)
            assert (await probe(tmp_path / "got.mp4")).duration == pytest.approx(1.0, abs=0.05)
        finally:
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(20):
                code = await process.wait()
        rest = await _drain(process)
    assert code == 0, rest
    assert "random secret" not in "\n".join(lines) + rest

"""contrib.keep: hosted models' results copied to the server before a job completes, and their
inputs handed over as fetchable links. A real "CDN" (uvicorn on loopback) serves a real MP4 made
by FFmpeg; the hosted model is a stub that answers with the CDN's URL."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import pytest
from attrs import define, field
from clocks import SteppingClock
from http_support import LOOPBACK, serving

from adapters.ffmpeg import ffmpeg_exe
from adapters.ffmpeg.fetch import file_url_path
from adapters.memory import RecordingNotifier
from contrib.keep import KeepingProvider
from contrib.results import ResultLinks
from contrib.types import Receive, Scope, Send
from engine import Engine, JobRequest, ProviderError, Video, compose, generate_video, lip_sync

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 1-second 320x180 MP4."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    subprocess.run(
        [
            ffmpeg_exe(),
            "-hide_banner",
            "-nostdin",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x180:rate=25:duration=1",
            "-pix_fmt",
            "yuv420p",
            str(path),
        ],
        check=True,
    )
    return path.read_bytes()


@define
class Cdn:
    """Serves ``body`` at any path, after answering ``failures`` requests with ``status``."""

    body: bytes
    failures: int = 0
    status: int = 503
    requests: list[str] = field(factory=list)
    url: str = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.requests.append(scope["path"])
        if self.failures > 0:
            self.failures -= 1
            await send({"type": "http.response.start", "status": self.status, "headers": []})
            await send({"type": "http.response.body", "body": b"busy"})
            return
        headers = [(b"content-type", b"video/mp4"), (b"content-length", b"%d" % len(self.body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


@pytest.fixture
async def cdn(clip: bytes) -> AsyncIterator[Cdn]:
    app = Cdn(clip)
    async with serving(app) as server:
        app.url = server.url
        yield app


@define
class HostedModel:
    """A hosted model's provider: answers with a URL on the CDN (and a duration it made up)."""

    cdn: Cdn
    calls: list[JobRequest] = field(factory=list)

    async def run(self, request: JobRequest) -> Video:
        self.calls.append(request)
        return Video(f"{self.cdn.url}/outputs/{request.job_id}.mp4", 99.0, "16:9")


def request(job: str = "job1", attempt: int = 1, inputs: tuple[Video, ...] = ()) -> JobRequest:
    return JobRequest("exec_k", job, "generate", {}, inputs, attempt, f"exec_k/{job}")


def keeping(model: HostedModel, out: Path, **options: object) -> KeepingProvider:
    options.setdefault("allowed_networks", LOOPBACK)
    options.setdefault("clock", SteppingClock())
    return KeepingProvider(model, out, **options)  # type: ignore[arg-type]


async def test_a_remote_result_is_kept_with_what_the_file_says(
    cdn: Cdn, clip: bytes, tmp_path: Path
) -> None:
    model = HostedModel(cdn)
    video = await keeping(model, tmp_path).run(request())
    path = file_url_path(video.url)
    assert (path.parent.parent.name, path.parent.name, path.name) == (
        tmp_path.name,
        "exec_k",
        "job1-1.mp4",
    )
    assert path.read_bytes() == clip
    assert abs(video.duration - 1.0) < 0.05  # measured, not the model's 99 s
    assert (video.width, video.height, video.aspect_ratio) == (320, 180, "16:9")
    assert [p.name for p in path.parent.iterdir()] == ["job1-1.mp4"]  # no .part left


async def test_a_download_that_fails_is_tried_again(cdn: Cdn, tmp_path: Path) -> None:
    cdn.failures = 2
    clock = SteppingClock()
    video = await keeping(HostedModel(cdn), tmp_path, clock=clock).run(request())
    assert file_url_path(video.url).is_file()
    assert len(cdn.requests) == 3
    assert clock.waits == [0.5, 1.0]


async def test_the_next_attempt_fetches_the_remembered_result_instead_of_paying_again(
    cdn: Cdn, tmp_path: Path
) -> None:
    cdn.failures = 3
    model = HostedModel(cdn)
    provider = keeping(model, tmp_path)
    with pytest.raises(ProviderError) as failed:
        await provider.run(request(attempt=1))
    assert failed.value.retryable
    assert "could not keep the model's result" in str(failed.value)
    video = await provider.run(request(attempt=2))
    assert file_url_path(video.url).name == "job1-2.mp4"
    assert len(model.calls) == 1  # the model ran once
    await provider.run(request(attempt=3))
    assert len(model.calls) == 2  # once kept, a later attempt runs the model again


async def test_a_missing_result_fails_the_job_without_retry(cdn: Cdn, tmp_path: Path) -> None:
    cdn.failures, cdn.status = 1, 404
    model = HostedModel(cdn)
    provider = keeping(model, tmp_path)
    with pytest.raises(ProviderError) as failed:
        await provider.run(request())
    assert not failed.value.retryable
    assert "HTTP 404" in str(failed.value)
    cdn.failures = 0
    await provider.run(request(attempt=2))
    assert len(model.calls) == 2  # not remembered: the next attempt asks the model again


async def test_a_result_that_is_not_a_video_is_refused(tmp_path: Path) -> None:
    app = Cdn(b"<html>an error page</html>")
    async with serving(app) as server:
        app.url = server.url
        with pytest.raises(ProviderError) as failed:
            await keeping(HostedModel(app), tmp_path).run(request())
    assert not failed.value.retryable
    assert "not a video" in str(failed.value)
    assert list((tmp_path / "exec_k").iterdir()) == []


async def test_results_are_fetched_through_the_ssrf_guard(cdn: Cdn, tmp_path: Path) -> None:
    with pytest.raises(ProviderError) as refused:
        await keeping(HostedModel(cdn), tmp_path, allowed_networks=()).run(request())
    assert not refused.value.retryable
    assert cdn.requests == []


async def test_local_inputs_reach_the_model_as_signed_links(cdn: Cdn, tmp_path: Path) -> None:
    (tmp_path / "exec_base").mkdir()
    (tmp_path / "exec_base" / "job3-1.mp4").write_bytes(b"...")
    local = Video((tmp_path / "exec_base" / "job3-1.mp4").as_uri(), 3.0, "16:9")
    remote = Video("https://cdn.example.com/a.mp4", 3.0, "16:9")
    links = ResultLinks(root=tmp_path, secret="s" * 32, public_url="https://videos.example.com")
    model = HostedModel(cdn)
    await keeping(model, tmp_path, links=links).run(request(inputs=(local, remote)))
    given = model.calls[0].inputs
    assert given[1] == remote
    link = urlsplit(given[0].url)
    assert (link.scheme, link.netloc, link.path) == (
        "https",
        "videos.example.com",
        "/results/exec_base/job3-1.mp4",
    )
    assert "sig=" in link.query and "expires=" in link.query

    with pytest.raises(ProviderError) as unreachable:
        await keeping(model, tmp_path).run(request(inputs=(local,)))
    assert "links=ResultLinks" in str(unreachable.value)
    assert not unreachable.value.retryable


async def test_an_engine_over_a_hosted_model_keeps_every_result(cdn: Cdn, tmp_path: Path) -> None:
    model = HostedModel(cdn)
    links = ResultLinks(root=tmp_path, secret="s" * 32, public_url="https://videos.example.com")
    provider = keeping(model, tmp_path, links=links, clock=None)
    async with Engine.in_memory(provider=provider, notifier=RecordingNotifier()) as engine:
        base = await compose(generate_video(prompt="a sunrise", duration=1)).execute(engine)
        french = await compose(lip_sync(audio_url="https://cdn.example.com/fr.mp3")).execute(
            engine, base_execution_id=base.id
        )
        with anyio.fail_after(20):
            kept = await french.wait()
            record = await engine.get(base.id)
    assert file_url_path(kept.url).is_file()
    assert record.jobs[0].result is not None
    assert file_url_path(record.jobs[0].result.url).parent.name == base.id
    # The lip-sync model was given the base's kept video as a link it can fetch.
    assert model.calls[1].inputs[0].url.startswith(f"https://videos.example.com/results/{base.id}/")


def test_serving_a_hosted_model_keeps_its_results_where_links_serve_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from contrib.result_options import UNKEPT_WARNING, result_setup

    model = HostedModel(Cdn(b""))
    provider, links = result_setup(
        model, output_dir=str(tmp_path / "videos"), keep_results=True, secret="s" * 32
    )
    assert isinstance(provider, KeepingProvider)
    assert provider.inner is model and provider.links is links
    assert links.root == provider.output_dir == (tmp_path / "videos").resolve()

    with caplog.at_level("WARNING"):
        unkept, _ = result_setup(model, output_dir=None, keep_results=True)
    assert unkept is model
    assert UNKEPT_WARNING in caplog.text

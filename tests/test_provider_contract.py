"""The video provider contract (CONTRACT.md section 3), run on every provider alike.

``BACKENDS`` names each provider under test; :func:`open_case` builds one with what a test needs
to see of it (a :class:`Case`):

- ``memory``: :class:`adapters.memory.FakeVideoProvider`;
- ``ffmpeg``: :class:`adapters.ffmpeg.FFmpegVideoProvider` with the real FFmpeg binary of the
  imageio-ffmpeg wheel: 1-second clips, 320x180 frames; durations hold to one frame (0.04 s);
- ``http``: :class:`adapters.http.HttpVideoProvider` against the queue API of ``queue_api.py``,
  served on 127.0.0.1. That API says only what a model knows of its own output (the URL; the
  length and frame size it was asked for), so the rest comes from the provider itself.

Each must: run the five wire types with the right output (``generate`` keeps duration and
aspect ratio; ``merge`` sums durations less one overlap per join with a transition; ``reframe``
changes the aspect ratio; ``lipSync`` and ``addSubtitles`` keep both) as a well-formed ``Video``;
fail an input it can never run with a non-retryable ``ProviderError``; stop promptly when its
cancel scope is cancelled, leaving nothing behind; and treat the attempts of one job, which
share its idempotency key, as the same work. What only one provider does stays in its own
file (``test_ffmpeg_provider.py``, ``test_http_provider.py``).
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
from attrs import define, field
from clocks import SteppingClock
from processes import HAS_PROC, ffmpeg_children
from queue_api import KEY, QueueApi, Remote, serve_queue_api

from adapters.ffmpeg import FFmpegVideoProvider, make_tone, probe
from adapters.ffmpeg.fetch import file_url_path
from adapters.http import HttpVideoProvider
from adapters.memory import FakeVideoProvider
from engine import JobRequest, ProviderError, Video, VideoProvider
from engine.models import frame_size

pytestmark = pytest.mark.anyio

#: Every provider the contract runs on; a new one is one more name here and in ``open_case``.
BACKENDS = ("memory", "ffmpeg", "http")

FRAME = 0.04  # one frame at the FFmpeg provider's 25 fps
SMALL = 180  # the FFmpeg provider's short side: 320x180 for 16:9
#: Seconds a cancelled call may take to stop (a safety net: it should take milliseconds).
STOP_WITHIN = 10.0
#: The longest any one call of these tests should take (a safety net too).
CALL_WITHIN = 60.0
EXECUTION = "exec_contract"
CUES = [{"start": 0.1, "end": 0.7, "text": "Bonjour"}]


# --- the providers under test -------------------------------------------------------------------


@define
class Case:
    """One provider under the contract, and what a test can see of it."""

    name: str
    provider: VideoProvider
    #: How far a duration may be from the contract's (seconds): real media holds to a frame.
    tolerance: float
    made: int = 0

    def request(
        self,
        kind: str,
        params: Mapping[str, Any],
        inputs: tuple[Video, ...] = (),
        *,
        job: str | None = None,
        attempt: int = 1,
    ) -> JobRequest:
        """A request as the engine makes it: the key is ``execution/job`` on every attempt."""
        self.made += 1
        job_id = job or f"job{self.made}"
        return JobRequest(EXECUTION, job_id, kind, params, inputs, attempt, f"{EXECUTION}/{job_id}")

    async def run(self, request: JobRequest) -> Video:
        with anyio.fail_after(CALL_WITHIN):
            return await self.provider.run(request)

    async def source(self, duration: float = 1.0, aspect: str = "16:9") -> Video:
        """An input clip this provider can read, as an earlier job would have made it."""
        self.made += 1
        width, height = frame_size(aspect)
        return Video(f"https://cdn.example.com/src{self.made}.mp4", duration, aspect, width, height)

    async def audio_url(self) -> str:
        return "https://cdn.example.com/voice.mp3"

    async def inspect(self, video: Video) -> None:
        """Check ``video`` against what it points at, where the test can see that."""

    def arm(self) -> None:
        """Get ready to see the next call begin its work (:meth:`started`)."""
        raise NotImplementedError

    async def started(self) -> None:
        """Return once the call made after :meth:`arm` is doing its work."""
        raise NotImplementedError

    def slow_request(self) -> JobRequest:
        """A request whose call outlasts any test, until it is cancelled."""
        raise NotImplementedError

    async def leftovers(self) -> list[str]:
        """What calls left behind that they should not have: unfinished work, stray files,
        live processes, remote requests still running."""
        raise NotImplementedError

    def keys_seen(self) -> list[str] | None:
        """The idempotency key each attempt carried to where the work is done, in order, or
        ``None`` where the test cannot observe it."""
        return None


@define
class FakeCase(Case):
    fake: FakeVideoProvider = field(kw_only=True)
    armed: anyio.Event = field(factory=anyio.Event, kw_only=True)

    def arm(self) -> None:
        self.armed = anyio.Event()

    async def started(self) -> None:
        await self.armed.wait()

    def slow_request(self) -> JobRequest:
        return self.request("generate", {"prompt": "slow", "duration": 1}, job="slow")

    async def leftovers(self) -> list[str]:
        return [
            f"{call.job_id} attempt {call.attempt} is recorded {call.outcome}"
            for call in self.fake.calls
            if call.finished_at is None or call.outcome == "running"
        ]

    def keys_seen(self) -> list[str]:
        return [call.idempotency_key for call in self.fake.calls]


@define
class FFmpegCase(Case):
    ffmpeg: FFmpegVideoProvider = field(kw_only=True)
    root: Path = field(kw_only=True)
    armed: anyio.Event = field(factory=anyio.Event, kw_only=True)
    audio: str | None = field(default=None, kw_only=True)

    async def source(self, duration: float = 1.0, aspect: str = "16:9") -> Video:
        self.made += 1
        params = {"prompt": f"source {self.made}", "duration": duration, "aspectRatio": aspect}
        return await self.run(self.request("generate", params, job=f"src{self.made}"))

    async def audio_url(self) -> str:
        if self.audio is None:
            self.audio = (await make_tone(self.root / "media" / "tone.wav", 1.0, 440)).as_uri()
        return self.audio

    async def inspect(self, video: Video) -> None:
        path = file_url_path(video.url)
        assert path.is_file(), f"{video.url} names no file"
        info = await probe(path)
        assert video.duration == pytest.approx(info.duration, abs=1e-6)
        assert (video.width, video.height) == (info.width, info.height)

    def arm(self) -> None:
        self.armed = anyio.Event()

    async def started(self) -> None:
        await self.armed.wait()
        if HAS_PROC:  # and FFmpeg itself runs
            while not ffmpeg_children(self.ffmpeg.exe):  # noqa: ASYNC110 (no event to wait on)
                await anyio.sleep(0.01)

    def slow_request(self) -> JobRequest:
        return self.request("generate", {"prompt": "slow", "duration": 600}, job="slow")

    async def leftovers(self) -> list[str]:
        found = [f"scratch {p}" for p in (self.root / "tmp").glob("*")]
        found += [f"partial output {p}" for p in (self.root / "out").rglob("*.part")]
        found += [f"output of a cancelled job {p}" for p in (self.root / "out").rglob("slow*")]
        if HAS_PROC:
            found += [f"FFmpeg process {pid}" for pid in ffmpeg_children(self.ffmpeg.exe)]
        return found


@define
class HttpCase(Case):
    api: QueueApi = field(kw_only=True)

    def arm(self) -> None:
        self.api.polled = anyio.Event()

    async def started(self) -> None:
        await self.api.polled.wait()

    def slow_request(self) -> JobRequest:
        request = self.request("generate", {"prompt": "slow", "duration": 1}, job="slow")
        self.api.stuck_keys.add(request.idempotency_key)
        return request

    async def leftovers(self) -> list[str]:
        return [
            f"remote request {remote.id} is {remote.state}"
            for remote in self.api.requests.values()
            if remote.state not in ("COMPLETED", "CANCELLED")
        ]

    def keys_seen(self) -> list[str]:
        return [seen.headers["idempotency-key"] for seen in self.api.seen if seen.method == "POST"]


def model_video(remote: Remote) -> dict[str, Any]:
    """What a model API knows of its output without measuring it: where it is, and the length
    and frame shape it was asked for."""
    video: dict[str, Any] = {
        "url": f"https://cdn.example.com/{remote.id}.mp4",
        "content_type": "video/mp4",
    }
    aspect = remote.input.get("aspect_ratio")
    if isinstance(aspect, str):
        video["width"], video["height"] = frame_size(aspect)
    if "duration" in remote.input:
        video["duration"] = float(remote.input["duration"])
    return video


@asynccontextmanager
async def open_case(name: str, root: Path) -> AsyncIterator[Case]:
    if name == "memory":

        async def hook(request: JobRequest) -> None:
            memory.armed.set()  # the case is made before any call
            if request.job_id == "slow":
                await anyio.sleep_forever()

        fake = FakeVideoProvider(on_call=hook)
        memory = FakeCase(name, fake, 1e-6, fake=fake)
        yield memory
    elif name == "ffmpeg":
        (root / "media").mkdir()
        ffmpeg = FFmpegVideoProvider(
            output_dir=root / "out",
            temp_dir=root / "tmp",
            input_dirs=[root / "media"],
            short_side=SMALL,
        )
        case = FFmpegCase(name, ffmpeg, FRAME, ffmpeg=ffmpeg, root=root)
        ffmpeg.on_command = lambda command: case.armed.set()
        yield case
    elif name == "http":
        api = QueueApi(polls_to_complete=1, video=model_video)
        async with serve_queue_api(api) as url:
            routes = {
                kind: f"acme/{kind.lower()}"
                for kind in ("generate", "merge", "reframe", "lipSync", "addSubtitles")
            }
            remote = HttpVideoProvider(
                url, api_key=KEY, models=routes, clock=SteppingClock(horizon=20), max_retries=0
            )
            yield HttpCase(name, remote, 1e-6, api=api)
    else:
        raise ValueError(f"no provider case {name!r}: add it to open_case")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


# --- checks -------------------------------------------------------------------------------------

_ASPECT = re.compile(r"^([1-9][0-9]*):([1-9][0-9]*)$")


async def assert_well_formed(case: Case, video: Video) -> None:
    """A ``Video`` any consumer can rely on: a URL with a scheme, a positive finite duration, a
    ``W:H`` aspect ratio, a frame size (if given) of positive integers of that shape."""
    assert isinstance(video, Video)
    assert video.url and urlsplit(video.url).scheme, f"not a URL: {video.url!r}"
    assert isinstance(video.duration, float)
    assert math.isfinite(video.duration) and video.duration > 0, video.duration
    shape = _ASPECT.match(video.aspect_ratio)
    assert shape is not None, f"not an aspect ratio: {video.aspect_ratio!r}"
    assert video.status == "completed"
    for side in (video.width, video.height):
        assert side is None or (isinstance(side, int) and side > 0), (video.width, video.height)
    if video.width is not None and video.height is not None:
        ratio = int(shape[1]) / int(shape[2])
        # Frame sides are rounded to even pixels: the shape holds to a pixel or two.
        assert abs(video.width / video.height - ratio) <= 2 / min(video.width, video.height), (
            f"{video.width}x{video.height} is not {video.aspect_ratio}"
        )
    await case.inspect(video)


def merged_duration(inputs: tuple[Video, ...], params: Mapping[str, Any]) -> float:
    total = sum(video.duration for video in inputs)
    if params.get("transition", "none") != "none" and len(inputs) > 1:
        overlap = min(float(params["transitionDuration"]), *(v.duration for v in inputs))
        total -= (len(inputs) - 1) * overlap
    return total


# --- the five wire types ------------------------------------------------------------------------


@pytest.mark.parametrize("aspect", ["16:9", "9:16"])
async def test_generate_keeps_duration_and_aspect_ratio(
    backend: str, tmp_path: Path, aspect: str
) -> None:
    async with open_case(backend, tmp_path) as case:
        params = {"prompt": "A fox in the snow", "duration": 1, "aspectRatio": aspect}
        video = await case.run(case.request("generate", params))
        await assert_well_formed(case, video)
        assert video.duration == pytest.approx(1.0, abs=case.tolerance)
        assert video.aspect_ratio == aspect


@pytest.mark.parametrize(
    ("clips", "params"),
    [
        ((1.0, 1.0), {"transition": "none"}),
        ((1.0, 1.0), {"transition": "crossfade", "transitionDuration": 0.5}),
        ((1.0, 1.0, 1.0), {"transition": "fade", "transitionDuration": 0.4}),
    ],
    ids=["none", "crossfade", "fade-of-three"],
)
async def test_merge_sums_durations_less_the_overlaps(
    backend: str, tmp_path: Path, clips: tuple[float, ...], params: dict[str, Any]
) -> None:
    async with open_case(backend, tmp_path) as case:
        inputs = tuple([await case.source(duration) for duration in clips])
        video = await case.run(case.request("merge", params, inputs))
        await assert_well_formed(case, video)
        expected = merged_duration(inputs, params)
        assert expected < sum(clips) or params["transition"] == "none"
        assert video.duration == pytest.approx(expected, abs=case.tolerance)
        assert video.aspect_ratio == inputs[0].aspect_ratio


@pytest.mark.parametrize(("source", "target"), [("16:9", "9:16"), ("9:16", "1:1")])
async def test_reframe_changes_the_aspect_ratio(
    backend: str, tmp_path: Path, source: str, target: str
) -> None:
    async with open_case(backend, tmp_path) as case:
        clip = await case.source(1.0, source)
        video = await case.run(case.request("reframe", {"aspectRatio": target}, (clip,)))
        await assert_well_formed(case, video)
        assert video.aspect_ratio == target
        assert video.duration == pytest.approx(clip.duration, abs=case.tolerance)
        if video.width is not None and video.height is not None:
            assert (video.width, video.height) != (clip.width, clip.height)


async def test_lip_sync_keeps_duration_and_aspect_ratio(backend: str, tmp_path: Path) -> None:
    async with open_case(backend, tmp_path) as case:
        clip = await case.source(1.0, "9:16")
        params = {"audioUrl": await case.audio_url()}
        video = await case.run(case.request("lipSync", params, (clip,)))
        await assert_well_formed(case, video)
        assert video.url != clip.url
        assert video.duration == pytest.approx(clip.duration, abs=case.tolerance)
        assert video.aspect_ratio == clip.aspect_ratio == "9:16"


async def test_add_subtitles_keeps_duration_and_aspect_ratio(backend: str, tmp_path: Path) -> None:
    async with open_case(backend, tmp_path) as case:
        clip = await case.source(1.0, "1:1")
        params = {"language": "fr", "cues": CUES}
        video = await case.run(case.request("addSubtitles", params, (clip,)))
        await assert_well_formed(case, video)
        assert video.url != clip.url
        assert video.duration == pytest.approx(clip.duration, abs=case.tolerance)
        assert video.aspect_ratio == clip.aspect_ratio == "1:1"


async def test_a_pipeline_of_every_type_keeps_the_rules_end_to_end(
    backend: str, tmp_path: Path
) -> None:
    """Each output feeds the next job, as in an execution: generate twice, merge, reframe,
    lip-sync, subtitle."""
    async with open_case(backend, tmp_path) as case:
        first = await case.run(
            case.request("generate", {"prompt": "one", "duration": 1, "aspectRatio": "16:9"})
        )
        second = await case.run(
            case.request("generate", {"prompt": "two", "duration": 1, "aspectRatio": "16:9"})
        )
        params = {"transition": "crossfade", "transitionDuration": 0.5}
        merged = await case.run(case.request("merge", params, (first, second)))
        tall = await case.run(case.request("reframe", {"aspectRatio": "9:16"}, (merged,)))
        voiced = await case.run(
            case.request("lipSync", {"audioUrl": await case.audio_url()}, (tall,))
        )
        final = await case.run(
            case.request("addSubtitles", {"language": "fr", "cues": CUES}, (voiced,))
        )
        for video in (first, second, merged, tall, voiced, final):
            await assert_well_formed(case, video)
        assert len({v.url for v in (first, second, merged, tall, voiced, final)}) == 6
        assert final.duration == pytest.approx(1.5, abs=2 * case.tolerance)
        assert final.aspect_ratio == "9:16"


# --- invalid input ------------------------------------------------------------------------------

#: Requests no provider can ever run: each must fail at once, not be retried.
INVALID: dict[str, tuple[str, dict[str, Any], int]] = {
    "unknown type": ("teleport", {"destination": "mars"}, 1),
    "lipSync without a video": ("lipSync", {"audioUrl": "https://cdn.example.com/v.mp3"}, 0),
    "merge without videos": ("merge", {"transition": "none"}, 0),
}
#: (provider, invalid input) pairs known to break the contract, each with the reason.
KNOWN_GAPS: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize("invalid", sorted(INVALID))
async def test_an_invalid_input_is_a_non_retryable_provider_error(
    backend: str, tmp_path: Path, invalid: str, request: pytest.FixtureRequest
) -> None:
    gap = KNOWN_GAPS.get((backend, invalid))
    if gap is not None:
        request.applymarker(pytest.mark.xfail(reason=gap, strict=True))
    kind, params, input_count = INVALID[invalid]
    async with open_case(backend, tmp_path) as case:
        inputs = tuple([await case.source() for _ in range(input_count)])
        with pytest.raises(ProviderError) as caught:
            await case.run(case.request(kind, params, inputs))
        assert caught.value.retryable is False
        assert str(caught.value), "the error must say what is wrong"
        if kind == "teleport":
            assert "'teleport'" in str(caught.value)
        assert await case.leftovers() == []


# --- cancellation -------------------------------------------------------------------------------


async def test_a_cancelled_call_stops_promptly_and_leaves_nothing(
    backend: str, tmp_path: Path
) -> None:
    async with open_case(backend, tmp_path) as case:
        request = case.slow_request()
        case.arm()
        scope = anyio.CancelScope()
        returned: list[Video] = []
        stopped = anyio.Event()

        async def call() -> None:
            try:
                with scope:
                    returned.append(await case.provider.run(request))
            finally:
                stopped.set()

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(call)
            with anyio.fail_after(CALL_WITHIN):
                await case.started()
            assert not stopped.is_set(), "the slow call ended by itself"
            scope.cancel()
            with anyio.fail_after(STOP_WITHIN):
                await stopped.wait()
        assert scope.cancelled_caught
        assert returned == []
        assert await case.leftovers() == []
        # The provider is still usable afterwards.
        video = await case.run(
            case.request("generate", {"prompt": "after", "duration": 1, "aspectRatio": "1:1"})
        )
        await assert_well_formed(case, video)


# --- attempts and idempotency keys --------------------------------------------------------------


async def test_attempts_of_one_job_carry_its_key_and_make_the_same_video(
    backend: str, tmp_path: Path
) -> None:
    async with open_case(backend, tmp_path) as case:
        params = {"prompt": "again", "duration": 1, "aspectRatio": "16:9"}
        first = await case.run(case.request("generate", params, job="same", attempt=1))
        again = await case.run(case.request("generate", params, job="same", attempt=2))
        other = await case.run(case.request("generate", params, job="other"))
        for video in (first, again, other):
            await assert_well_formed(case, video)
        assert again.url == first.url  # a retry redoes the same work, in the same place
        assert other.url != first.url
        seen = case.keys_seen()
        if seen is not None:
            key = f"{EXECUTION}/same"
            assert seen == [key, key, f"{EXECUTION}/other"]


def test_every_provider_is_the_port() -> None:
    assert isinstance(FakeVideoProvider(), VideoProvider)
    assert isinstance(
        HttpVideoProvider("https://queue.example.com", models={"a": "b"}), VideoProvider
    )

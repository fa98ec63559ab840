"""FFmpegVideoProvider against the real FFmpeg binary of the imageio-ffmpeg wheel.

Clips are short and small (``short_side=180``: 320x180 for 16:9) so the file runs in seconds.
Durations are checked to one frame (0.04 s at 25 fps).
"""

from __future__ import annotations

import functools
import http.server
import itertools
import math
import subprocess
import sys
import threading
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import anyio
import pytest
from processes import ffmpeg_children, running

from adapters.ffmpeg import (
    FFmpegFailed,
    FFmpegVideoProvider,
    InvalidMedia,
    MediaInfo,
    make_speech_like,
    make_tone,
    parse_srt,
    probe,
    to_ass,
)
from adapters.ffmpeg.fetch import InputFetcher, file_url_path
from adapters.ffmpeg.process import ffmpeg_exe
from adapters.ffmpeg.subtitles import Cue
from adapters.net import parse_networks
from engine import ProviderError, Video
from engine.models import JobRequest

pytestmark = pytest.mark.anyio

FRAME = 0.04  # one frame at 25 fps
SMALL = 180


# --- helpers ---------------------------------------------------------------------------------


class Env:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.out = root / "out"
        self.tmp = root / "tmp"
        self.media = root / "media"
        self.media.mkdir()
        self.count = 0

    def provider(self, **options: Any) -> FFmpegVideoProvider:
        options.setdefault("short_side", SMALL)
        options.setdefault("input_dirs", [self.media])
        return FFmpegVideoProvider(output_dir=self.out, temp_dir=self.tmp, **options)

    def request(
        self,
        type: str,
        params: dict[str, Any],
        inputs: Sequence[Video] = (),
        job: str | None = None,
    ) -> JobRequest:
        self.count += 1
        job_id = job or f"job{self.count}"
        return JobRequest("exec_t", job_id, type, params, tuple(inputs), 1, f"exec_t/{job_id}")

    def assert_clean(self) -> None:
        """No scratch directory and no partial output left behind."""
        assert not self.tmp.exists() or list(self.tmp.iterdir()) == []
        assert list(self.out.rglob("*.part")) == []


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def path_of(video: Video) -> Path:
    return file_url_path(video.url)


async def generate(
    provider: FFmpegVideoProvider,
    env: Env,
    duration: float = 1.0,
    aspect: str = "16:9",
    prompt: str = "A quiet morning in the lab",
) -> Video:
    params = {"prompt": prompt, "duration": duration, "aspectRatio": aspect}
    return await provider.run(env.request("generate", params))


async def ffmpeg(*args: str) -> subprocess.CompletedProcess[bytes]:
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", *args]
    return await anyio.run_process(command, check=False)


async def assert_decodes(path: Path) -> None:
    """FFmpeg decodes every frame and sample without a single error."""
    result = await ffmpeg("-i", str(path), "-f", "null", "-")
    assert result.returncode == 0
    assert result.stderr.decode() == ""


async def frame_rgb(path: Path, at: float) -> bytes:
    result = await ffmpeg(
        "-ss", f"{at:.3f}", "-i", str(path), "-frames:v", "1", "-f", "rawvideo",
        "-pix_fmt", "rgb24", "-",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


async def audio_samples(path: Path, start: float, seconds: float, rate: int = 8000) -> array[int]:
    result = await ffmpeg(
        "-ss", f"{start:.3f}", "-t", f"{seconds:.3f}", "-i", str(path), "-vn",
        "-ac", "1", "-ar", str(rate), "-f", "s16le", "-",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    samples = array("h")
    samples.frombytes(result.stdout)
    if sys.byteorder == "big":  # pragma: no cover
        samples.byteswap()
    return samples


def rms(samples: Sequence[int]) -> float:
    return math.sqrt(sum(s * s for s in samples) / len(samples)) if samples else 0.0


def dominant_frequency(samples: Sequence[int], rate: int = 8000) -> float:
    """Frequency from the zero-crossing rate: good enough to tell a pure tone."""
    crossings = sum(1 for a, b in itertools.pairwise(samples) if (a < 0) != (b < 0))
    return crossings * rate / (2 * len(samples))


def max_block_difference(a: bytes, b: bytes, width: int, height: int, block: int = 8) -> float:
    """The largest mean absolute difference over ``block`` x ``block`` squares of two RGB frames.

    Re-encoding changes every block a little (a few levels); burnt-in text changes some a lot.
    """
    assert len(a) == len(b) == width * height * 3
    worst = 0.0
    for by in range(0, height - block + 1, block):
        for bx in range(0, width - block + 1, block):
            total = 0
            for y in range(by, by + block):
                start = (y * width + bx) * 3
                end = start + block * 3
                total += sum(abs(p - q) for p, q in zip(a[start:end], b[start:end], strict=True))
            worst = max(worst, total / (block * block * 3))
    return worst


async def assert_measured(video: Video) -> MediaInfo:
    """``video`` describes its own file: duration, size and aspect ratio as measured."""
    path = path_of(video)
    assert path.is_absolute() and path.is_file()
    assert video.url.startswith("file:///")
    info = await probe(path)
    assert video.duration == pytest.approx(info.duration, abs=1e-6)
    assert (video.width, video.height) == (info.width, info.height)
    assert info.video_codec == "h264" and info.audio_codec == "aac"
    assert info.has_audio and info.channels == 2
    assert info.audio_duration == pytest.approx(info.duration, abs=FRAME)
    assert video.status == "completed"
    await assert_decodes(path)
    return info


# --- generate --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("aspect", "size"), [("16:9", (320, 180)), ("9:16", (180, 320)), ("1:1", (180, 180))]
)
async def test_generate_makes_a_clip_of_the_requested_shape(
    env: Env, aspect: str, size: tuple[int, int]
) -> None:
    provider = env.provider()
    video = await generate(provider, env, duration=1.2, aspect=aspect)
    info = await assert_measured(video)
    assert (info.width, info.height) == size
    assert video.aspect_ratio == aspect
    assert video.duration == pytest.approx(1.2, abs=FRAME)
    assert info.fps == 25
    assert path_of(video) == env.out / "exec_t" / "job1.mp4"
    # The background moves, and the sound is silence.
    assert await frame_rgb(path_of(video), 0.1) != await frame_rgb(path_of(video), 1.0)
    assert rms(await audio_samples(path_of(video), 0, 1.0)) == 0
    env.assert_clean()


async def test_generate_fits_a_long_prompt(env: Env) -> None:
    provider = env.provider()
    video = await generate(provider, env, duration=0.4, prompt="word " * 800)
    await assert_measured(video)


async def test_generate_default_size_is_720p(env: Env) -> None:
    provider = env.provider(short_side=720)
    video = await generate(provider, env, duration=0.2)
    assert (video.width, video.height, video.aspect_ratio) == (1280, 720, "16:9")


async def test_a_rerun_overwrites_the_same_file_atomically(env: Env) -> None:
    provider = env.provider()
    request = env.request("generate", {"prompt": "again", "duration": 0.4}, job="once")
    first = await provider.run(request)
    second = await provider.run(request)
    assert first.url == second.url
    command = provider.last_command
    assert command is not None and command.args[0] == provider.exe
    assert str(env.out / "exec_t") in command.args[-1]  # wrote beside the final file
    assert provider.last_command_seconds is not None and provider.last_command_seconds > 0
    assert sorted(p.name for p in (env.out / "exec_t").iterdir()) == ["once.mp4"]
    env.assert_clean()


def test_output_paths_stay_inside_the_output_directory(env: Env) -> None:
    provider = env.provider()
    for key in ("../../etc/x", "exec/..", "exec/.hidden", "a b/c:d"):
        path = provider.output_path(key)
        assert path.is_relative_to(env.out)
        assert ".." not in path.relative_to(env.out).parts
        assert not any(part.startswith(".") for part in path.relative_to(env.out).parts)
    assert provider.output_path("..") != provider.output_path(".")


# --- merge -----------------------------------------------------------------------------------


async def test_merge_without_transition_is_the_sum(env: Env) -> None:
    provider = env.provider()
    clips = [await generate(provider, env, d) for d in (1.0, 0.6, 0.8)]
    merged = await provider.run(env.request("merge", {"transition": "none"}, clips))
    await assert_measured(merged)
    assert merged.duration == pytest.approx(2.4, abs=FRAME)
    assert (merged.width, merged.height, merged.aspect_ratio) == (320, 180, "16:9")
    env.assert_clean()


@pytest.mark.parametrize("transition", ["crossfade", "fade"])
async def test_merge_with_transition_is_shorter_by_the_overlaps(env: Env, transition: str) -> None:
    provider = env.provider()
    clips = [await generate(provider, env, d) for d in (1.0, 1.0, 0.8)]
    params = {"transition": transition, "transitionDuration": 0.4}
    merged = await provider.run(env.request("merge", params, clips))
    await assert_measured(merged)
    assert merged.duration == pytest.approx(2.8 - 2 * 0.4, abs=FRAME)
    # Mid-transition the picture is neither clip alone.
    path = path_of(merged)
    mid = await frame_rgb(path, 0.8)
    assert mid != await frame_rgb(path_of(clips[0]), 0.8)


async def test_merge_caps_the_overlap_below_the_shortest_clip(env: Env) -> None:
    provider = env.provider()
    clips = [await generate(provider, env, d) for d in (1.0, 0.4)]
    params = {"transition": "crossfade", "transitionDuration": 3.0}
    merged = await provider.run(env.request("merge", params, clips))
    await assert_measured(merged)
    assert merged.duration == pytest.approx(1.0 + 0.4 - (0.4 - FRAME), abs=FRAME)


async def test_merge_scales_and_pads_to_the_first_input(env: Env) -> None:
    provider = env.provider()
    wide = await generate(provider, env, 0.6, "16:9")
    tall = await generate(provider, env, 0.6, "9:16")
    merged = await provider.run(env.request("merge", {"transition": "crossfade"}, [wide, tall]))
    info = await assert_measured(merged)
    assert (info.width, info.height) == (320, 180)
    assert merged.duration == pytest.approx(0.6 + 0.6 - 0.6 + FRAME, abs=FRAME)
    # The tall clip is pillarboxed: its frames have black sides.
    last = await frame_rgb(path_of(merged), merged.duration - 0.05)
    left_column = [last[(y * 320) * 3] for y in range(180)]
    assert max(left_column) < 24


# --- reframe ---------------------------------------------------------------------------------


async def test_reframe_to_vertical_is_720x1280(env: Env) -> None:
    provider = env.provider(short_side=720)
    wide = await generate(provider, env, duration=0.4)
    tall = await provider.run(env.request("reframe", {"aspectRatio": "9:16"}, [wide]))
    await assert_measured(tall)
    assert (tall.width, tall.height, tall.aspect_ratio) == (720, 1280, "9:16")
    assert tall.duration == pytest.approx(wide.duration, abs=FRAME)


async def test_reframe_pad_mode_letterboxes(env: Env) -> None:
    provider = env.provider(reframe_mode="pad")
    wide = await generate(provider, env, duration=0.4)
    tall = await provider.run(env.request("reframe", {"aspectRatio": "9:16"}, [wide]))
    await assert_measured(tall)
    assert (tall.width, tall.height) == (180, 320)
    frame = await frame_rgb(path_of(tall), 0.2)
    top_row, middle_row = frame[: 180 * 3], frame[160 * 180 * 3 : 161 * 180 * 3]
    assert max(top_row) < 24  # black bar
    assert max(middle_row) > 60  # picture


# --- lipSync ---------------------------------------------------------------------------------


async def test_lip_sync_replaces_the_sound_and_pads_it(env: Env) -> None:
    provider = env.provider()
    video = await generate(provider, env, duration=1.2)
    tone = await make_tone(env.media / "tone.wav", 0.6, 440)
    dubbed = await provider.run(env.request("lipSync", {"audioUrl": tone.as_uri()}, [video]))
    await assert_measured(dubbed)
    assert dubbed.duration == pytest.approx(video.duration, abs=FRAME)
    heard = await audio_samples(path_of(dubbed), 0.1, 0.4)
    assert rms(heard) > 3000
    assert dominant_frequency(heard) == pytest.approx(440, rel=0.05)
    assert rms(await audio_samples(path_of(dubbed), 0.8, 0.3)) < 50  # padded with silence
    assert rms(await audio_samples(path_of(video), 0.1, 0.4)) == 0
    env.assert_clean()


async def test_lip_sync_trims_a_longer_track(env: Env) -> None:
    provider = env.provider()
    video = await generate(provider, env, duration=0.8)
    voice = await make_speech_like(env.media / "fr.m4a", 3.0, pitch=200)
    dubbed = await provider.run(env.request("lipSync", {"audioUrl": voice.as_uri()}, [video]))
    info = await assert_measured(dubbed)
    assert info.audio_duration == pytest.approx(0.8, abs=FRAME)
    assert rms(await audio_samples(path_of(dubbed), 0, 0.8)) > 1000


# --- addSubtitles ----------------------------------------------------------------------------


async def test_subtitles_are_burnt_in_where_a_cue_is_shown(env: Env) -> None:
    provider = env.provider()
    video = await generate(provider, env, duration=2.0)
    cues = [{"start": 0.2, "end": 0.9, "text": "Bonjour à tous"}]
    subtitled = await provider.run(
        env.request("addSubtitles", {"language": "fr", "cues": cues}, [video])
    )
    await assert_measured(subtitled)
    assert subtitled.duration == pytest.approx(video.duration, abs=FRAME)
    before, after = path_of(video), path_of(subtitled)
    shown = max_block_difference(
        await frame_rgb(before, 0.5), await frame_rgb(after, 0.5), 320, 180
    )
    hidden = max_block_difference(
        await frame_rgb(before, 1.5), await frame_rgb(after, 1.5), 320, 180
    )
    assert shown > 40, shown
    assert hidden < 12, hidden
    env.assert_clean()


async def test_subtitles_from_an_srt_file(env: Env) -> None:
    provider = env.provider()
    video = await generate(provider, env, duration=1.6)
    srt = env.media / "subs.srt"
    srt.write_text("1\n00:00:00,100 --> 00:00:00,700\n<i>Hola</i> a todos\n\n", "utf-8")
    subtitled = await provider.run(
        env.request("addSubtitles", {"language": "es", "srtUrl": srt.as_uri()}, [video])
    )
    await assert_measured(subtitled)
    shown = max_block_difference(
        await frame_rgb(path_of(video), 0.4), await frame_rgb(path_of(subtitled), 0.4), 320, 180
    )
    assert shown > 40


async def test_subtitles_need_cues_or_an_srt(env: Env) -> None:
    provider = env.provider()
    video = await generate(provider, env, duration=0.4)
    with pytest.raises(ProviderError, match="transcription") as caught:
        await provider.run(env.request("addSubtitles", {"language": "fr"}, [video]))
    assert caught.value.retryable is False
    env.assert_clean()


async def test_a_file_that_is_not_srt_is_refused(env: Env) -> None:
    provider = env.provider()
    video = await generate(provider, env, duration=0.4)
    bogus = env.media / "notes.srt"
    bogus.write_text("just some notes\n", "utf-8")
    request = env.request("addSubtitles", {"language": "fr", "srtUrl": bogus.as_uri()}, [video])
    with pytest.raises(ProviderError, match="no SubRip cues") as caught:
        await provider.run(request)
    assert caught.value.retryable is False
    env.assert_clean()


def test_srt_parsing_and_ass_escaping() -> None:
    data = (
        "\ufeff1\r\n00:00:01,000 --> 00:00:02,500\r\nHello <b>world</b>\r\nsecond line\r\n\r\n"
        "2\r\n00:01:00.25 --> 00:01:01.000\r\n{\\an8}Top {braces} C:\\new\r\n"
    ).encode()
    cues = parse_srt(data)
    assert cues == [
        Cue(1.0, 2.5, "Hello <b>world</b>\nsecond line"),
        Cue(60.25, 61.0, "{\\an8}Top {braces} C:\\new"),
    ]
    script = to_ass(cues, width=320, height=180, markup=True)
    assert "PlayResX: 320" in script and "PlayResY: 180" in script
    assert "0:00:01.00,0:00:02.50,Default,,0,0,0,,Hello {\\b1}world{\\b0}\\Nsecond line" in script
    assert "Top \\{braces\\} C:\\\u2060new" in script
    literal = to_ass([Cue(0, 1, "<i>not markup</i>")], width=320, height=180)
    assert "<i>not markup</i>" in literal


# --- broken inputs, failures, cleanup --------------------------------------------------------


async def test_a_missing_input_file_fails_clearly(env: Env) -> None:
    provider = env.provider()
    video = await generate(provider, env, duration=0.4)
    missing = (env.media / "nope.wav").as_uri()
    with pytest.raises(ProviderError, match=r"audioUrl: .*does not exist") as caught:
        await provider.run(env.request("lipSync", {"audioUrl": missing}, [video], job="dub"))
    assert caught.value.retryable is False
    assert not (env.out / "exec_t" / "dub.mp4").exists()
    env.assert_clean()


async def test_a_text_file_posing_as_audio_fails_with_ffmpegs_words(env: Env) -> None:
    provider = env.provider()
    video = await generate(provider, env, duration=0.4)
    fake = env.media / "voice.wav"
    fake.write_text("this is not audio\n" * 20, "utf-8")
    request = env.request("lipSync", {"audioUrl": fake.as_uri()}, [video], job="dub")
    with pytest.raises(InvalidMedia, match="Invalid data found") as caught:
        await provider.run(request)
    assert caught.value.retryable is False
    assert not (env.out / "exec_t" / "dub.mp4").exists()
    env.assert_clean()


async def test_a_script_posing_as_audio_cannot_reach_other_files(env: Env) -> None:
    provider = env.provider()
    video = await generate(provider, env, duration=0.4)
    await make_tone(env.media / "tone.wav", 0.4)
    script = env.media / "voice.wav"  # FFmpeg would follow this concat script to tone.wav
    script.write_text("ffconcat version 1.0\nfile tone.wav\n", "utf-8")
    request = env.request("lipSync", {"audioUrl": script.as_uri()}, [video])
    with pytest.raises(InvalidMedia, match="cannot read this file as media") as caught:
        await provider.run(request)
    assert caught.value.retryable is False
    env.assert_clean()


async def test_extreme_aspect_ratios_are_refused(env: Env) -> None:
    provider = env.provider(short_side=720)
    with pytest.raises(ProviderError, match="pixels long") as caught:
        await generate(provider, env, duration=0.4, aspect="1:100")
    assert caught.value.retryable is False
    env.assert_clean()


async def test_a_missing_input_video_fails_clearly(env: Env) -> None:
    provider = env.provider()
    ghost = Video(url=(env.out / "exec_t" / "ghost.mp4").as_uri(), duration=1, aspect_ratio="16:9")
    with pytest.raises(ProviderError, match=r"inputs\[0\].*does not exist") as caught:
        await provider.run(env.request("reframe", {"aspectRatio": "9:16"}, [ghost]))
    assert caught.value.retryable is False
    env.assert_clean()


async def test_local_files_outside_the_allowed_directories_are_refused(
    env: Env, tmp_path: Path
) -> None:
    provider = env.provider(input_dirs=[])
    video = await generate(provider, env, duration=0.4)
    tone = await make_tone(env.media / "tone.wav", 0.2)
    with pytest.raises(ProviderError, match="outside the directories") as caught:
        await provider.run(env.request("lipSync", {"audioUrl": tone.as_uri()}, [video]))
    assert caught.value.retryable is False
    env.assert_clean()


async def test_an_ffmpeg_failure_carries_its_stderr(env: Env) -> None:
    provider = env.provider(preset="no-such-preset")
    with pytest.raises(FFmpegFailed) as caught:
        await generate(provider, env, duration=0.4)
    assert "no-such-preset" in str(caught.value)
    assert caught.value.stderr
    assert caught.value.retryable is False
    assert not list(env.out.rglob("*.mp4"))
    env.assert_clean()


async def test_unknown_job_types_are_not_retried(env: Env) -> None:
    provider = env.provider()
    with pytest.raises(ProviderError, match="cannot run 'upscale'") as caught:
        await provider.run(env.request("upscale", {}))
    assert caught.value.retryable is False


def test_a_missing_wheel_names_the_extra(monkeypatch: pytest.MonkeyPatch, env: Env) -> None:
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(ModuleNotFoundError, match=r"'ffmpeg' extra"):
        FFmpegVideoProvider(output_dir=env.out)


async def test_probe_reads_other_formats_and_refuses_non_media(env: Env) -> None:
    tone = await make_tone(env.media / "tone.wav", 0.5, 300)
    info = await probe(tone)
    assert info.has_audio and not info.has_video
    assert info.duration == pytest.approx(0.5, abs=0.01)
    fake = env.media / "fake.mp4"
    fake.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"garbage" * 10)
    with pytest.raises(InvalidMedia):
        await probe(fake)
    with pytest.raises(InvalidMedia, match="no such file"):
        await probe(env.media / "absent.mp4")


# --- processes -------------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
async def test_cancelling_a_job_kills_its_ffmpeg(env: Env) -> None:
    provider = env.provider(short_side=720)
    seen: list[int] = []
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(generate, provider, env, 300.0)
            while not seen:
                await anyio.sleep(0.02)
                seen = ffmpeg_children(provider.exe)
            assert provider.last_command is not None
            assert running(seen[0])
            tg.cancel_scope.cancel()
    assert not running(seen[0])  # killed and reaped
    assert ffmpeg_children(provider.exe) == []
    assert not list(env.out.rglob("*.mp4"))
    env.assert_clean()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
async def test_max_processes_limits_concurrent_ffmpeg_runs(env: Env) -> None:
    provider = env.provider(max_processes=1)
    most = 0
    done = anyio.Event()

    async def watch() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, len(ffmpeg_children(provider.exe)))
            await anyio.sleep(0.005)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        async with anyio.create_task_group() as jobs:
            for _ in range(3):
                jobs.start_soon(generate, provider, env, 2.0)
        done.set()
    assert most == 1


# --- http(s) inputs --------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory; ``/go/<quoted URL>`` redirects there, and ``/loop`` to itself."""

    def do_GET(self) -> None:
        if self.path.startswith("/go/") or self.path == "/loop":
            target = unquote(self.path.removeprefix("/go/"))
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A tiny HTTP server on 127.0.0.1 serving a directory: (base URL, directory)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_audio_over_http_from_an_allowed_network(env: Env, served: tuple[str, Path]) -> None:
    base, root = served
    await make_tone(root / "tone.wav", 0.5, 440)
    provider = env.provider(allowed_networks=("127.0.0.0/8",))
    video = await generate(provider, env, duration=0.8)
    dubbed = await provider.run(env.request("lipSync", {"audioUrl": f"{base}/tone.wav"}, [video]))
    await assert_measured(dubbed)
    heard = await audio_samples(path_of(dubbed), 0.1, 0.3)
    assert dominant_frequency(heard) == pytest.approx(440, rel=0.05)
    env.assert_clean()


async def test_loopback_urls_are_refused_by_default(env: Env, served: tuple[str, Path]) -> None:
    base, root = served
    await make_tone(root / "tone.wav", 0.5)
    provider = env.provider()
    video = await generate(provider, env, duration=0.4)
    request = env.request("lipSync", {"audioUrl": f"{base}/tone.wav"}, [video])
    with pytest.raises(ProviderError, match="loopback") as caught:
        await provider.run(request)
    assert caught.value.retryable is False
    env.assert_clean()


async def test_http_errors_and_oversized_inputs(env: Env, served: tuple[str, Path]) -> None:
    base, root = served
    await make_tone(root / "tone.wav", 0.5)
    provider = env.provider(allowed_networks=("127.0.0.0/8",), max_input_bytes=1000)
    video = await generate(provider, env, duration=0.4)
    with pytest.raises(ProviderError, match="HTTP 404") as missing:
        await provider.run(env.request("lipSync", {"audioUrl": f"{base}/nope.wav"}, [video]))
    assert missing.value.retryable is False
    with pytest.raises(ProviderError, match="input limit") as big:
        await provider.run(env.request("lipSync", {"audioUrl": f"{base}/tone.wav"}, [video]))
    assert big.value.retryable is False
    env.assert_clean()


async def test_redirects_are_followed_hop_by_hop_through_the_guard(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    base, root = served
    (root / "a.txt").write_bytes(b"hello")
    fetcher = InputFetcher(
        client=None,
        allowed_networks=parse_networks(["127.0.0.0/8"]),
        roots=(),
        max_bytes=1000,
        timeout=10,
    )

    async def fetch(url: str) -> Path:
        return await fetcher.local_path(url, "audioUrl", tmp_path, "input")

    assert (await fetch(f"{base}/go/{quote(base + '/a.txt', safe='')}")).read_bytes() == b"hello"
    refused = [("ftp://127.0.0.1/a", "scheme"), ("http://10.0.0.1/a", "private")]
    refused += [("http://[::1]/a", "loopback"), ("http://0xa9fea9fe/latest", "link-local")]
    for target, reason in refused:
        with pytest.raises(ProviderError, match=f"^audioUrl: .*{reason}") as caught:
            await fetch(f"{base}/go/{quote(target, safe='')}")
        assert caught.value.retryable is False
    with pytest.raises(ProviderError, match="more than 5 redirects") as looped:
        await fetch(f"{base}/loop")
    assert looped.value.retryable is False


async def test_srt_over_http(env: Env, served: tuple[str, Path]) -> None:
    base, root = served
    (root / "subs.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nHello\n", "utf-8")
    provider = env.provider(allowed_networks=("127.0.0.0/8",))
    video = await generate(provider, env, duration=0.8)
    subtitled = await provider.run(
        env.request("addSubtitles", {"language": "en", "srtUrl": f"{base}/subs.srt"}, [video])
    )
    shown = max_block_difference(
        await frame_rgb(path_of(video), 0.4), await frame_rgb(path_of(subtitled), 0.4), 320, 180
    )
    assert shown > 40


# --- through the engine ----------------------------------------------------------------------


async def test_the_seed_pipeline_through_the_engine(env: Env) -> None:
    from engine import Engine, add_subtitles, compose, generate_video, lip_sync, merge

    provider = env.provider()
    voice = await make_speech_like(env.media / "fr.wav", 1.0, pitch=180)
    demo = compose(
        generate_video(prompt="Scene 1", duration=0.8),
        generate_video(prompt="Scene 2", duration=0.8),
        merge(transition="crossfade", transition_duration=0.2),
        lip_sync(audio_url=voice.as_uri()),
        add_subtitles("fr", cues=[{"start": 0.1, "end": 0.6, "text": "Bonjour"}]),
    )
    async with Engine.in_memory(provider=provider) as engine:
        execution = await demo.execute(engine)
        video = await execution.wait(timeout=30)
    await assert_measured(video)
    assert video.duration == pytest.approx(1.4, abs=FRAME)

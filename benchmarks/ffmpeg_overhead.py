"""What FFmpegVideoProvider adds on top of the FFmpeg work itself.

    python benchmarks/ffmpeg_overhead.py              # 7 rounds at 1280x720
    python benchmarks/ffmpeg_overhead.py --rounds 3 --short-side 360

Two jobs are timed, each through the provider (``provider.run``: input checks, probing the
inputs and the output, the FFmpeg run, the atomic rename) and then as the very same FFmpeg
command line run bare with ``subprocess.run``, taken from ``provider.last_command``:

- ``merge``: a crossfade of three 3-second 16:9 clips;
- ``reframe``: one 3-second 16:9 clip to 9:16 (centre crop).

Provider and bare runs alternate within each round (which goes first alternates too), in the
same process, so both see the same machine. Printed: the ratio of the medians, the median of
each round's provider/bare ratio (the verdict: the least disturbed by other load drifting over
the run) and the ratio of the fastest runs. The target is at most 1.1x. Also printed: the time
each provider run spends outside its FFmpeg process (``provider.last_command_seconds``), which
is the overhead itself, free of FFmpeg's run-to-run noise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import anyio

from adapters.ffmpeg import FFmpegCommand, FFmpegVideoProvider
from engine import JobRequest, Video

TARGET = 1.1


def request(job: str, type: str, params: dict[str, object], inputs: list[Video]) -> JobRequest:
    return JobRequest("bench", job, type, params, tuple(inputs), 1, f"bench/{job}")


def run_bare(command: FFmpegCommand) -> float:
    """Run ``command`` exactly as the provider did (same argv, a working directory of the same
    path); return its wall time in seconds."""
    cwd = command.cwd
    if cwd is not None:
        os.makedirs(cwd, exist_ok=True)  # the provider's scratch directory is gone by now
    output = Path(command.args[-1])
    started = time.perf_counter()
    subprocess.run(
        command.args,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=True,
    )
    elapsed = time.perf_counter() - started
    output.unlink(missing_ok=True)
    if cwd is not None:
        shutil.rmtree(cwd, ignore_errors=True)
    return elapsed


async def through_provider(
    provider: FFmpegVideoProvider, job: JobRequest
) -> tuple[float, float, FFmpegCommand]:
    """Run ``job`` through the provider; return its wall time, the part of it spent outside its
    FFmpeg run, and the FFmpeg command it ran."""
    started = time.perf_counter()
    await provider.run(job)
    elapsed = time.perf_counter() - started
    if provider.last_command is None or provider.last_command_seconds is None:
        raise RuntimeError("the provider recorded no command")
    return elapsed, elapsed - provider.last_command_seconds, provider.last_command


async def main(rounds: int, short_side: int) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="ffmpeg-bench-"))
    try:
        provider = FFmpegVideoProvider(
            output_dir=root / "out", temp_dir=root / "tmp", short_side=short_side
        )
        clips = [
            await provider.run(
                request(f"gen{i}", "generate", {"prompt": f"Scene {i + 1}", "duration": 3}, [])
            )
            for i in range(3)
        ]
        jobs: list[tuple[str, str, dict[str, object], list[Video]]] = [
            (
                "merge (crossfade, 3 x 3 s)",
                "merge",
                {"transition": "crossfade", "transitionDuration": 1.0},
                clips,
            ),
            ("reframe (16:9 -> 9:16, 3 s)", "reframe", {"aspectRatio": "9:16"}, clips[:1]),
        ]
        results: dict[str, object] = {}
        for name, kind, params, inputs in jobs:
            through: list[float] = []
            bare: list[float] = []
            outside: list[float] = []
            command: FFmpegCommand | None = None
            for index in range(rounds + 1):  # round 0 warms caches and is not counted
                job = request(f"{kind}{index}", kind, params, inputs)
                if index % 2 and command is not None:  # every other round, bare goes first
                    bare_time = run_bare(command)
                    provider_time, extra, command = await through_provider(provider, job)
                else:
                    provider_time, extra, command = await through_provider(provider, job)
                    bare_time = run_bare(command)
                if index:
                    through.append(provider_time)
                    bare.append(bare_time)
                    outside.append(extra)
            ratio = statistics.median(through) / statistics.median(bare)
            paired = statistics.median(p / b for p, b in zip(through, bare, strict=True))
            fastest = min(through) / min(bare)
            results[name] = {
                "provider_median_s": round(statistics.median(through), 3),
                "bare_median_s": round(statistics.median(bare), 3),
                "ratio_of_medians": round(ratio, 3),
                "median_paired_ratio": round(paired, 3),
                "ratio_of_fastest": round(fastest, 3),
                "outside_ffmpeg_median_ms": round(1000 * statistics.median(outside), 2),
                "provider_s": [round(t, 3) for t in through],
                "bare_s": [round(t, 3) for t in bare],
            }
            verdict = "ok" if paired <= TARGET else f"over the {TARGET}x target"
            print(
                f"{name:28} provider {statistics.median(through):6.3f}s  "
                f"bare {statistics.median(bare):6.3f}s  ratio {ratio:5.3f}x  "
                f"paired {paired:5.3f}x  fastest {fastest:5.3f}x  ({verdict})"
            )
            print(
                f"{'':28} time the provider spends outside FFmpeg: "
                f"{1000 * statistics.median(outside):.1f} ms median"
            )
        return results
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--short-side", type=int, default=720)
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()
    outcome = anyio.run(main, args.rounds, args.short_side)
    if args.json:
        print(json.dumps(outcome, indent=2))

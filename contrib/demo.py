"""The seed's Example 1: a base product demo, then French and Spanish variants after it.

Run with ``make demo`` (or ``python -m contrib.demo``). It uses the embedded in-memory engine and
the fake provider, whose videos are records rather than files.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import anyio

from adapters.memory import FakeVideoProvider, RecordingNotifier
from engine import (
    Engine,
    PipelineExecution,
    Progress,
    Video,
    add_subtitles,
    compose,
    generate_video,
    lip_sync,
    merge,
)

product_demo = compose(
    generate_video(prompt="Scene 1", duration=3),
    generate_video(prompt="Scene 2", duration=3),
    generate_video(prompt="Scene 3", duration=3),
    merge(transition="crossfade"),
)


def bar(progress: Progress, width: int = 20) -> str:
    filled = round(width * progress.percent / 100)
    current = f" running {progress.current_job}" if progress.current_job else ""
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {progress.completed_jobs}/"
        f"{progress.total_jobs} {progress.status}{current}"
    )


def reporter(name: str, started: float) -> Callable[[Progress], None]:
    def report(progress: Progress) -> None:
        print(f"  {time.monotonic() - started:6.2f}s  {name:<8} {bar(progress)}")

    return report


async def main(latency: float) -> None:
    provider = FakeVideoProvider(latency=latency)
    notifier = RecordingNotifier()
    started = time.monotonic()
    print(f"Engine: in-memory, FakeVideoProvider (latency {latency}s per job)\n")
    async with Engine.in_memory(provider=provider, notifier=notifier, concurrency=4) as engine:
        handles: dict[str, PipelineExecution] = {}
        base = await product_demo.on_progress(reporter("base", started)).execute(engine)
        handles["base"] = base
        for name, language, audio in (
            ("french", "fr", "https://cdn.example.com/french.mp3"),
            ("spanish", "es", "https://cdn.example.com/spanish.mp3"),
        ):
            variant = compose(
                product_demo, lip_sync(audio_url=audio), add_subtitles(language=language)
            )
            handles[name] = await variant.on_progress(reporter(name, started)).execute(
                engine,
                base_execution_id=base.id,
                webhook_url=f"https://api.example.com/webhook/{name}",
                webhook_secret="secret123",
            )
        videos: dict[str, Video] = {}
        for name, handle in handles.items():
            videos[name] = await handle.wait(timeout=60)
        elapsed = time.monotonic() - started

    print("\nResults")
    for name, video in videos.items():
        print(
            f"  {name:<8} {handles[name].id}  {video.url}  {video.duration:.1f}s "
            f"{video.aspect_ratio} {video.width}x{video.height}"
        )
    base_calls = [c for c in provider.calls if c.execution_id == base.id]
    print(f"\nJobs run: {len(provider.calls)} in all; the base's {len(base_calls)} jobs ran once")
    merge_done = max(c.finished_at or 0.0 for c in base_calls)
    firsts = [c for c in provider.calls if c.execution_id != base.id and c.job_id == "job1"]
    after = all(c.started_at >= merge_done for c in firsts)
    print(f"Variants started after the base's merge finished: {after}")
    print(f"Notifications (terminal executions): {len(notifier.deliveries)}")
    print(f"Total time: {elapsed:.2f}s")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--latency", type=float, default=0.3, help="seconds per fake job")
    args = parser.parse_args()
    anyio.run(main, args.latency)


if __name__ == "__main__":
    cli()

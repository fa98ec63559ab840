"""The seed's Example 1 for real: a product demo, then French and Spanish variants after it.

``make demo`` (or ``python -m contrib.demo``) runs it on the durable SQLite engine
(``./out/engine.db``) with :class:`~adapters.ffmpeg.FFmpegVideoProvider`, which makes real MP4
files in ``./out/``. The base's three scenes are generated and merged with a crossfade once;
the two variants (their own audio track, made locally, and subtitles) start when the merge is
done and run in parallel. Each variant has a webhook to a receiver this demo starts on loopback,
which verifies both signature schemes. ``--fake`` runs the same on the in-memory engine with the
fake provider, in a second.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio

from adapters.http import HttpNotifier
from adapters.memory import FakeVideoProvider
from engine import (
    Engine,
    InvalidSignature,
    PipelineExecution,
    Progress,
    VideoProvider,
    add_subtitles,
    compose,
    generate_video,
    lip_sync,
    merge,
    verify_webhook,
)
from engine.webhooks import HEX_SIGNATURE

SECRET = "whsec_ZGVtby1zZWNyZXQtZm9yLXRoZS1wcm9kdWN0LWRlbW8="

product_demo = compose(
    generate_video(prompt="Scene 1: a sunrise over the city", duration=3),
    generate_video(prompt="Scene 2: the product on a desk", duration=3),
    generate_video(prompt="Scene 3: a happy customer", duration=3),
    merge(transition="crossfade", transition_duration=0.5),
)

CUES = {
    "fr": [
        {"start": 0.3, "end": 2.8, "text": "Bonjour ! Voici notre produit."},
        {"start": 3.0, "end": 5.5, "text": "Simple, rapide, élégant."},
        {"start": 5.7, "end": 7.8, "text": "Essayez-le dès aujourd'hui."},
    ],
    "es": [
        {"start": 0.3, "end": 2.8, "text": "¡Hola! Este es nuestro producto."},
        {"start": 3.0, "end": 5.5, "text": "Simple, rápido, elegante."},
        {"start": 5.7, "end": 7.8, "text": "Pruébalo hoy mismo."},
    ],
}


class Receiver:
    """A webhook receiver on 127.0.0.1 that checks both signatures of every delivery."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = dict(self.headers.items())
                standard = {k: v for k, v in headers.items() if k.lower().startswith("webhook-")}
                seed = {HEX_SIGNATURE: headers.get(HEX_SIGNATURE, "")}
                checks = {}
                for name, subset in (("standard", standard), ("hex", seed)):
                    try:
                        payload = verify_webhook(body, subset, SECRET)
                        checks[name] = "valid"
                    except InvalidSignature as exc:
                        checks[name] = f"INVALID ({exc})"
                        payload = json.loads(body)
                receiver.received.append(
                    {
                        "path": self.path,
                        "payload": payload,
                        "checks": checks,
                        "id": headers.get("webhook-id"),
                    }
                )
                self.send_response(204)
                self.end_headers()
                receiver.arrived.set()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class Bars:
    """One progress bar per execution: redrawn in place on a terminal, else a line per event."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.lines = dict.fromkeys(names, "waiting")
        self.live = sys.stdout.isatty()
        self.started = time.monotonic()
        if self.live:
            print("\n" * (len(names) - 1))

    def reporter(self, name: str) -> Callable[[Progress], None]:
        def report(progress: Progress) -> None:
            width = 24
            filled = round(width * progress.percent / 100)
            running = f" · running {progress.current_job}" if progress.current_job else ""
            self.lines[name] = (
                f"[{'█' * filled}{'·' * (width - filled)}] {progress.completed_jobs}/"
                f"{progress.total_jobs} {progress.status}{running}"
            )
            self.draw(name)

        return report

    def draw(self, changed: str) -> None:
        elapsed = time.monotonic() - self.started
        if not self.live:
            print(f"  {elapsed:6.1f}s  {changed:<8} {self.lines[changed]}", flush=True)
            return
        sys.stdout.write(f"\x1b[{len(self.names)}F")
        for name in self.names:
            sys.stdout.write(f"\x1b[2K  {name:<8} {self.lines[name]}\n")
        sys.stdout.flush()


async def main(out: Path, fake: bool) -> None:
    started = time.monotonic()
    audio: dict[str, str] = {}
    provider: VideoProvider
    if fake:
        provider = FakeVideoProvider(latency=0.2)
        audio = {lang: f"https://cdn.example.com/{lang}.mp3" for lang in ("fr", "es")}
        print("Engine: in-memory, fake provider (records, no files)\n")
    else:
        from adapters.ffmpeg import FFmpegVideoProvider, make_speech_like

        provider = FFmpegVideoProvider(out / "media", max_processes=2)
        for lang, pitch in (("fr", 150.0), ("es", 120.0)):
            path = out / "media" / f"voice-{lang}.m4a"
            await make_speech_like(path, 8.0, pitch=pitch)
            audio[lang] = path.resolve().as_uri()
        print(f"Engine: SQLite ({out / 'engine.db'}), FFmpeg provider, files in {out}/\n")

    with Receiver() as receiver:
        notifier = HttpNotifier(allowed_networks=("127.0.0.0/8",))
        options: dict[str, Any] = {"provider": provider, "notifier": notifier, "concurrency": 4}
        engine = (
            Engine.in_memory(**options)
            if fake
            else Engine.sqlite(str(out / "engine.db"), **options)
        )
        bars = Bars(["base", "french", "spanish"])
        async with engine:
            handles: dict[str, PipelineExecution] = {}
            handles["base"] = await product_demo.on_progress(bars.reporter("base")).execute(engine)
            for name, lang in (("french", "fr"), ("spanish", "es")):
                variant = compose(
                    product_demo,
                    lip_sync(audio_url=audio[lang]),
                    add_subtitles(language=lang, cues=CUES[lang]),
                ).on_progress(bars.reporter(name))
                handles[name] = await variant.execute(
                    engine,
                    base_execution_id=handles["base"].id,
                    webhook_url=f"{receiver.url}/webhook/{name}",
                    webhook_secret=SECRET,
                )
            videos = {name: await handle.wait(timeout=300) for name, handle in handles.items()}
            with anyio.fail_after(30):
                while len(receiver.received) < 2:
                    await anyio.to_thread.run_sync(receiver.arrived.wait, 1.0)
                    receiver.arrived.clear()
            metrics = await engine.metrics()
            records = {name: await engine.get(handle.id) for name, handle in handles.items()}
        elapsed = time.monotonic() - started

    print("\nVideos")
    for name, video in videos.items():
        line = (
            f"  {name:<8} {video.duration:5.2f}s {video.width}x{video.height} {video.aspect_ratio}"
        )
        if video.url.startswith("file://"):
            path = Path(unquote(urlsplit(video.url).path))
            final = out / f"{name}.mp4"
            shutil.copyfile(path, final)
            line += f"  {final}  ({final.stat().st_size / 1024:.0f} KiB)"
        else:
            line += f"  {video.url}"
        print(line)
    print(f"\nJobs run: {metrics.attempts} attempts, {metrics.jobs_completed} completed")
    for name, record in records.items():
        attempts = [job.attempts for job in record.jobs]
        once = "each ran once" if set(attempts) == {1} else f"attempts {attempts}"
        line = f"  {name:<8} {len(record.jobs)} jobs, {once}"
        if record.base_execution_id is not None:
            first_start = min(job.started_at or 0.0 for job in record.jobs)
            base_done = records["base"].completed_at or 0.0
            line += f"; started {first_start - base_done:+.2f}s after the base completed"
        print(line)
    print("Webhooks received")
    for item in receiver.received:
        checks = ", ".join(f"{k} signature {v}" for k, v in item["checks"].items())
        print(f"  {item['path']:<18} {item['payload']['status']:<10} {checks}")
    print(f"\nTotal time: {elapsed:.1f}s")


def cli() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder")
    parser.add_argument("--fake", action="store_true", help="in-memory engine, fake provider")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    (args.out / "media").mkdir(parents=True)
    anyio.run(main, args.out, args.fake)


if __name__ == "__main__":
    cli()

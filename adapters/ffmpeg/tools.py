"""Make local test media with FFmpeg: tones and speech-like sound, no downloads."""

from __future__ import annotations

import os
from pathlib import Path

from adapters.ffmpeg.process import FFmpegCommand, ffmpeg_exe, run_ffmpeg

__all__ = ["make_speech_like", "make_tone"]


def _output_args(path: Path) -> list[str]:
    """Codec by extension: ``.wav`` PCM, ``.mp3`` MP3, anything else AAC in MP4 (``.m4a``)."""
    suffix = path.suffix.lower()
    if suffix == ".wav":
        return ["-c:a", "pcm_s16le", "-f", "wav"]
    if suffix == ".mp3":
        return ["-c:a", "libmp3lame", "-b:a", "128k", "-f", "mp3"]
    return ["-c:a", "aac", "-b:a", "128k", "-f", "mp4"]


async def _render(source: str, path: str | os.PathLike[str], ffmpeg: str | None) -> Path:
    out = Path(path)
    exe = ffmpeg if ffmpeg is not None else ffmpeg_exe()
    args = [exe, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y"]
    args += ["-f", "lavfi", "-i", source, *_output_args(out), str(out)]
    await run_ffmpeg(FFmpegCommand(tuple(args)), what="FFmpeg (test audio)")
    return out


async def make_tone(
    path: str | os.PathLike[str],
    seconds: float,
    frequency: float = 440.0,
    *,
    volume: float = 0.5,
    sample_rate: int = 48000,
    ffmpeg: str | None = None,
) -> Path:
    """Write a sine tone of ``frequency`` Hz lasting ``seconds`` to ``path`` (WAV, MP3 or M4A by
    its extension); return the path."""
    source = f"aevalsrc={volume:g}*sin(2*PI*{frequency:g}*t):s={sample_rate}:d={seconds:g}:c=stereo"
    return await _render(source, path, ffmpeg)


async def make_speech_like(
    path: str | os.PathLike[str],
    seconds: float,
    *,
    pitch: float = 140.0,
    syllables_per_second: float = 4.0,
    sample_rate: int = 48000,
    ffmpeg: str | None = None,
) -> Path:
    """Write a voice-like sound to ``path``: a buzzy tone at ``pitch`` Hz (with harmonics and a
    little vibrato) chopped into syllables and phrases. Different pitches tell dubbed tracks
    apart (say 120 Hz for one language, 200 Hz for another)."""
    f0 = f"{pitch:g}*(1+0.05*sin(2*PI*3*t))"
    voice = f"(0.6*sin(2*PI*{f0}*t)+0.3*sin(4*PI*{f0}*t)+0.15*sin(6*PI*{f0}*t))"
    syllables = f"(0.55+0.45*sin(2*PI*{syllables_per_second:g}*t))"
    phrases = "gt(sin(2*PI*0.45*t)+0.6\\,0)"
    source = f"aevalsrc=0.6*{voice}*{syllables}*{phrases}:s={sample_rate}:d={seconds:g}:c=stereo"
    return await _render(source, path, ffmpeg)

"""Real media with FFmpeg: :class:`FFmpegVideoProvider` writes H.264/AAC MP4 files.

Needs the ``ffmpeg`` extra (``pip install 'videoflow-engine[ffmpeg]'``), which brings the FFmpeg
binary of the ``imageio-ffmpeg`` wheel; it is looked up only when a provider is made.
"""

from adapters.ffmpeg.commands import Encoding
from adapters.ffmpeg.probe import InvalidMedia, MediaInfo, aspect_label, probe
from adapters.ffmpeg.process import FFmpegCommand, FFmpegFailed, ffmpeg_exe, run_ffmpeg
from adapters.ffmpeg.provider import DEFAULT_MAX_INPUT_BYTES, FFmpegVideoProvider
from adapters.ffmpeg.subtitles import Cue, parse_srt, to_ass
from adapters.ffmpeg.tools import make_speech_like, make_tone

__all__ = [
    "DEFAULT_MAX_INPUT_BYTES",
    "Cue",
    "Encoding",
    "FFmpegCommand",
    "FFmpegFailed",
    "FFmpegVideoProvider",
    "InvalidMedia",
    "MediaInfo",
    "aspect_label",
    "ffmpeg_exe",
    "make_speech_like",
    "make_tone",
    "parse_srt",
    "probe",
    "run_ffmpeg",
    "to_ass",
]

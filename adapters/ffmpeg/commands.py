"""The FFmpeg command line of each operation, as pure functions of their inputs.

Every output is MP4 (``+faststart``) with one H.264 ``yuv420p`` video stream at a constant
``fps`` and one stereo AAC audio stream exactly as long as the video (silent when there is no
sound): the shape later operations rely on. Files a filter reads (the title, the subtitles) are
named relative to the command's working directory, so no path needs escaping inside a filter.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Literal

from attrs import frozen

from adapters.ffmpeg.probe import MediaInfo
from adapters.ffmpeg.process import FFmpegCommand, input_args

__all__ = [
    "Encoding",
    "ReframeMode",
    "Transition",
    "escape_filter_value",
    "frames_of",
    "generate_command",
    "lip_sync_command",
    "merge_command",
    "reframe_command",
    "subtitles_command",
    "title_layout",
]

ReframeMode = Literal["crop", "pad"]
Transition = Literal["none", "crossfade", "fade"]

#: xfade transition (video) and acrossfade curve (audio) for each merge transition.
TRANSITIONS: dict[str, tuple[str, str]] = {
    "crossfade": ("fade", "tri"),
    "fade": ("fadeblack", "tri"),
}


@frozen
class Encoding:
    """How outputs are encoded. ``veryfast`` x264 keeps jobs quick at a modest size cost."""

    fps: int = 25
    preset: str = "veryfast"
    crf: int = 23
    audio_bitrate: str = "128k"
    sample_rate: int = 48000
    threads: int | None = None

    def video(self) -> list[str]:
        args = ["-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf)]
        args += ["-pix_fmt", "yuv420p"]
        if self.threads is not None:
            args += ["-threads", str(self.threads)]
        return args

    def audio(self) -> list[str]:
        return ["-c:a", "aac", "-b:a", self.audio_bitrate, "-ar", str(self.sample_rate), "-ac", "2"]

    def audio_filter(self) -> str:
        """Filters bringing any audio stream to this encoding's rate and stereo float layout."""
        return f"aresample={self.sample_rate},aformat=sample_fmts=fltp:channel_layouts=stereo"

    def silence(self) -> str:
        return f"anullsrc=r={self.sample_rate}:cl=stereo"


def escape_filter_value(value: str) -> str:
    """``value`` escaped to sit as one option value inside a ``-vf``/``-filter_complex`` graph."""
    for char in "\\':":
        value = value.replace(char, "\\" + char)
    for char in "\\'[],;":
        value = value.replace(char, "\\" + char)
    return value


def frames_of(info: MediaInfo, fps: int) -> int:
    """How many frames ``info``'s video lasts at ``fps`` (at least one)."""
    seconds = info.video_duration if info.video_duration is not None else info.duration
    return max(1, round(seconds * fps))


def seconds_text(seconds: float) -> str:
    return f"{seconds:.6f}"


def _head(exe: str) -> list[str]:
    return [exe, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y"]


def _tail(output: str) -> list[str]:
    return ["-movflags", "+faststart", "-f", "mp4", output]


def title_layout(prompt: str, width: int, height: int) -> tuple[list[str], int]:
    """The lines and font size that fit ``prompt`` inside the middle of a frame.

    The size starts at a ninth of the frame height and shrinks until the wrapped text fits in
    86 % of the width and 70 % of the height; what still does not fit at the smallest size is cut
    with an ellipsis. (DejaVu Sans averages about 0.6 em per character.)
    """
    text = " ".join(prompt.split()) or " "
    max_w, max_h = width * 0.86, height * 0.7
    smallest = max(8, height // 40)
    size = max(smallest, height // 9)
    while True:
        per_line = max(4, int(max_w / (0.6 * size)))
        lines = textwrap.wrap(text, per_line, break_long_words=True) or [text]
        if len(lines) * size * 1.3 <= max_h:
            return lines, size
        if size == smallest:
            keep = max(1, int(max_h / (size * 1.3)))
            cut = lines[:keep]
            cut[-1] = cut[-1][: per_line - 1].rstrip() + "\u2026"
            return cut, size
        size = max(smallest, int(size * 0.9))


def generate_command(
    exe: str,
    enc: Encoding,
    *,
    output: str,
    width: int,
    height: int,
    frames: int,
    title_file: str,
    font_size: int,
    font: str,
    font_file: str | None = None,
    seed: int = 0,
    cwd: str | None = None,
) -> FFmpegCommand:
    """A moving colour gradient with the text of ``title_file`` centred over it, and silence."""
    seconds = seconds_text(frames / enc.fps)
    background = f"gradients=s={width}x{height}:r={enc.fps}:d={seconds}:speed=0.02:seed={seed}"
    face = (
        f"fontfile={escape_filter_value(font_file)}"
        if font_file is not None
        else f"font={escape_filter_value(font)}"
    )
    border = max(1, round(font_size / 16))
    title = (
        f"drawtext=textfile={escape_filter_value(title_file)}:expansion=none:{face}"
        f":fontsize={font_size}:fontcolor=white:borderw={border}:bordercolor=black@0.6"
        f":line_spacing={round(font_size * 0.25)}:text_align=C"
        f":box=1:boxcolor=black@0.25:boxborderw={round(font_size * 0.5)}"
        ":x=(w-text_w)/2:y=(h-text_h)/2"
    )
    args = _head(exe)
    args += ["-f", "lavfi", "-i", background, "-f", "lavfi", "-i", enc.silence()]
    args += ["-filter_complex", f"[0:v]{title},format=yuv420p[v]"]
    args += ["-map", "[v]", "-map", "1:a", "-t", seconds]
    args += enc.video() + enc.audio() + _tail(output)
    return FFmpegCommand(tuple(args), cwd)


def merge_command(
    exe: str,
    enc: Encoding,
    *,
    output: str,
    inputs: Sequence[MediaInfo],
    transition: Transition,
    overlap_frames: int,
    cwd: str | None = None,
) -> FFmpegCommand:
    """``inputs`` one after another, scaled and padded to the first one's frame size.

    With a transition, each join overlaps ``overlap_frames`` frames (``xfade`` for the picture,
    ``acrossfade`` for the sound), so the result is that much shorter per join.
    """
    first = inputs[0]
    if first.width is None or first.height is None:
        raise ValueError("the first input has no frame size")
    width, height = first.width, first.height
    fps = enc.fps
    args = _head(exe)
    for info in inputs:
        args += input_args(info.path)
    graph: list[str] = []
    frames = [frames_of(info, fps) for info in inputs]
    for index, info in enumerate(inputs):
        seconds = seconds_text(frames[index] / fps)
        graph.append(
            f"[{index}:v:0]scale={width}:{height}:force_original_aspect_ratio=decrease"
            f":force_divisible_by=2,pad={width}:{height}:(ow-iw)/2:(oh-ih)/2,setsar=1,"
            f"fps={fps},format=yuv420p,setpts=PTS-STARTPTS[v{index}]"
        )
        # Silence stands in for a missing sound track, so every join has audio on both sides.
        source = f"[{index}:a:0]asetpts=PTS-STARTPTS," if info.has_audio else f"{enc.silence()},"
        graph.append(
            f"{source}{enc.audio_filter()},apad=whole_dur={seconds},atrim=end={seconds}[a{index}]"
        )
    video, audio = "v0", "a0"
    if len(inputs) > 1 and transition == "none":
        pairs = "".join(f"[v{i}][a{i}]" for i in range(len(inputs)))
        graph.append(f"{pairs}concat=n={len(inputs)}:v=1:a=1[vout][aout]")
        video, audio = "vout", "aout"
    elif len(inputs) > 1:
        kind, curve = TRANSITIONS[transition]
        overlap = seconds_text(overlap_frames / fps)
        length = frames[0]
        for index in range(1, len(inputs)):
            offset = seconds_text((length - overlap_frames) / fps)
            graph.append(
                f"[{video}][v{index}]xfade=transition={kind}:duration={overlap}"
                f":offset={offset}[vx{index}]"
            )
            graph.append(
                f"[{audio}][a{index}]acrossfade=d={overlap}:c1={curve}:c2={curve}[ax{index}]"
            )
            video, audio = f"vx{index}", f"ax{index}"
            length += frames[index] - overlap_frames
    args += ["-filter_complex", ";".join(graph), "-map", f"[{video}]", "-map", f"[{audio}]"]
    args += enc.video() + enc.audio() + _tail(output)
    return FFmpegCommand(tuple(args), cwd)


def reframe_command(
    exe: str,
    enc: Encoding,
    *,
    output: str,
    source: MediaInfo,
    width: int,
    height: int,
    mode: ReframeMode = "crop",
    cwd: str | None = None,
) -> FFmpegCommand:
    """``source`` brought to ``width`` x ``height``: centre-cropped to that aspect ratio then
    scaled (``crop``), or scaled to fit and letterboxed in black (``pad``)."""
    if source.width is None or source.height is None:
        raise ValueError("the source has no frame size")
    if mode == "crop":
        in_w, in_h = source.width, source.height
        if in_w * height > in_h * width:  # too wide: keep the full height
            crop_w, crop_h = _even(in_h * width / height), in_h
        else:
            crop_w, crop_h = in_w, _even(in_w * height / width)
        picture = f"crop={min(crop_w, in_w)}:{min(crop_h, in_h)},scale={width}:{height}"
    else:
        picture = (
            f"scale={width}:{height}:force_original_aspect_ratio=decrease:force_divisible_by=2,"
            f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2:color=black"
        )
    return _transform(
        exe, enc, output, source, f"{picture},setsar=1,fps={enc.fps},format=yuv420p", cwd
    )


def subtitles_command(
    exe: str,
    enc: Encoding,
    *,
    output: str,
    source: MediaInfo,
    subtitles_file: str,
    fonts_dir: str | None = None,
    cwd: str | None = None,
) -> FFmpegCommand:
    """``source`` with the ASS/SRT file ``subtitles_file`` burnt in by libass."""
    burn = f"subtitles=filename={escape_filter_value(subtitles_file)}"
    if fonts_dir is not None:
        burn += f":fontsdir={escape_filter_value(fonts_dir)}"
    return _transform(exe, enc, output, source, f"{burn},format=yuv420p", cwd)


def _transform(
    exe: str, enc: Encoding, output: str, source: MediaInfo, filters: str, cwd: str | None
) -> FFmpegCommand:
    """Re-encode ``source``'s picture through ``filters``; keep its AAC sound as it is."""
    args = [*_head(exe), *input_args(source.path)]
    audio_map, audio_args = "0:a:0", ["-c:a", "copy"]
    if not source.has_audio:
        args += ["-f", "lavfi", "-i", enc.silence()]
        audio_map, audio_args = "1:a:0", enc.audio()
        args += ["-t", seconds_text(frames_of(source, enc.fps) / enc.fps)]
    elif source.audio_codec != "aac":
        audio_args = enc.audio()
    args += ["-filter_complex", f"[0:v:0]{filters}[v]", "-map", "[v]", "-map", audio_map]
    args += enc.video() + audio_args + _tail(output)
    return FFmpegCommand(tuple(args), cwd)


def lip_sync_command(
    exe: str,
    enc: Encoding,
    *,
    output: str,
    source: MediaInfo,
    audio: str,
    cwd: str | None = None,
) -> FFmpegCommand:
    """``source``'s picture with ``audio`` as its sound, cut or padded with silence to fit.

    The picture is copied untouched when it is already H.264.
    """
    seconds = seconds_text(frames_of(source, enc.fps) / enc.fps)
    args = [*_head(exe), *input_args(source.path), *input_args(audio)]
    graph = (
        f"[1:a:0]asetpts=PTS-STARTPTS,{enc.audio_filter()},"
        f"apad=whole_dur={seconds},atrim=end={seconds}[a]"
    )
    if source.video_codec == "h264":
        args += ["-filter_complex", graph, "-map", "0:v:0", "-map", "[a]", "-c:v", "copy"]
    else:
        graph = f"[0:v:0]setsar=1,fps={enc.fps},format=yuv420p[v];{graph}"
        args += ["-filter_complex", graph, "-map", "[v]", "-map", "[a]", *enc.video()]
    args += enc.audio() + _tail(output)
    return FFmpegCommand(tuple(args), cwd)


def _even(value: float) -> int:
    return max(2, 2 * round(value / 2))

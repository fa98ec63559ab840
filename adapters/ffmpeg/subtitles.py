"""Subtitle cues: read from the plan's ``cues`` or a SubRip file, written as an ASS script.

The burn-in goes through libass (FFmpeg's ``subtitles`` filter). Writing ASS ourselves, rather
than handing libass the SRT, fixes the font and its size relative to the frame
(``PlayResX``/``PlayResY`` are the video's size), and lets a bad SRT fail with a clear message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from attrs import frozen

from engine.errors import ProviderError

__all__ = ["Cue", "cues_from_params", "parse_srt", "to_ass"]


@frozen
class Cue:
    """One subtitle: shown from ``start`` to ``end`` seconds."""

    start: float
    end: float
    text: str


def cues_from_params(cues: Any) -> list[Cue]:
    """The plan's ``cues`` (``[{"start", "end", "text"}]``) as :class:`Cue` objects."""
    if not isinstance(cues, Sequence) or isinstance(cues, str):
        raise ProviderError("cues must be a list of {start, end, text} objects", retryable=False)
    out: list[Cue] = []
    for index, cue in enumerate(cues):
        problem = ProviderError(
            f"cues[{index}] must be an object with a numeric start and end and a text",
            retryable=False,
        )
        if not isinstance(cue, Mapping):
            raise problem
        try:
            start, end, text = float(cue["start"]), float(cue["end"]), str(cue["text"])
        except (KeyError, TypeError, ValueError):
            raise problem from None
        if not 0 <= start < end:
            raise ProviderError(f"cues[{index}]: need 0 <= start < end", retryable=False)
        out.append(Cue(start, end, text))
    return out


_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{1,2})[,.](\d{1,3})"
_TIMING = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}")
_TAG = re.compile(r"</?([a-zA-Z]+)[^>]*>")
_ASS_OVERRIDE = re.compile(r"\{\\[^}]*\}")


def parse_srt(data: bytes) -> list[Cue]:
    """The cues of a SubRip file (UTF-8, with or without BOM; else Windows-1252).

    HTML-like tags other than ``<i>``, ``<b>``, ``<u>`` and ASS override blocks are dropped.
    Raises :class:`~engine.ProviderError` (not retryable) when no cue is found.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("cp1252", "replace")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    cues: list[Cue] = []
    index = 0
    while index < len(lines):
        match = _TIMING.match(lines[index])
        index += 1
        if match is None:
            continue
        body: list[str] = []
        while index < len(lines) and lines[index].strip():
            if _TIMING.match(lines[index]):
                break
            body.append(lines[index])
            index += 1
        start = _seconds(match.groups()[:4])
        end = _seconds(match.groups()[4:])
        content = "\n".join(body).strip()
        if content and end > start:
            cues.append(Cue(start, end, content))
    if not cues:
        raise ProviderError("the SRT file holds no SubRip cues", retryable=False)
    return cues


def _seconds(parts: Sequence[str | None]) -> float:
    hours, minutes, seconds, millis = parts
    return (
        int(hours or 0) * 3600
        + int(minutes or 0) * 60
        + int(seconds or 0)
        + int((millis or "0").ljust(3, "0")) / 1000
    )


def to_ass(
    cues: Iterable[Cue],
    *,
    width: int,
    height: int,
    font: str = "DejaVu Sans",
    markup: bool = False,
) -> str:
    """An ASS script showing ``cues`` at the bottom centre of a ``width`` x ``height`` frame,
    white on a dark outline, the font size 6 % of the frame height (wrapped to the frame).

    Cue text is shown literally; with ``markup`` (SRT text), ``<i>``/``<b>``/``<u>`` become
    italics/bold/underline.
    """
    size = max(8, round(height * 0.06))
    outline = max(1.0, round(height / 360, 1))
    margin_v = max(4, round(height * 0.05))
    margin_h = max(4, round(width * 0.05))
    font_name = font.replace(",", " ")
    header = [
        "[Script Info]",
        "ScriptType: v4.00+",
        f"PlayResX: {width}",
        f"PlayResY: {height}",
        "WrapStyle: 0",
        "ScaledBorderAndShadow: yes",
        "",
        "[V4+ Styles]",
        "Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, "
        "BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, "
        "BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding",
        f"Style: Default,{font_name},{size},&H00FFFFFF,&H00FFFFFF,&H00000000,&H80000000,"
        f"0,0,0,0,100,100,0,0,1,{outline:g},0,2,{margin_h},{margin_h},{margin_v},1",
        "",
        "[Events]",
        "Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text",
    ]
    events = [
        f"Dialogue: 0,{_ass_time(c.start)},{_ass_time(c.end)},Default,,0,0,0,,"
        f"{_ass_text(c.text, markup)}"
        for c in cues
    ]
    return "\n".join([*header, *events]) + "\n"


def _ass_time(seconds: float) -> str:
    centis = round(seconds * 100)
    hours, rest = divmod(centis, 360000)
    minutes, rest = divmod(rest, 6000)
    secs, cs = divmod(rest, 100)
    return f"{hours}:{minutes:02d}:{secs:02d}.{cs:02d}"


_MARKUP = {"i": "\\i", "b": "\\b", "u": "\\u"}


def _ass_text(text: str, markup: bool) -> str:
    if markup:
        text = _ASS_OVERRIDE.sub("", text)
    # Shown literally: a backslash never starts an ASS escape (\N, \h, ...) and a brace never
    # opens an override block. libass reads "\{" and "\}" as literal braces.
    text = text.replace("\\", "\\\u2060").replace("{", "\\{").replace("}", "\\}")
    if markup:

        def tag(match: re.Match[str]) -> str:
            name = match[1].lower()
            if name not in _MARKUP:
                return ""
            closing = match[0].startswith("</")
            return "{" + _MARKUP[name] + ("0" if closing else "1") + "}"

        text = _TAG.sub(tag, text)
    lines = [" ".join(line.split()) for line in text.strip().split("\n")]
    return "\\N".join(line for line in lines if line)

"""The catalogue of operations: every job type, its parameters, their defaults and limits.

The one place that says what a job may be. The plan checks (:mod:`engine.checks`), the DSL
(:mod:`engine.dsl`), the scheduler (which jobs take the base's video), the FFmpeg provider and the
OpenAPI document (:mod:`contrib.openapi`) all read it, so a new operation or a changed limit is
written once.

Each :class:`OperationSpec` has a wire ``type`` (``generate``), the DSL function that builds it
(``generate_video``), a ``kind`` that fixes its inputs (a ``source`` takes none, ``merge`` two or
more, a ``transform`` exactly one: its clip, or the base execution's video), and its parameters.
Each :class:`ParamSpec` checks a value and yields ``(field, message)`` problems; ``field`` is the
parameter's wire name, or a path below it (``cues[2].end``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from attrs import frozen

OperationKind = Literal["source", "merge", "transform"]
ParamProblems = Iterator[tuple[str, str]]

MAX_JOBS = 1000
MAX_ID_LENGTH = 64
MAX_PROMPT_LENGTH = 4000
MAX_DURATION = 600
MAX_TRANSITION_DURATION = 10
MAX_ASPECT_SIDE = 10000
TRANSITIONS: tuple[str, ...] = ("none", "crossfade", "fade")

_NO_DEFAULT: Any = object()
_ASPECT = re.compile(r"([0-9]{1,5}):([0-9]{1,5})")
_LANGUAGE = re.compile(
    r"(?:[A-Za-z]{2,3}(?:-[A-Za-z]{3}){0,3}|[A-Za-z]{4,8})"
    r"(?:-[A-Za-z]{4})?"
    r"(?:-(?:[A-Za-z]{2}|[0-9]{3}))?"
    r"(?:-(?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*"
    r"(?:-[0-9A-WY-Za-wy-z](?:-[A-Za-z0-9]{2,8})+)*"
    r"(?:-[Xx](?:-[A-Za-z0-9]{1,8})+)?"
)
_CUE_KEYS = ("start", "end", "text")


@frozen
class ParamSpec:
    """One parameter of an operation: its wire name, whether it is required, its default."""

    name: str
    check: Callable[[Any], ParamProblems]
    schema: Mapping[str, Any]
    required: bool = False
    default: Any = _NO_DEFAULT
    #: Said after "is required", e.g. "(such as '9:16')".
    hint: str = ""
    #: A URL the plan names for the provider to read (servers restrict its scheme).
    url: bool = False

    @property
    def has_default(self) -> bool:
        return self.default is not _NO_DEFAULT


@frozen
class OperationSpec:
    """One job type: its wire name, its DSL function, what inputs it takes, its parameters."""

    type: str
    function: str
    kind: OperationKind
    params: tuple[ParamSpec, ...]
    summary: str

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def defaults(self) -> Mapping[str, Any]:
        return {p.name: p.default for p in self.params if p.has_default}

    def check_params(self, params: Mapping[Any, Any]) -> ParamProblems:
        """``(field, message)`` for each problem with these (known) parameters' values."""
        for spec in self.params:
            if spec.name in params:
                yield from spec.check(params[spec.name])
            elif spec.required:
                yield spec.name, f"is required{' ' + spec.hint if spec.hint else ''}"


# --- value checks ------------------------------------------------------------------------------


def parse_aspect_ratio(value: str) -> tuple[int, int]:
    """``"16:9"`` -> ``(16, 9)``; raise ``ValueError`` unless it is ``W:H`` of positive integers."""
    match = _ASPECT.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"aspect ratio must be 'W:H', got {show(value)}")
    width, height = int(match[1]), int(match[2])
    if not (0 < width <= MAX_ASPECT_SIDE and 0 < height <= MAX_ASPECT_SIDE):
        raise ValueError(f"aspect ratio sides must be between 1 and {MAX_ASPECT_SIDE}")
    return width, height


def is_language_tag(value: Any) -> bool:
    """Whether ``value`` is a well-formed BCP 47 language tag (``fr``, ``en-US``, ``zh-Hant``)."""
    return isinstance(value, str) and _LANGUAGE.fullmatch(value) is not None


def is_number(value: Any) -> bool:
    """A real number: an int or a finite float, not a bool."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _in_range(value: Any, low: float, high: float) -> bool:
    """``low < value <= high`` for a real number (not a bool, NaN or infinity)."""
    return is_number(value) and low < value <= high


def _prompt(value: Any) -> ParamProblems:
    if not isinstance(value, str) or not value.strip():
        yield "prompt", "must be a non-empty string"
    elif len(value) > MAX_PROMPT_LENGTH:
        yield "prompt", f"must be at most {MAX_PROMPT_LENGTH:,} characters, got {len(value):,}"


def _seconds(name: str, maximum: float) -> Callable[[Any], ParamProblems]:
    def check(value: Any) -> ParamProblems:
        if not _in_range(value, 0, maximum):
            yield name, f"must be a number of seconds, more than 0 and at most {maximum}"

    return check


def _aspect_ratio(value: Any) -> ParamProblems:
    try:
        parse_aspect_ratio(value)
    except ValueError as exc:
        yield "aspectRatio", str(exc)


def _transition(value: Any) -> ParamProblems:
    if not isinstance(value, str) or value not in TRANSITIONS:
        yield "transition", f"must be one of {', '.join(TRANSITIONS)}; got {show(value)}"


def _url(name: str) -> Callable[[Any], ParamProblems]:
    message = "must be an http(s):// URL with a host or a file:// URL with a path"

    def check(value: Any) -> ParamProblems:
        if not isinstance(value, str):
            yield name, message
            return
        try:
            parts = urlsplit(value)
            host = parts.hostname
        except ValueError:
            yield name, message
            return
        scheme = parts.scheme.lower()
        ok = (scheme in ("http", "https") and bool(host)) or (scheme == "file" and bool(parts.path))
        if not ok or any(ch.isspace() for ch in value):
            yield name, f"{message}, got {show(value)}"

    return check


def _language(value: Any) -> ParamProblems:
    if not is_language_tag(value):
        yield "language", f"must be a BCP 47 tag such as 'fr' or 'en-US', got {show(value)}"


def _cues(cues: Any) -> ParamProblems:
    if not isinstance(cues, list | tuple):
        yield "cues", "must be a list of {start, end, text} objects"
        return
    for index, cue in enumerate(cues):
        where = f"cues[{index}]"
        if not isinstance(cue, Mapping):
            yield where, "must be an object with start, end and text"
            continue
        for key in cue:
            if key not in _CUE_KEYS:
                name = key if isinstance(key, str) else show(key)
                yield f"{where}.{name}", "unknown cue field; a cue has start, end, text"
        start: Any = cue.get("start")
        end: Any = cue.get("end")
        text: Any = cue.get("text")
        start_ok = is_number(start) and start >= 0
        if not start_ok:
            yield f"{where}.start", "must be a number of seconds, at least 0"
        if not is_number(end) or end <= 0:
            yield f"{where}.end", "must be a number of seconds, more than start"
        elif start_ok and end <= start:
            yield f"{where}.end", "must be more than start"
        if not isinstance(text, str) or not text.strip():
            yield f"{where}.text", "must be a non-empty string"


def show(value: Any) -> str:
    """A short, safe rendering of a value for a message (never raises)."""
    if isinstance(value, str):
        return repr(value if len(value) <= 80 else value[:77] + "...")
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if abs(value) < 10**18 else "a very large integer"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


# --- the catalogue -----------------------------------------------------------------------------


def _seconds_schema(maximum: float) -> dict[str, Any]:
    return {"type": "number", "exclusiveMinimum": 0, "maximum": maximum}


_ASPECT_SCHEMA = {
    "type": "string",
    "pattern": "^[0-9]{1,5}:[0-9]{1,5}$",
    "description": f"W:H, each side 1 to {MAX_ASPECT_SIDE}.",
    "examples": ["16:9"],
}
_URL_SCHEMA = {"type": "string", "description": "An http(s):// URL with a host, or a file:// URL."}
#: The JSON schema of one subtitle cue (``{"$ref": "#/components/schemas/Cue"}`` in OpenAPI).
CUE_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "required": ["start", "end", "text"],
    "additionalProperties": False,
    "properties": {
        "start": {"type": "number", "minimum": 0},
        "end": {"type": "number", "exclusiveMinimum": 0},
        "text": {"type": "string", "minLength": 1},
    },
}

OPERATIONS: Mapping[str, OperationSpec] = {
    spec.type: spec
    for spec in (
        OperationSpec(
            "generate",
            "generate_video",
            "source",
            (
                ParamSpec(
                    "prompt",
                    _prompt,
                    {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_LENGTH},
                    required=True,
                ),
                ParamSpec(
                    "duration",
                    _seconds("duration", MAX_DURATION),
                    _seconds_schema(MAX_DURATION),
                    default=5,
                ),
                ParamSpec("aspectRatio", _aspect_ratio, _ASPECT_SCHEMA, default="16:9"),
            ),
            "Generate a clip from a text prompt.",
        ),
        OperationSpec(
            "merge",
            "merge",
            "merge",
            (
                ParamSpec("transition", _transition, {"enum": list(TRANSITIONS)}, default="none"),
                ParamSpec(
                    "transitionDuration",
                    _seconds("transitionDuration", MAX_TRANSITION_DURATION),
                    _seconds_schema(MAX_TRANSITION_DURATION),
                    default=1.0,
                ),
            ),
            "Join two or more clips, in dependsOn order, optionally with a transition.",
        ),
        OperationSpec(
            "lipSync",
            "lip_sync",
            "transform",
            (ParamSpec("audioUrl", _url("audioUrl"), _URL_SCHEMA, required=True, url=True),),
            "Lip-sync a clip to an audio track.",
        ),
        OperationSpec(
            "addSubtitles",
            "add_subtitles",
            "transform",
            (
                ParamSpec(
                    "language",
                    _language,
                    {"type": "string", "description": "A BCP 47 tag such as 'fr'."},
                    required=True,
                    hint="(a BCP 47 tag such as 'fr' or 'en-US')",
                ),
                ParamSpec(
                    "cues",
                    _cues,
                    {"type": "array", "items": {"$ref": "#/components/schemas/Cue"}},
                ),
                ParamSpec("srtUrl", _url("srtUrl"), _URL_SCHEMA, url=True),
            ),
            "Burn subtitles into a clip: cues given inline, or an SRT file.",
        ),
        OperationSpec(
            "reframe",
            "reframe",
            "transform",
            (
                ParamSpec(
                    "aspectRatio",
                    _aspect_ratio,
                    _ASPECT_SCHEMA,
                    required=True,
                    hint="(such as '9:16')",
                ),
            ),
            "Change a clip's aspect ratio.",
        ),
    )
}

#: The wire types of jobs, sources first.
JOB_TYPES: tuple[str, ...] = tuple(OPERATIONS)
#: Transforms take exactly one input clip (or, as a root job, the base execution's video).
TRANSFORMS: frozenset[str] = frozenset(t for t, s in OPERATIONS.items() if s.kind == "transform")
#: Each type's parameter names.
PARAMS: Mapping[str, tuple[str, ...]] = {t: s.param_names for t, s in OPERATIONS.items()}
#: The defaults a parsed plan fills in for absent parameters.
DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    t: s.defaults for t, s in OPERATIONS.items() if s.defaults
}

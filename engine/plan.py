"""Execution plans: the jobs of one execution, their wire format and their validation.

An :class:`ExecutionPlan` is what ``POST /api/execute`` carries and what
:meth:`engine.dsl.Pipeline.plan` builds. :meth:`ExecutionPlan.from_json` and
:meth:`ExecutionPlan.check` report every problem at once, each naming its job and wire field.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import networkx as nx
from attrs import frozen

from engine.errors import PlanError, Problem

#: The wire types of jobs, sources first.
JOB_TYPES: tuple[str, ...] = ("generate", "merge", "lipSync", "addSubtitles", "reframe")
#: Transforms take exactly one input clip.
TRANSFORMS: frozenset[str] = frozenset({"lipSync", "addSubtitles", "reframe"})
MAX_JOBS = 1000
MAX_ID_LENGTH = 64
MAX_PROMPT_LENGTH = 4000
MAX_DURATION = 600
MAX_TRANSITION_DURATION = 10
MAX_ASPECT_SIDE = 10000
TRANSITIONS: tuple[str, ...] = ("none", "crossfade", "fade")

PARAMS: Mapping[str, tuple[str, ...]] = {
    "generate": ("prompt", "duration", "aspectRatio"),
    "merge": ("transition", "transitionDuration"),
    "lipSync": ("audioUrl",),
    "addSubtitles": ("language", "cues", "srtUrl"),
    "reframe": ("aspectRatio",),
}
DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "generate": {"duration": 5, "aspectRatio": "16:9"},
    "merge": {"transition": "none", "transitionDuration": 1.0},
}

_MISSING: Any = object()
_PLAN_KEYS = ("jobs", "baseExecutionId")
_JOB_KEYS = ("id", "type", "params", "dependsOn", "output")
_CUE_KEYS = ("start", "end", "text")
_ID = re.compile(r"[A-Za-z0-9_.-]+")
_ASPECT = re.compile(r"([0-9]{1,5}):([0-9]{1,5})")
_SNAKE = re.compile(r"_([a-z0-9])")
_LANGUAGE = re.compile(
    r"(?:[A-Za-z]{2,3}(?:-[A-Za-z]{3}){0,3}|[A-Za-z]{4,8})"
    r"(?:-[A-Za-z]{4})?"
    r"(?:-(?:[A-Za-z]{2}|[0-9]{3}))?"
    r"(?:-(?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*"
    r"(?:-[0-9A-WY-Za-wy-z](?:-[A-Za-z0-9]{2,8})+)*"
    r"(?:-[Xx](?:-[A-Za-z0-9]{1,8})+)?"
)


@frozen
class JobSpec:
    """One job of a plan. Its output on the wire is always ``"$" + id``."""

    id: str
    type: str
    params: Mapping[str, Any]
    depends_on: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The job as the seed's request body writes it."""
        out: dict[str, Any] = {"id": self.id, "type": self.type, "params": dict(self.params)}
        if self.depends_on:
            out["dependsOn"] = list(self.depends_on)
        out["output"] = "$" + self.id
        return out


@frozen
class ExecutionPlan:
    """The jobs of one execution, optionally continuing from a base execution's final video."""

    jobs: tuple[JobSpec, ...]
    base_execution_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The seed's request body: ``{"jobs": [...]}`` plus ``baseExecutionId`` when set."""
        out: dict[str, Any] = {"jobs": [job.to_json() for job in self.jobs]}
        if self.base_execution_id is not None:
            out["baseExecutionId"] = self.base_execution_id
        return out

    @classmethod
    def from_json(cls, obj: Any, *, has_base: bool | None = None) -> ExecutionPlan:
        """Parse and validate a request body; raise :class:`PlanError` naming every problem.

        ``has_base`` (whether the plan continues from a base execution) defaults to whether
        ``baseExecutionId`` is present. Absent ``generate`` and ``merge`` params take their
        defaults in the returned plan.
        """
        if not isinstance(obj, Mapping):
            raise PlanError([Problem(None, "plan", "a plan must be an object with a 'jobs' list")])
        problems: list[Problem] = []
        for key in obj:
            if key not in _PLAN_KEYS:
                problems.append(_unknown_key(None, _field_name(key), key, _PLAN_KEYS, "field"))
        base = obj.get("baseExecutionId")
        if "baseExecutionId" in obj and not (isinstance(base, str) and base):
            problems.append(Problem(None, "baseExecutionId", "must be a non-empty string"))
        if has_base is None:
            has_base = "baseExecutionId" in obj
        if "jobs" not in obj:
            problems.append(Problem(None, "jobs", "is required: a list of jobs"))
            raise PlanError(problems)
        raw_jobs = obj["jobs"]
        if not isinstance(raw_jobs, list | tuple):
            problems.append(Problem(None, "jobs", "must be a list of jobs"))
            raise PlanError(problems)
        if len(raw_jobs) > MAX_JOBS:
            problems.append(_too_many(len(raw_jobs)))
            raise PlanError(problems)
        drafts: list[_Draft] = []
        for index, item in enumerate(raw_jobs):
            if isinstance(item, Mapping):
                drafts.append(_Draft.from_json(index, item, problems))
            else:
                problems.append(Problem(None, f"jobs[{index}]", "each job must be an object"))
        problems.extend(_check(drafts, has_base=has_base, complete=len(drafts) == len(raw_jobs)))
        if problems:
            raise PlanError(problems)
        return cls(
            tuple(draft.to_spec() for draft in drafts),
            base if isinstance(base, str) else None,
        )

    def validate(self, *, has_base: bool) -> list[Problem]:
        """Every problem with this plan; empty when it is valid.

        ``has_base`` says whether it continues from a base execution, which lets root jobs be
        transforms of the base's final video.
        """
        drafts = [
            _Draft(index, job.id, job.type, job.params, job.depends_on)
            for index, job in enumerate(self.jobs)
        ]
        return _check(drafts, has_base=has_base, complete=True)

    def check(self, *, has_base: bool) -> None:
        """Raise :class:`PlanError` listing every problem, if there is any."""
        problems = self.validate(has_base=has_base)
        if problems:
            raise PlanError(problems)

    @property
    def final_job(self) -> JobSpec:
        """The one job nothing depends on; its video is the execution's result."""
        needed = {dep for job in self.jobs for dep in job.depends_on}
        finals = [job for job in self.jobs if job.id not in needed]
        if len(finals) != 1:
            raise PlanError(_finals_problem([job.id for job in finals]))
        return finals[0]

    @property
    def roots(self) -> tuple[JobSpec, ...]:
        """The jobs that depend on no other job of this plan."""
        return tuple(job for job in self.jobs if not job.depends_on)

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the canonical JSON of :meth:`to_json`, to spot a repeated request."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def parse_aspect_ratio(value: str) -> tuple[int, int]:
    """``"16:9"`` -> ``(16, 9)``; raise ``ValueError`` unless it is ``W:H`` of positive integers."""
    match = _ASPECT.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"aspect ratio must be 'W:H', got {_show(value)}")
    width, height = int(match[1]), int(match[2])
    if not (0 < width <= MAX_ASPECT_SIDE and 0 < height <= MAX_ASPECT_SIDE):
        raise ValueError(f"aspect ratio sides must be between 1 and {MAX_ASPECT_SIDE}")
    return width, height


# --- validation ------------------------------------------------------------------------------


class _Draft:
    """A job as given, before its values are known to have the right types."""

    def __init__(self, index: int, id: Any, type: Any, params: Any, depends_on: Any) -> None:
        self.index = index
        self.id = id
        self.type = type
        self.params = params
        self.depends_on = depends_on
        self.valid_id = isinstance(id, str) and bool(id)

    @classmethod
    def from_json(cls, index: int, obj: Mapping[Any, Any], problems: list[Problem]) -> _Draft:
        draft = cls(
            index,
            obj.get("id", _MISSING),
            obj.get("type", _MISSING),
            obj.get("params", {}),
            obj.get("dependsOn", ()),
        )
        for key in obj:
            if key not in _JOB_KEYS:
                problems.append(
                    _unknown_key(
                        draft.job_id, draft.field(_field_name(key)), key, _JOB_KEYS, "field"
                    )
                )
        output = obj.get("output")
        if "output" in obj and draft.valid_id and output != "$" + draft.id:
            message = f"must be {'$' + draft.id!r} (the job's id after '$'), got {_show(output)}"
            problems.append(Problem(draft.job_id, "output", message))
        return draft

    @property
    def job_id(self) -> str | None:
        return self.id if self.valid_id else None

    def field(self, name: str) -> str:
        return name if self.valid_id else f"jobs[{self.index}].{name}"

    def problem(self, field: str, message: str) -> Problem:
        return Problem(self.job_id, self.field(field), message)

    def to_spec(self) -> JobSpec:
        params = copy.deepcopy(dict(self.params))
        for name, value in DEFAULTS.get(self.type, {}).items():
            params.setdefault(name, value)
        return JobSpec(self.id, self.type, params, tuple(self.depends_on))


def _check(drafts: list[_Draft], *, has_base: bool, complete: bool) -> list[Problem]:
    """Every problem with these jobs. ``complete`` is false when some jobs could not be read."""
    if len(drafts) > MAX_JOBS:
        return [_too_many(len(drafts))]
    if not drafts:
        return [Problem(None, "jobs", "a plan needs at least one job")] if complete else []
    problems: list[Problem] = []
    positions: dict[str, list[int]] = {}
    for draft in drafts:
        if draft.valid_id:
            positions.setdefault(draft.id, []).append(draft.index)
    deps_ok = True
    graph = nx.DiGraph()
    graph.add_nodes_from(positions)
    for draft in drafts:
        problems.extend(_check_id(draft))
        problems.extend(_check_type_and_params(draft))
        deps = _check_depends_on(draft, positions, problems)
        if deps is None:
            deps_ok = False
            continue
        if any(dep not in positions or dep == draft.id for dep in deps):
            deps_ok = False
        if draft.valid_id:
            graph.add_edges_from((draft.id, dep) for dep in deps if dep in positions)
        if draft.type in JOB_TYPES:
            problems.extend(_check_arity(draft, len(deps), has_base))
    for job_id, where in positions.items():
        if len(where) > 1:
            listed = ", ".join(f"jobs[{i}]" for i in where)
            problems.append(Problem(job_id, "id", f"duplicate job id, used by {listed}"))
    cycles = _cycles(graph, positions)
    problems.extend(cycles)
    readable = complete and len(positions) == len(drafts)
    if deps_ok and readable and not cycles:
        needed = {dep for _, dep in graph.edges}
        finals = [d.id for d in drafts if d.id not in needed]
        if len(finals) != 1:
            problems.extend(_finals_problem(finals))
    return problems


def _check_id(draft: _Draft) -> Iterator[Problem]:
    job_id = draft.id
    if job_id is _MISSING:
        yield draft.problem("id", "is required")
    elif not isinstance(job_id, str) or not job_id:
        yield draft.problem("id", "must be a non-empty string")
    elif len(job_id) > MAX_ID_LENGTH:
        yield draft.problem("id", f"must be at most {MAX_ID_LENGTH} characters")
    elif not _ID.fullmatch(job_id):
        yield draft.problem("id", "may hold only letters, digits, '_', '.' and '-'")


def _check_depends_on(
    draft: _Draft, positions: Mapping[str, list[int]], problems: list[Problem]
) -> list[str] | None:
    """The job's dependencies, or ``None`` when they cannot be read."""
    deps = draft.depends_on
    if not isinstance(deps, list | tuple):
        problems.append(draft.problem("dependsOn", "must be a list of job ids"))
        return None
    if not all(isinstance(dep, str) for dep in deps):
        problems.append(draft.problem("dependsOn", "must be a list of job ids (strings)"))
        return None
    seen: set[str] = set()
    for dep in deps:
        if dep in seen:
            problems.append(draft.problem("dependsOn", f"lists {_show(dep)} more than once"))
            continue
        seen.add(dep)
        if draft.valid_id and dep == draft.id:
            problems.append(draft.problem("dependsOn", "a job cannot depend on itself"))
        elif dep not in positions:
            hint = _suggest(dep, list(positions))
            problems.append(draft.problem("dependsOn", f"names unknown job {_show(dep)}{hint}"))
    return list(deps)


def _check_arity(draft: _Draft, inputs: int, has_base: bool) -> Iterator[Problem]:
    kind = draft.type
    if kind == "generate":
        if inputs:
            yield draft.problem(
                "dependsOn", "a generate job takes no input; dependsOn must be empty"
            )
    elif kind == "merge":
        if inputs < 2:
            message = f"a merge job needs at least two inputs in dependsOn, got {inputs}"
            if has_base and inputs == 0:
                message += " (merging the base execution's video is not supported)"
            yield draft.problem("dependsOn", message)
    elif inputs > 1:
        yield draft.problem(
            "dependsOn", f"a {kind} job takes exactly one input in dependsOn, got {inputs}"
        )
    elif inputs == 0 and not has_base:
        yield draft.problem(
            "dependsOn",
            f"a {kind} job needs exactly one input in dependsOn "
            "(with no input it is valid only when the plan has a baseExecutionId)",
        )


def _check_type_and_params(draft: _Draft) -> Iterator[Problem]:
    kind = draft.type
    if kind is _MISSING:
        yield draft.problem("type", _known_types("is required"))
        return
    if kind not in JOB_TYPES:
        yield draft.problem("type", _known_types(f"unknown job type {_show(kind)}"))
        return
    params = draft.params
    if not isinstance(params, Mapping):
        yield draft.problem("params", "must be an object")
        return
    allowed = PARAMS[kind]
    for key in params:
        if key not in allowed:
            yield _unknown_key(
                draft.job_id, draft.field(f"params.{key}"), key, allowed, "parameter"
            )
    for field, message in _PARAM_CHECKS[kind](params):
        yield draft.problem(f"params.{field}", message)


ParamProblems = Iterator[tuple[str, str]]


def _generate_params(params: Mapping[Any, Any]) -> ParamProblems:
    if "prompt" not in params:
        yield "prompt", "is required"
    else:
        prompt = params["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            yield "prompt", "must be a non-empty string"
        elif len(prompt) > MAX_PROMPT_LENGTH:
            yield "prompt", f"must be at most {MAX_PROMPT_LENGTH:,} characters, got {len(prompt):,}"
    if "duration" in params and not _in_range(params["duration"], 0, MAX_DURATION):
        yield "duration", f"must be a number of seconds, more than 0 and at most {MAX_DURATION}"
    if "aspectRatio" in params:
        yield from _aspect_ratio(params["aspectRatio"])


def _merge_params(params: Mapping[Any, Any]) -> ParamProblems:
    transition = params.get("transition", "none")
    if not isinstance(transition, str) or transition not in TRANSITIONS:
        yield "transition", f"must be one of {', '.join(TRANSITIONS)}; got {_show(transition)}"
    if "transitionDuration" in params and not _in_range(
        params["transitionDuration"], 0, MAX_TRANSITION_DURATION
    ):
        yield (
            "transitionDuration",
            f"must be a number of seconds, more than 0 and at most {MAX_TRANSITION_DURATION}",
        )


def _lip_sync_params(params: Mapping[Any, Any]) -> ParamProblems:
    if "audioUrl" not in params:
        yield "audioUrl", "is required"
    else:
        yield from _url("audioUrl", params["audioUrl"])


def _subtitles_params(params: Mapping[Any, Any]) -> ParamProblems:
    if "language" not in params:
        yield "language", "is required (a BCP 47 tag such as 'fr' or 'en-US')"
    else:
        language = params["language"]
        if not isinstance(language, str) or not _LANGUAGE.fullmatch(language):
            yield "language", f"must be a BCP 47 tag such as 'fr' or 'en-US', got {_show(language)}"
    if "cues" in params:
        yield from _cues(params["cues"])
    if "srtUrl" in params:
        yield from _url("srtUrl", params["srtUrl"])


def _reframe_params(params: Mapping[Any, Any]) -> ParamProblems:
    if "aspectRatio" not in params:
        yield "aspectRatio", "is required (such as '9:16')"
    else:
        yield from _aspect_ratio(params["aspectRatio"])


_PARAM_CHECKS = {
    "generate": _generate_params,
    "merge": _merge_params,
    "lipSync": _lip_sync_params,
    "addSubtitles": _subtitles_params,
    "reframe": _reframe_params,
}


def _aspect_ratio(value: Any) -> ParamProblems:
    try:
        parse_aspect_ratio(value)
    except ValueError as exc:
        yield "aspectRatio", str(exc)


def _url(field: str, value: Any) -> ParamProblems:
    message = "must be an http(s):// URL with a host or a file:// URL with a path"
    if not isinstance(value, str):
        yield field, message
        return
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        yield field, message
        return
    scheme = parts.scheme.lower()
    ok = (scheme in ("http", "https") and bool(host)) or (scheme == "file" and bool(parts.path))
    if not ok or any(ch.isspace() for ch in value):
        yield field, f"{message}, got {_show(value)}"


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
                yield f"{where}.{_field_name(key)}", "unknown cue field; a cue has start, end, text"
        start: Any = cue.get("start")
        end: Any = cue.get("end")
        text: Any = cue.get("text")
        start_ok = _is_number(start) and start >= 0
        if not start_ok:
            yield f"{where}.start", "must be a number of seconds, at least 0"
        if not _is_number(end) or end <= 0:
            yield f"{where}.end", "must be a number of seconds, more than start"
        elif start_ok and end <= start:
            yield f"{where}.end", "must be more than start"
        if not isinstance(text, str) or not text.strip():
            yield f"{where}.text", "must be a non-empty string"


def _cycles(graph: Any, positions: Mapping[str, list[int]]) -> list[Problem]:
    """One problem per dependency cycle (at least one per strongly connected component)."""

    def position(node: str) -> int:
        return positions[node][0]

    problems = []
    components = [c for c in nx.strongly_connected_components(graph) if len(c) > 1]
    for component in sorted(components, key=lambda c: min(map(position, c))):
        start = min(component, key=position)
        cycle = [edge[0] for edge in nx.find_cycle(graph.subgraph(component), source=start)]
        first = min(range(len(cycle)), key=lambda i: position(cycle[i]))
        cycle = cycle[first:] + cycle[:first]
        path = " -> ".join([*cycle, cycle[0]])
        problems.append(Problem(cycle[0], "dependsOn", f"cycle: {path}"))
    return problems


def _finals_problem(finals: list[str]) -> list[Problem]:
    if not finals:
        return [Problem(None, "jobs", "no final job: every job is an input of another")]
    listed = ", ".join(finals)
    message = (
        f"a plan must end in exactly one final job (one no other job depends on); "
        f"found {len(finals)}: {listed}. Join them with a merge job"
    )
    return [Problem(None, "jobs", message)]


def _too_many(count: int) -> Problem:
    return Problem(None, "jobs", f"too many jobs: {count:,} (at most {MAX_JOBS:,})")


# --- helpers -----------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _in_range(value: Any, low: float, high: float) -> bool:
    """``low < value <= high`` for a real number (not a bool, NaN or infinity)."""
    return _is_number(value) and low < value <= high


def _known_types(message: str) -> str:
    return f"{message}; known types: {', '.join(JOB_TYPES)}"


def _unknown_key(
    job_id: str | None, field: str, key: Any, allowed: tuple[str, ...], noun: str
) -> Problem:
    return Problem(job_id, field, f"unknown {noun} {_show(key)}{_suggest(key, allowed)}")


def _suggest(name: Any, choices: list[str] | tuple[str, ...]) -> str:
    if not isinstance(name, str):
        return ""
    camel = _SNAKE.sub(lambda m: m[1].upper(), name)
    if camel != name and camel in choices:
        return f" (did you mean {camel!r}?)"
    close = difflib.get_close_matches(name, choices, n=1) if len(choices) <= 100 else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def _field_name(key: Any) -> str:
    return key if isinstance(key, str) else _show(key)


def _show(value: Any) -> str:
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

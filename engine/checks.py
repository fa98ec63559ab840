"""Plan checks: every problem with a plan's jobs, each naming its job and wire field.

What a job's type and parameters may be comes from :mod:`engine.catalogue`; this module checks
the plan's structure: ids, ``dependsOn`` (unknown, repeated, self, cycles spelled out), each
operation's number of inputs, and that exactly one final job remains. It works on plain
``(id, type, params, dependsOn)`` values, so both a request body and a built
:class:`~engine.plan.ExecutionPlan` are checked the same way.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import networkx as nx

from engine.catalogue import DEFAULTS, JOB_TYPES, MAX_ID_LENGTH, MAX_JOBS, OPERATIONS, show
from engine.errors import PlanError, Problem

_show = show
_MISSING: Any = object()
_PLAN_KEYS = ("jobs", "baseExecutionId")
_JOB_KEYS = ("id", "type", "params", "dependsOn", "output")
_ID = re.compile(r"[A-Za-z0-9_.-]+")
_SNAKE = re.compile(r"_([a-z0-9])")

#: A parsed job: ``(id, type, params with defaults filled in, dependsOn)``.
JobFields = tuple[str, str, dict[str, Any], tuple[str, ...]]


def parse_plan(obj: Any, *, has_base: bool | None) -> tuple[list[JobFields], str | None]:
    """Read a request body's jobs and ``baseExecutionId``; raise ``PlanError`` naming every
    problem. ``has_base`` defaults to whether ``baseExecutionId`` is present."""
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
    return [draft.fields() for draft in drafts], base if isinstance(base, str) else None


def check_jobs(
    jobs: Sequence[tuple[str, str, Mapping[str, Any], Sequence[str]]], *, has_base: bool
) -> list[Problem]:
    """Every problem with these jobs; empty when they make a valid plan."""
    drafts = [
        _Draft(index, job_id, kind, params, depends_on)
        for index, (job_id, kind, params, depends_on) in enumerate(jobs)
    ]
    return _check(drafts, has_base=has_base, complete=True)


def finals_problem(finals: list[str]) -> list[Problem]:
    """The problem of a plan whose final jobs (ones nothing depends on) are ``finals``."""
    return _finals_problem(finals)


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

    def fields(self) -> JobFields:
        params = copy.deepcopy(dict(self.params))
        for name, value in DEFAULTS.get(self.type, {}).items():
            params.setdefault(name, value)
        return self.id, self.type, params, tuple(self.depends_on)


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
    """The number of inputs the job's kind of operation takes (see :mod:`engine.catalogue`)."""
    kind = draft.type
    shape = OPERATIONS[kind].kind
    if shape == "source":
        if inputs:
            yield draft.problem(
                "dependsOn", f"a {kind} job takes no input; dependsOn must be empty"
            )
    elif shape == "merge":
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
    spec = OPERATIONS[kind]
    allowed = spec.param_names
    for key in params:
        if key not in allowed:
            yield _unknown_key(
                draft.job_id, draft.field(f"params.{key}"), key, allowed, "parameter"
            )
    for field, message in spec.check_params(params):
        yield draft.problem(f"params.{field}", message)


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


def _known_types(message: str) -> str:
    return f"{message}; known types: {', '.join(JOB_TYPES)}"


def _unknown_key(
    job_id: str | None, field: str, key: Any, allowed: tuple[str, ...], noun: str
) -> Problem:
    return Problem(job_id, field, f"unknown {noun} {_show(key)}{_suggest(key, allowed)}")


def suggestion(name: Any, choices: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to ``name`` (or its camelCase), or ``""``."""
    return _suggest(name, choices)


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

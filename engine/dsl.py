"""The pipeline DSL: operations, :func:`compose` and :class:`Pipeline`.

Each operation function checks its arguments when it is called, as the HTTP API checks a request:
an argument it does not take is an :class:`~engine.errors.ArgumentError` (also a ``TypeError``)
with a "did you mean"; a value out of :mod:`engine.catalogue`'s range is an
:class:`~engine.errors.OperationError` (a ``PlanError``) naming the parameter.

A pipeline is a sequence of steps. A source (:func:`generate_video`) adds a clip; :func:`merge`
joins every clip not yet joined; a transform (:func:`lip_sync`, :func:`add_subtitles`,
:func:`reframe`) applies to the single current clip; a nested pipeline contributes its final clip.
:meth:`Pipeline.plan` turns the steps into an :class:`~engine.plan.ExecutionPlan`.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, ParamSpec

from attrs import define, field, frozen

from engine.catalogue import OPERATIONS, TRANSFORMS
from engine.checks import suggestion
from engine.errors import ArgumentError, OperationError, PlanError, Problem
from engine.execute import execute_pipeline
from engine.handle import PipelineExecution
from engine.models import Progress
from engine.plan import ExecutionPlan, JobSpec

Transition = Literal["none", "crossfade", "fade"]
#: Called with each :class:`~engine.models.Progress`; may be a plain or an async callable.
ProgressCallback = Callable[[Progress], object]

_NAMES = {kind: spec.function for kind, spec in OPERATIONS.items()}
_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")
_P = ParamSpec("_P")


@frozen
class Operation:
    """One step of a pipeline: a job type and its wire (camelCase) params."""

    type: str
    params: Mapping[str, Any]


def _operation(wire_type: str) -> Callable[[Callable[_P, Operation]], Callable[_P, Operation]]:
    """Make an operation function check its call: its arguments against its signature, then
    the operation's params against the catalogue's entry for ``wire_type``."""
    spec = OPERATIONS[wire_type]

    def decorate(function: Callable[_P, Operation]) -> Callable[_P, Operation]:
        signature = inspect.signature(function)
        name = function.__name__

        @functools.wraps(function)
        def build(*args: _P.args, **kwargs: _P.kwargs) -> Operation:
            try:
                signature.bind(*args, **kwargs)
            except TypeError as exc:
                problems = _argument_problems(signature, spec.params, args, kwargs, exc)
                raise ArgumentError(name, problems) from None
            operation = function(*args, **kwargs)
            problems = [
                Problem(None, _python_name(field), message)
                for field, message in spec.check_params(operation.params)
            ]
            if problems:
                raise OperationError(name, problems)
            return operation

        return build

    return decorate


def _argument_problems(
    signature: inspect.Signature,
    specs: Sequence[Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    error: TypeError,
) -> list[Problem]:
    """What is wrong with a call that does not fit ``signature`` (``error`` says it otherwise)."""
    parameters = signature.parameters
    names = tuple(parameters)
    problems = []
    suggested: set[str] = set()  # a misspelt parameter is not reported missing too
    for key in kwargs:
        if key not in parameters:
            hint = suggestion(key, names)
            suggested.update(name for name in names if f"{name!r}?" in hint)
            message = f"is not a parameter{hint}; it takes {', '.join(names)}"
            problems.append(Problem(None, key, message))
    positional = [
        p.name for p in parameters.values() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    ]
    if len(args) > len(positional):
        listed = ", ".join(positional)
        problems.append(
            Problem(
                None,
                "arguments",
                f"are at most {len(positional)} by position ({listed}), got {len(args)}; "
                "give the others by name",
            )
        )
    given = set(positional[: len(args)])
    for key in kwargs:
        if key in given:
            problems.append(Problem(None, key, "was given twice, by position and by name"))
    hints = {_python_name(s.name): s.hint for s in specs}
    named = given | set(kwargs) | suggested
    for parameter in parameters.values():
        if parameter.default is inspect.Parameter.empty and parameter.name not in named:
            hint = hints.get(parameter.name, "")
            problems.append(Problem(None, parameter.name, f"is required {hint}".rstrip()))
    return problems or [Problem(None, "arguments", str(error))]


def _python_name(field: str) -> str:
    """A wire field as the DSL spells it: ``aspectRatio`` -> ``aspect_ratio``."""
    return _CAMEL.sub(lambda m: "_" + m[1].lower(), field)


@_operation("generate")
def generate_video(prompt: str, duration: float = 5, aspect_ratio: str = "16:9") -> Operation:
    """A source: a new clip of ``duration`` seconds generated from ``prompt``."""
    return Operation(
        "generate", {"prompt": prompt, "duration": duration, "aspectRatio": aspect_ratio}
    )


@_operation("merge")
def merge(transition: Transition = "none", transition_duration: float = 1.0) -> Operation:
    """Join every clip not yet joined, in order, into one."""
    return Operation("merge", {"transition": transition, "transitionDuration": transition_duration})


@_operation("lipSync")
def lip_sync(audio_url: str) -> Operation:
    """Lip-sync the current clip to the audio at ``audio_url`` (http(s):// or file://)."""
    return Operation("lipSync", {"audioUrl": audio_url})


@_operation("addSubtitles")
def add_subtitles(
    language: str,
    *,
    cues: Sequence[Mapping[str, Any]] | None = None,
    srt_url: str | None = None,
) -> Operation:
    """Subtitle the current clip in ``language`` (a BCP 47 tag), from ``cues`` or an SRT file.

    ``cues`` is a list of ``{"start": seconds, "end": seconds, "text": str}``.
    """
    params: dict[str, Any] = {"language": language}
    if cues is not None:
        params["cues"] = [dict(cue) if isinstance(cue, Mapping) else cue for cue in cues]
    if srt_url is not None:
        params["srtUrl"] = srt_url
    return Operation("addSubtitles", params)


@_operation("reframe")
def reframe(aspect_ratio: str) -> Operation:
    """Reframe the current clip to ``aspect_ratio`` (``"W:H"``)."""
    return Operation("reframe", {"aspectRatio": aspect_ratio})


def compose(*steps: Operation | Pipeline) -> Pipeline:
    """A pipeline of operations and pipelines, run in order."""
    for position, step in enumerate(steps, 1):
        if not isinstance(step, Operation | Pipeline):
            raise TypeError(
                f"compose() step {position} is a {type(step).__name__}; expected an operation "
                "(generate_video(), merge(), lip_sync(), add_subtitles(), reframe()) or a pipeline"
            )
    return Pipeline(steps)


@define(eq=False)
class Pipeline:
    """Steps to run, and the callbacks to tell of its executions' progress."""

    steps: tuple[Operation | Pipeline, ...]
    progress_callbacks: list[ProgressCallback] = field(factory=list)

    def on_progress(self, callback: ProgressCallback) -> Pipeline:
        """Call ``callback`` with each :class:`~engine.models.Progress` of an execution."""
        self.progress_callbacks.append(callback)
        return self

    def plan(self, *, base_execution_id: str | None = None) -> ExecutionPlan:
        """The validated plan of this pipeline; raise :class:`PlanError` if it has none.

        With ``base_execution_id``, a leading nested pipeline is that base execution and is not
        planned again: the plan holds the steps after it, and a transform with no clip before it
        becomes a root job taking the base's final video.
        """
        has_base = base_execution_id is not None
        steps = list(enumerate(self.steps, 1))
        builder = _Builder()
        clips: list[str | None] = []
        if has_base and steps and isinstance(steps[0][1], Pipeline):
            steps = steps[1:]
            clips.append(None)
        clips = builder.walk(steps, clips, prefix="", has_base=has_base)
        if not builder.jobs:
            after = " after its base" if has_base else ""
            raise PlanError(f"the pipeline has no steps to run{after}")
        if len(clips) > 1:
            raise PlanError(_unjoined(clips, "the pipeline ends with"))
        plan = ExecutionPlan(tuple(builder.jobs), base_execution_id)
        problems = plan.validate(has_base=has_base)
        if problems:
            raise PlanError(builder.locate(p) for p in problems)
        return plan

    async def execute(
        self,
        target: Any = None,
        *,
        base_execution_id: str | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        api_url: str | None = None,
        api_key: str | None = None,
        idempotency_key: str | None = None,
    ) -> PipelineExecution:
        """Submit this pipeline to ``target`` (an ``Engine`` or an ``EngineClient``).

        ``api_url`` and ``api_key`` build an ``EngineClient`` when no target is given.
        """
        return await execute_pipeline(
            self,
            target,
            base_execution_id=base_execution_id,
            webhook_url=webhook_url,
            webhook_secret=webhook_secret,
            api_url=api_url,
            api_key=api_key,
            idempotency_key=idempotency_key,
        )


class _Builder:
    """Numbers jobs ``job1``, ``job2``, ... while walking nested steps."""

    def __init__(self) -> None:
        self.jobs: list[JobSpec] = []
        self.where: dict[str, str] = {}

    def add(self, op: Operation, inputs: list[str | None], step: str) -> str:
        job_id = f"job{len(self.jobs) + 1}"
        deps = tuple(clip for clip in inputs if clip is not None)
        self.jobs.append(JobSpec(job_id, op.type, dict(op.params), deps))
        self.where[job_id] = f"{_NAMES.get(op.type, op.type)}() at step {step}"
        return job_id

    def locate(self, problem: Problem) -> Problem:
        """``problem``, its message saying which step made the job."""
        where = self.where.get(problem.job_id or "")
        if where is None:
            return problem
        return Problem(problem.job_id, problem.field, f"{problem.message} ({where})")

    def walk(
        self,
        steps: list[tuple[int, Operation | Pipeline]],
        clips: list[str | None],
        *,
        prefix: str,
        has_base: bool,
    ) -> list[str | None]:
        """Add the jobs of ``steps``; return the clips not yet joined (``None`` is the base's)."""
        for position, step in steps:
            where = f"{prefix}{position}"
            if isinstance(step, Pipeline):
                inner = self.walk(
                    list(enumerate(step.steps, 1)), [], prefix=f"{where}.", has_base=False
                )
                if len(inner) != 1:
                    raise PlanError(_unjoined(inner, f"the pipeline at step {where} ends with"))
                clips.append(inner[0])
            elif step.type == "merge":
                if None in clips:
                    raise PlanError(
                        f"merge (step {where}) would join the base execution's video with new "
                        "clips; merging with the base is not supported"
                    )
                if len(clips) < 2:
                    raise PlanError(
                        f"merge (step {where}) needs at least two clips to join, "
                        f"but there {'is' if len(clips) == 1 else 'are'} {len(clips)}"
                    )
                clips = [self.add(step, clips, where)]
            elif step.type in TRANSFORMS:
                if len(clips) > 1:
                    raise PlanError(
                        f"{step.type} (step {where}) applies to one clip but there are "
                        f"{len(clips)} unmerged clips; add merge() before it"
                    )
                if not clips and not has_base:
                    raise PlanError(
                        f"{step.type} (step {where}) has no clip to apply to; start with "
                        "generate_video() or a pipeline, or execute with a base_execution_id"
                    )
                clips = [self.add(step, clips, where)]
            else:
                clips.append(self.add(step, [], where))
        return clips


def _unjoined(clips: list[str | None], lead: str) -> str:
    if not clips:
        return f"{lead} no clip"
    if None in clips:
        return (
            f"{lead} the base execution's video and {len(clips) - 1} new clip(s) not joined; "
            "merging with the base is not supported"
        )
    return f"{lead} {len(clips)} clips not joined; add merge() to join them"

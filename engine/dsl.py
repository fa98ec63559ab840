"""The pipeline DSL: operations, :func:`compose` and :class:`Pipeline`.

A pipeline is a sequence of steps. A source (:func:`generate_video`) adds a clip; :func:`merge`
joins every clip not yet joined; a transform (:func:`lip_sync`, :func:`add_subtitles`,
:func:`reframe`) applies to the single current clip; a nested pipeline contributes its final clip.
:meth:`Pipeline.plan` turns the steps into an :class:`~engine.plan.ExecutionPlan`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from attrs import define, field, frozen

from engine.catalogue import OPERATIONS, TRANSFORMS
from engine.errors import PlanError, Problem
from engine.execute import execute_pipeline
from engine.handle import PipelineExecution
from engine.models import Progress
from engine.plan import ExecutionPlan, JobSpec

Transition = Literal["none", "crossfade", "fade"]
#: Called with each :class:`~engine.models.Progress`; may be a plain or an async callable.
ProgressCallback = Callable[[Progress], object]

_NAMES = {kind: spec.function for kind, spec in OPERATIONS.items()}


@frozen
class Operation:
    """One step of a pipeline: a job type and its wire (camelCase) params."""

    type: str
    params: Mapping[str, Any]


def generate_video(prompt: str, duration: float = 5, aspect_ratio: str = "16:9") -> Operation:
    """A source: a new clip of ``duration`` seconds generated from ``prompt``."""
    return Operation(
        "generate", {"prompt": prompt, "duration": duration, "aspectRatio": aspect_ratio}
    )


def merge(transition: Transition = "none", transition_duration: float = 1.0) -> Operation:
    """Join every clip not yet joined, in order, into one."""
    return Operation("merge", {"transition": transition, "transitionDuration": transition_duration})


def lip_sync(audio_url: str) -> Operation:
    """Lip-sync the current clip to the audio at ``audio_url`` (http(s):// or file://)."""
    return Operation("lipSync", {"audioUrl": audio_url})


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

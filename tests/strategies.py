"""Hypothesis strategies for random plans: forests of executions, variants, chains of variants.

Shared by the property tests (``test_invariants.py``) and the engine state machine
(``test_engine_machine.py``). Every plan they make is valid (``plan.check`` passes), so a failure
is the engine's, never the strategy's.
"""

from __future__ import annotations

from hypothesis import strategies as st

from engine import ExecutionPlan, JobSpec

ASPECTS = ("16:9", "9:16", "1:1", "4:3")
TRANSFORMS = ("reframe", "lipSync", "addSubtitles")
ROOT_TYPES_WITH_BASE = ("generate", *TRANSFORMS)
TRANSITIONS = ("none", "crossfade", "fade")


def job_params(draw: st.DrawFn, kind: str, index: int) -> dict[str, object]:
    """Wire params for a job of type ``kind`` (the ``index``-th of its plan)."""
    if kind == "generate":
        return {
            "prompt": f"scene {index}",
            "duration": draw(st.integers(1, 8)),
            "aspectRatio": draw(st.sampled_from(ASPECTS)),
        }
    if kind == "merge":
        return {
            "transition": draw(st.sampled_from(TRANSITIONS)),
            "transitionDuration": draw(st.sampled_from((1.0, 0.5))),
        }
    if kind == "reframe":
        return {"aspectRatio": draw(st.sampled_from(ASPECTS))}
    if kind == "lipSync":
        return {"audioUrl": "https://cdn.example.com/voice.mp3"}
    return {"language": draw(st.sampled_from(("fr", "en-US", "de")))}


@st.composite
def plans(draw: st.DrawFn, *, has_base: bool, max_jobs: int = 50) -> ExecutionPlan:
    """A valid plan of 1 to ``max_jobs`` jobs (one more when a final merge is needed): jobs in
    topological order, each depending on a random set of earlier jobs, its type fitting its
    number of inputs, and one final job (a merge of the sinks if there are several). With a
    base, a root job may be a transform of the base's video."""
    count = draw(st.integers(1, max_jobs))
    jobs: list[JobSpec] = []
    for index in range(count):
        width = min(index, draw(st.sampled_from((0, 1, 1, 1, 2, 3))))
        picked = (
            draw(st.lists(st.integers(0, index - 1), min_size=width, max_size=width))
            if width
            else []
        )
        deps = tuple(jobs[i].id for i in sorted(set(picked)))
        if not deps:
            kind = draw(st.sampled_from(ROOT_TYPES_WITH_BASE)) if has_base else "generate"
        elif len(deps) == 1:
            kind = draw(st.sampled_from(TRANSFORMS))
        else:
            kind = "merge"
        jobs.append(JobSpec(f"job{index + 1}", kind, job_params(draw, kind, index), deps))
    needed = {dep for job in jobs for dep in job.depends_on}
    sinks = tuple(job.id for job in jobs if job.id not in needed)
    if len(sinks) > 1:
        jobs.append(JobSpec(f"job{count + 1}", "merge", job_params(draw, "merge", count), sinks))
    plan = ExecutionPlan(tuple(jobs))
    plan.check(has_base=has_base)  # the strategy must only make valid plans
    return plan


@st.composite
def chain_plans(draw: st.DrawFn) -> ExecutionPlan:
    """A variant plan with one root job (a transform of the base's video or a new clip) and a
    chain of transforms after it."""
    jobs: list[JobSpec] = []
    for index in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(ROOT_TYPES_WITH_BASE if index == 0 else TRANSFORMS))
        deps = (jobs[-1].id,) if jobs else ()
        jobs.append(JobSpec(f"job{index + 1}", kind, job_params(draw, kind, index), deps))
    plan = ExecutionPlan(tuple(jobs))
    plan.check(has_base=True)
    return plan

from __future__ import annotations

import inspect
from typing import Any

import pytest

from engine.dsl import (
    Operation,
    Pipeline,
    add_subtitles,
    compose,
    generate_video,
    lip_sync,
    merge,
    reframe,
)
from engine.errors import ArgumentError, OperationError, PlanError, Problem
from engine.models import Progress
from engine.plan import ExecutionPlan

FR = "https://cdn.example.com/french.mp3"

product_demo = compose(
    generate_video(prompt="Scene 1", duration=3),
    generate_video(prompt="Scene 2", duration=3),
    generate_video(prompt="Scene 3", duration=3),
    merge(transition="crossfade"),
)


def scene(n: int) -> dict[str, Any]:
    return {
        "id": f"job{n}",
        "type": "generate",
        "params": {"prompt": f"Scene {n}", "duration": 3, "aspectRatio": "16:9"},
        "output": f"$job{n}",
    }


PRODUCT_DEMO_JSON = {
    "jobs": [
        scene(1),
        scene(2),
        scene(3),
        {
            "id": "job4",
            "type": "merge",
            "params": {"transition": "crossfade", "transitionDuration": 1.0},
            "dependsOn": ["job1", "job2", "job3"],
            "output": "$job4",
        },
    ]
}


def plan_error(pipeline: Pipeline, **kwargs: Any) -> str:
    with pytest.raises(PlanError) as info:
        pipeline.plan(**kwargs)
    return str(info.value)


# --- operations -------------------------------------------------------------------------------


def test_operations_emit_wire_params() -> None:
    assert generate_video("p") == Operation(
        "generate", {"prompt": "p", "duration": 5, "aspectRatio": "16:9"}
    )
    assert merge() == Operation("merge", {"transition": "none", "transitionDuration": 1.0})
    assert merge(transition="fade", transition_duration=0.5).params == {
        "transition": "fade",
        "transitionDuration": 0.5,
    }
    assert lip_sync(FR) == Operation("lipSync", {"audioUrl": FR})
    assert add_subtitles("fr") == Operation("addSubtitles", {"language": "fr"})
    assert reframe("9:16") == Operation("reframe", {"aspectRatio": "9:16"})


def test_add_subtitles_optional_params() -> None:
    cues = [{"start": 0, "end": 1.5, "text": "Bonjour"}]
    op = add_subtitles("fr", cues=cues, srt_url="file:///tmp/fr.srt")
    assert op.params == {"language": "fr", "cues": cues, "srtUrl": "file:///tmp/fr.srt"}
    assert list(add_subtitles("fr", srt_url="https://x.test/a.srt").params) == [
        "language",
        "srtUrl",
    ]


def test_compose_rejects_other_steps() -> None:
    with pytest.raises(TypeError, match=r"step 2 is a str"):
        compose(generate_video("p"), "merge")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"step 1 is a function"):
        compose(merge)  # type: ignore[arg-type]


# --- the seed's examples ----------------------------------------------------------------------


def test_product_demo_plans_to_the_seed_body() -> None:
    plan = product_demo.plan()
    assert plan.to_json() == PRODUCT_DEMO_JSON
    assert list(plan.to_json()["jobs"][3]) == ["id", "type", "params", "dependsOn", "output"]
    assert plan.final_job.id == "job4"


def test_french_variant_with_base() -> None:
    french = compose(product_demo, lip_sync(audio_url=FR), add_subtitles(language="fr"))
    plan = french.plan(base_execution_id="exec_1")
    assert plan.to_json() == {
        "jobs": [
            {"id": "job1", "type": "lipSync", "params": {"audioUrl": FR}, "output": "$job1"},
            {
                "id": "job2",
                "type": "addSubtitles",
                "params": {"language": "fr"},
                "dependsOn": ["job1"],
                "output": "$job2",
            },
        ],
        "baseExecutionId": "exec_1",
    }
    assert ExecutionPlan.from_json(plan.to_json()) == plan


def test_french_variant_without_base_inlines_the_base() -> None:
    french = compose(product_demo, lip_sync(audio_url=FR), add_subtitles(language="fr"))
    body = french.plan().to_json()
    assert body["jobs"][:4] == PRODUCT_DEMO_JSON["jobs"]
    assert [(j["id"], j["type"], j.get("dependsOn")) for j in body["jobs"][4:]] == [
        ("job5", "lipSync", ["job4"]),
        ("job6", "addSubtitles", ["job5"]),
    ]
    assert "baseExecutionId" not in body


def test_example_2_generate_then_reframe() -> None:
    pipeline = compose(generate_video(prompt="A beautiful landscape"), reframe(aspect_ratio="9:16"))
    assert pipeline.plan().to_json() == {
        "jobs": [
            {
                "id": "job1",
                "type": "generate",
                "params": {"prompt": "A beautiful landscape", "duration": 5, "aspectRatio": "16:9"},
                "output": "$job1",
            },
            {
                "id": "job2",
                "type": "reframe",
                "params": {"aspectRatio": "9:16"},
                "dependsOn": ["job1"],
                "output": "$job2",
            },
        ]
    }


def test_example_3_generate_then_lip_sync() -> None:
    pipeline = compose(generate_video(prompt="Long video"), lip_sync(audio_url=FR))
    assert pipeline.plan().to_json() == {
        "jobs": [
            {
                "id": "job1",
                "type": "generate",
                "params": {"prompt": "Long video", "duration": 5, "aspectRatio": "16:9"},
                "output": "$job1",
            },
            {
                "id": "job2",
                "type": "lipSync",
                "params": {"audioUrl": FR},
                "dependsOn": ["job1"],
                "output": "$job2",
            },
        ]
    }


# --- composition rules ------------------------------------------------------------------------


def test_transform_with_several_clips_is_an_error() -> None:
    pipeline = compose(generate_video("a"), generate_video("b"), generate_video("c"), lip_sync(FR))
    message = plan_error(pipeline)
    assert "lipSync (step 4) applies to one clip but there are 3 unmerged clips" in message
    assert "add merge() before it" in message


def test_unjoined_clips_at_the_end_are_an_error() -> None:
    message = plan_error(compose(generate_video("a"), generate_video("b")))
    assert "2 clips not joined" in message
    assert "merge()" in message


def test_merge_joins_only_unjoined_clips() -> None:
    pipeline = compose(
        generate_video("a"),
        generate_video("b"),
        merge(),
        generate_video("c"),
        merge(transition="fade"),
        reframe("1:1"),
    )
    jobs = pipeline.plan().jobs
    assert [(j.id, j.type, j.depends_on) for j in jobs] == [
        ("job1", "generate", ()),
        ("job2", "generate", ()),
        ("job3", "merge", ("job1", "job2")),
        ("job4", "generate", ()),
        ("job5", "merge", ("job3", "job4")),
        ("job6", "reframe", ("job5",)),
    ]


def test_merge_of_one_clip_is_an_error() -> None:
    assert "at least two clips" in plan_error(compose(generate_video("a"), merge()))
    assert "at least two clips" in plan_error(compose(merge()))


def test_nested_pipelines_contribute_their_final_clip() -> None:
    intro = compose(generate_video("intro"), reframe("9:16"))
    pipeline = compose(intro, product_demo, merge(), add_subtitles("en-US"))
    jobs = pipeline.plan().jobs
    assert [(j.id, j.type, j.depends_on) for j in jobs] == [
        ("job1", "generate", ()),
        ("job2", "reframe", ("job1",)),
        ("job3", "generate", ()),
        ("job4", "generate", ()),
        ("job5", "generate", ()),
        ("job6", "merge", ("job3", "job4", "job5")),
        ("job7", "merge", ("job2", "job6")),
        ("job8", "addSubtitles", ("job7",)),
    ]


def test_nested_pipeline_errors_name_the_nested_step() -> None:
    inner = compose(generate_video("a"), generate_video("b"))
    assert "pipeline at step 2 ends with 2 clips" in plan_error(
        compose(generate_video("x"), inner, merge())
    )
    bad = compose(generate_video("a"), generate_video("b"), reframe("1:1"))
    assert "reframe (step 2.3)" in plan_error(compose(generate_video("x"), bad))


def test_root_transform_needs_a_base() -> None:
    alone = compose(lip_sync(audio_url=FR))
    assert "no clip to apply to" in plan_error(alone)
    plan = alone.plan(base_execution_id="x")
    assert [(j.id, j.type, j.depends_on) for j in plan.jobs] == [("job1", "lipSync", ())]
    assert plan.base_execution_id == "x"


def test_nested_root_transform_is_an_error_even_with_a_base() -> None:
    pipeline = compose(generate_video("a"), compose(lip_sync(FR)), merge())
    assert "no clip to apply to" in plan_error(pipeline, base_execution_id="x")


def test_with_base_only_the_leading_pipeline_is_dropped() -> None:
    pipeline = compose(product_demo, reframe("9:16"), compose(generate_video("outro")))
    message = plan_error(pipeline, base_execution_id="x")
    assert "not joined" in message
    with_merge = compose(product_demo, generate_video("outro"), merge())
    assert "not supported" in plan_error(with_merge, base_execution_id="x")


def test_base_then_new_work_that_does_not_need_the_base_clip() -> None:
    pipeline = compose(product_demo, reframe("9:16"))
    plan = pipeline.plan(base_execution_id="exec_1")
    assert [(j.id, j.type, j.depends_on) for j in plan.jobs] == [("job1", "reframe", ())]


def test_empty_pipelines_are_errors() -> None:
    assert "no steps" in plan_error(compose())
    assert "after its base" in plan_error(compose(product_demo), base_execution_id="x")


def test_invalid_params_are_reported_with_their_step() -> None:
    # Operations made by hand (the functions refuse these values when called: see below).
    pipeline = compose(
        Operation("generate", {"prompt": "a", "duration": 0, "aspectRatio": "16:9"}),
        Operation("generate", {"prompt": "", "duration": 5, "aspectRatio": "wide"}),
        merge(),
        Operation("addSubtitles", {"language": "not a tag"}),
    )
    with pytest.raises(PlanError) as info:
        pipeline.plan()
    found = [(p.job_id, p.field) for p in info.value.problems]
    assert found == [
        ("job1", "params.duration"),
        ("job2", "params.prompt"),
        ("job2", "params.aspectRatio"),
        ("job4", "params.language"),
    ]
    assert "(generate_video() at step 2)" in info.value.problems[1].message


def test_a_misspelt_argument_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ArgumentError) as info:
        generate_video(promt="A sunrise")  # type: ignore[call-arg]
    assert isinstance(info.value, TypeError) and isinstance(info.value, PlanError)
    assert info.value.problems == (
        Problem(
            None,
            "promt",
            "is not a parameter (did you mean 'prompt'?); it takes prompt, duration, aspect_ratio",
        ),
    )
    assert str(info.value).startswith("generate_video(): promt: is not a parameter")
    with pytest.raises(ArgumentError, match=r"aspectRatio: .*did you mean 'aspect_ratio'"):
        reframe(aspectRatio="9:16")  # type: ignore[call-arg]


def test_missing_and_surplus_arguments_are_named() -> None:
    with pytest.raises(ArgumentError, match=r"^add_subtitles\(\): language: is required \(a BCP"):
        add_subtitles()  # type: ignore[call-arg]
    with pytest.raises(ArgumentError, match="at most 1 by position"):
        add_subtitles("fr", [{"start": 0, "end": 1, "text": "x"}])  # type: ignore[call-arg]
    with pytest.raises(ArgumentError, match="prompt: was given twice"):
        generate_video("a", prompt="b")  # type: ignore[misc]


def test_a_bad_value_fails_when_the_operation_is_made() -> None:
    with pytest.raises(OperationError) as info:
        merge(transition="wipe-ish")  # type: ignore[arg-type]
    assert not isinstance(info.value, TypeError)
    assert info.value.function == "merge"
    assert [(p.field, p.message) for p in info.value.problems] == [
        ("transition", "must be one of none, crossfade, fade; got 'wipe-ish'")
    ]
    with pytest.raises(OperationError) as info:
        generate_video("a", duration=0, aspect_ratio="wide")
    assert [p.field for p in info.value.problems] == ["duration", "aspect_ratio"]
    with pytest.raises(OperationError, match="transition_duration: must be a number of seconds"):
        merge(transition="crossfade", transition_duration=11)
    with pytest.raises(OperationError, match=r"cues\[1\]\.end: must be more than start"):
        add_subtitles(
            "fr", cues=[{"start": 0, "end": 1, "text": "a"}, {"start": 2, "end": 1, "text": "b"}]
        )
    with pytest.raises(OperationError, match="srt_url: must be an http"):
        add_subtitles("fr", srt_url="subs.srt")


def test_add_subtitles_checks_the_language_tag_as_the_http_api_does() -> None:
    for tag in ("fr", "en-US", "zh-Hant", "es-419"):
        assert add_subtitles(tag).params["language"] == tag
    for bad in ("not a tag", "fr_FR", "", "e"):
        with pytest.raises(OperationError) as info:
            add_subtitles(bad)
        (problem,) = info.value.problems
        assert problem.field == "language" and "BCP 47" in problem.message
        # The same value in a request body is refused with the same message.
        body = {"jobs": [{"id": "job1", "type": "addSubtitles", "params": {"language": bad}}]}
        with pytest.raises(PlanError) as http:
            ExecutionPlan.from_json(body, has_base=True)
        assert [p.message for p in http.value.problems] == [problem.message]


def test_a_problem_with_the_whole_plan_is_not_prefixed_twice() -> None:
    message = plan_error(compose(generate_video("a"), generate_video("b")))
    assert message == (
        "invalid plan (1 problem): the pipeline ends with 2 clips not joined; "
        "add merge() to join them"
    )
    assert str(Problem(None, "jobs", "a plan needs at least one job")).startswith("plan, jobs: ")
    assert str(Problem("job1", "params.prompt", "x")) == "job 'job1', params.prompt: x"


# --- callbacks and execute --------------------------------------------------------------------


def test_on_progress_registers_callbacks() -> None:
    seen: list[Progress] = []

    async def later(progress: Progress) -> None:
        seen.append(progress)

    pipeline = compose(generate_video("a"))
    assert pipeline.on_progress(seen.append) is pipeline
    assert pipeline.on_progress(later) is pipeline
    assert pipeline.progress_callbacks == [seen.append, later]
    assert product_demo.progress_callbacks == []


def test_execute_signature() -> None:
    assert inspect.iscoroutinefunction(Pipeline.execute)
    params = inspect.signature(Pipeline.execute).parameters
    assert list(params) == [
        "self",
        "target",
        "base_execution_id",
        "webhook_url",
        "webhook_secret",
        "api_url",
        "api_key",
        "idempotency_key",
    ]
    assert all(p.default is None for name, p in params.items() if name != "self")
    keyword_only = [name for name, p in params.items() if p.kind is p.KEYWORD_ONLY]
    assert keyword_only == list(params)[2:]

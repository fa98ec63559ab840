from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.catalogue import JOB_TYPES, MAX_JOBS, parse_aspect_ratio
from engine.errors import PlanError, Problem
from engine.plan import ExecutionPlan, JobSpec


def gen(job_id: str, **params: Any) -> dict[str, Any]:
    return {"id": job_id, "type": "generate", "params": {"prompt": "a scene", **params}}


def job(job_id: str, type: str, params: dict[str, Any], *deps: str) -> dict[str, Any]:
    out: dict[str, Any] = {"id": job_id, "type": type, "params": params}
    if deps:
        out["dependsOn"] = list(deps)
    return out


def merged(*jobs: dict[str, Any]) -> dict[str, Any]:
    """``jobs``, then a merge of every one of them, as a plan body."""
    ids = [j["id"] for j in jobs]
    return {"jobs": [*jobs, job("m", "merge", {}, *ids)]}


def problems(obj: Any, **kwargs: Any) -> list[Problem]:
    with pytest.raises(PlanError) as info:
        ExecutionPlan.from_json(obj, **kwargs)
    return list(info.value.problems)


def where(obj: Any, **kwargs: Any) -> set[tuple[str | None, str]]:
    return {(p.job_id, p.field) for p in problems(obj, **kwargs)}


def one(obj: Any, **kwargs: Any) -> Problem:
    found = problems(obj, **kwargs)
    assert len(found) == 1, found
    return found[0]


SEED_BASE = {
    "jobs": [
        {"id": "job1", "type": "generate", "params": {"prompt": "a"}, "output": "$job1"},
        {"id": "job2", "type": "generate", "params": {"prompt": "b"}, "output": "$job2"},
        {
            "id": "job3",
            "type": "merge",
            "params": {},
            "dependsOn": ["job1", "job2"],
            "output": "$job3",
        },
    ]
}

SEED_VARIANT = {
    "jobs": [
        {
            "id": "job1",
            "type": "lipSync",
            "params": {"audioUrl": "https://cdn.example.com/french.mp3"},
            "output": "$job1",
        },
        {
            "id": "job2",
            "type": "addSubtitles",
            "params": {"language": "fr"},
            "dependsOn": ["job1"],
            "output": "$job2",
        },
    ],
    "baseExecutionId": "exec_abc123",
}


# --- parsing and the wire format ---------------------------------------------------------------


def test_seed_base_request_parses_with_defaults() -> None:
    plan = ExecutionPlan.from_json(SEED_BASE)
    assert [j.id for j in plan.jobs] == ["job1", "job2", "job3"]
    assert plan.jobs[0].params == {"prompt": "a", "duration": 5, "aspectRatio": "16:9"}
    assert plan.jobs[2].params == {"transition": "none", "transitionDuration": 1.0}
    assert plan.jobs[2].depends_on == ("job1", "job2")
    assert plan.base_execution_id is None
    assert plan.final_job.id == "job3"
    assert [j.id for j in plan.roots] == ["job1", "job2"]


def test_seed_variant_request_parses_with_base() -> None:
    plan = ExecutionPlan.from_json(SEED_VARIANT)
    assert plan.base_execution_id == "exec_abc123"
    assert plan.to_json() == SEED_VARIANT
    assert plan.final_job.id == "job2"


def test_to_json_key_order_and_optional_keys() -> None:
    plan = ExecutionPlan(
        (
            JobSpec("a", "generate", {"prompt": "x"}),
            JobSpec("b", "reframe", {"aspectRatio": "9:16"}, ("a",)),
        )
    )
    body = plan.to_json()
    assert list(body) == ["jobs"]
    assert list(body["jobs"][0]) == ["id", "type", "params", "output"]
    assert list(body["jobs"][1]) == ["id", "type", "params", "dependsOn", "output"]
    assert body["jobs"][1]["dependsOn"] == ["a"]
    assert body["jobs"][1]["output"] == "$b"
    with_base = ExecutionPlan(plan.jobs, "exec_1").to_json()
    assert list(with_base) == ["jobs", "baseExecutionId"]


def test_round_trip() -> None:
    plan = ExecutionPlan.from_json(SEED_BASE)
    again = ExecutionPlan.from_json(plan.to_json())
    assert again == plan
    assert again.to_json() == plan.to_json()
    variant = ExecutionPlan.from_json(SEED_VARIANT)
    assert ExecutionPlan.from_json(json.loads(json.dumps(variant.to_json()))) == variant


def test_params_are_copied_from_the_input() -> None:
    body = {"jobs": [job("a", "addSubtitles", {"language": "fr", "cues": []})]}
    plan = ExecutionPlan.from_json(body, has_base=True)
    body["jobs"][0]["params"]["cues"].append({"start": 0})
    assert plan.jobs[0].params["cues"] == []


def test_fingerprint_is_canonical() -> None:
    plan = ExecutionPlan.from_json(SEED_BASE)
    reordered = json.loads(json.dumps(SEED_BASE))
    reordered["jobs"][0] = {"params": {"prompt": "a"}, "type": "generate", "id": "job1"}
    assert ExecutionPlan.from_json(reordered).fingerprint() == plan.fingerprint()
    assert len(plan.fingerprint()) == 64
    changed = json.loads(json.dumps(SEED_BASE))
    changed["jobs"][0]["params"]["prompt"] = "c"
    assert ExecutionPlan.from_json(changed).fingerprint() != plan.fingerprint()
    based = ExecutionPlan(plan.jobs, "exec_1")
    assert based.fingerprint() != plan.fingerprint()


def test_parse_aspect_ratio() -> None:
    assert parse_aspect_ratio("16:9") == (16, 9)
    assert parse_aspect_ratio("10000:1") == (10000, 1)
    for bad in ("16/9", "0:1", "1:10001", "-1:2", "1.5:1", "", "16:9:1", "١٦:٩"):
        with pytest.raises(ValueError, match="aspect ratio"):
            parse_aspect_ratio(bad)


def test_exports() -> None:
    assert JOB_TYPES == ("generate", "merge", "lipSync", "addSubtitles", "reframe")
    assert MAX_JOBS == 1000


# --- plan-level rules -------------------------------------------------------------------------


@pytest.mark.parametrize("obj", [None, [], "jobs", 3, True])
def test_plan_must_be_an_object(obj: Any) -> None:
    assert one(obj).field == "plan"


def test_jobs_required_and_a_list() -> None:
    assert where({}) == {(None, "jobs")}
    assert where({"jobs": {"a": 1}}) == {(None, "jobs")}
    assert "at least one job" in one({"jobs": []}).message


def test_unknown_top_level_keys_and_bad_base() -> None:
    body = {**SEED_BASE, "webhook": {}, "baseExecutionId": ""}
    assert where(body) == {(None, "webhook"), (None, "baseExecutionId")}


def test_too_many_jobs() -> None:
    jobs = [gen(f"g{i}") for i in range(MAX_JOBS + 1)]
    problem = one({"jobs": jobs})
    assert (problem.job_id, problem.field) == (None, "jobs")
    assert "at most 1,000" in problem.message
    many = ExecutionPlan(tuple(JobSpec(f"g{i}", "generate", {"prompt": "x"}) for i in range(1001)))
    assert len(many.validate(has_base=False)) == 1


def test_max_jobs_is_allowed() -> None:
    jobs = [gen(f"g{i}") for i in range(MAX_JOBS - 1)]
    plan = ExecutionPlan.from_json(merged(*jobs))
    assert len(plan.jobs) == MAX_JOBS


def test_job_must_be_an_object() -> None:
    body = merged(gen("a"), gen("b"))
    body["jobs"].insert(1, "job")
    assert where(body) == {(None, "jobs[1]")}


def test_unknown_job_keys_suggest_camel_case() -> None:
    body = merged(gen("a"), gen("b"))
    body["jobs"][2]["depends_on"] = ["a"]
    problem = one(body)
    assert (problem.job_id, problem.field) == ("m", "depends_on")
    assert "did you mean 'dependsOn'?" in problem.message


def test_output_must_match_id() -> None:
    body = merged(gen("a"), gen("b"))
    body["jobs"][0]["output"] = "$b"
    problem = one(body)
    assert (problem.job_id, problem.field) == ("a", "output")
    assert "'$a'" in problem.message


# --- ids and dependencies ---------------------------------------------------------------------


@pytest.mark.parametrize("bad_id", ["a b", "é", "job/1", "a\n"])
def test_ids_use_a_safe_alphabet(bad_id: str) -> None:
    problem = one(merged(gen(bad_id), gen("b")))
    assert (problem.job_id, problem.field) == (bad_id, "id")
    assert "letters" in problem.message


@pytest.mark.parametrize("bad_id", ["", 7, None, ["a"]])
def test_ids_are_non_empty_strings(bad_id: Any) -> None:
    body = merged(gen("b"), gen("c"))
    body["jobs"].insert(0, {**gen("x"), "id": bad_id})
    problem = one(body)
    assert (problem.job_id, problem.field) == (None, "jobs[0].id")
    assert "non-empty string" in problem.message


def test_id_length() -> None:
    ok = "x" * 64
    ExecutionPlan.from_json(merged(gen(ok), gen("b")))
    long = "x" * 65
    assert where(merged(gen(long), gen("b"))) == {(long, "id")}


def test_missing_id_and_type() -> None:
    body = merged(gen("a"), gen("b"))
    del body["jobs"][0]["id"]
    del body["jobs"][1]["type"]
    found = {(p.job_id, p.field): p.message for p in problems(body)}
    assert set(found) == {(None, "jobs[0].id"), ("b", "type"), ("m", "dependsOn")}
    assert "is required" in found[(None, "jobs[0].id")]
    assert "known types" in found[("b", "type")]
    assert "unknown job 'a'" in found[("m", "dependsOn")]


def test_duplicate_ids() -> None:
    body = merged(gen("a"), gen("a"))
    body["jobs"][2]["dependsOn"] = ["a", "b"]
    body["jobs"].insert(2, gen("b"))
    problem = one(body)
    assert (problem.job_id, problem.field) == ("a", "id")
    assert "jobs[0], jobs[1]" in problem.message


def test_depends_on_unknown_job_suggests() -> None:
    body = merged(gen("job1"), gen("job2"))
    body["jobs"][2]["dependsOn"] = ["job1", "jb2"]
    found = problems(body)
    assert len(found) == 1
    assert (found[0].job_id, found[0].field) == ("m", "dependsOn")
    assert "unknown job 'jb2' (did you mean 'job2'?)" in found[0].message


def test_depends_on_itself() -> None:
    body = merged(gen("a"), gen("b"))
    body["jobs"][2]["dependsOn"] = ["a", "b", "m"]
    assert "itself" in one(body).message


def test_depends_on_duplicates() -> None:
    body = merged(gen("a"), gen("b"))
    body["jobs"][2]["dependsOn"] = ["a", "b", "a"]
    problem = one(body)
    assert "'a' more than once" in problem.message


@pytest.mark.parametrize("deps", ["a", {"a": 1}, ["a", 3], [None, None]])
def test_depends_on_must_be_a_list_of_ids(deps: Any) -> None:
    body = merged(gen("a"), gen("b"))
    body["jobs"][2]["dependsOn"] = deps
    assert where(body) == {("m", "dependsOn")}


def test_cycle_is_named() -> None:
    body = {
        "jobs": [
            gen("g"),
            job("job1", "reframe", {"aspectRatio": "1:1"}, "job2"),
            job("job2", "reframe", {"aspectRatio": "1:1"}, "job1"),
            job("m", "merge", {}, "g", "job2"),
        ]
    }
    problem = one(body)
    assert (problem.job_id, problem.field) == ("job1", "dependsOn")
    assert problem.message == "cycle: job1 -> job2 -> job1"


def test_each_cycle_is_reported() -> None:
    frame = {"aspectRatio": "1:1"}
    body = {
        "jobs": [
            job("a", "reframe", frame, "c"),
            job("b", "reframe", frame, "a"),
            job("c", "reframe", frame, "b"),
            job("x", "reframe", frame, "y"),
            job("y", "reframe", frame, "x"),
        ]
    }
    messages = [p.message for p in problems(body)]
    assert messages == ["cycle: a -> c -> b -> a", "cycle: x -> y -> x"]


def test_exactly_one_final_job() -> None:
    body = {"jobs": [gen("a"), gen("b"), job("r", "reframe", {"aspectRatio": "1:1"}, "a")]}
    problem = one(body)
    assert (problem.job_id, problem.field) == (None, "jobs")
    assert "found 2: b, r" in problem.message


def test_no_final_job_check_after_broken_references() -> None:
    body = merged(gen("a"), gen("b"))
    body["jobs"][2]["dependsOn"] = ["a", "typo"]
    assert where(body) == {("m", "dependsOn")}


def test_final_job_property_requires_one() -> None:
    plan = ExecutionPlan((JobSpec("a", "generate", {}), JobSpec("b", "generate", {})))
    with pytest.raises(PlanError):
        _ = plan.final_job


# --- types and arity --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["upscale", None, 3, "Generate"])
def test_unknown_type_lists_known_and_does_not_cascade(kind: Any) -> None:
    body = merged(gen("a"), gen("b"))
    body["jobs"][0]["type"] = kind
    body["jobs"][0]["dependsOn"] = ["b"]
    body["jobs"][0]["params"] = {"junk": 1}
    body["jobs"][2] = job("m", "reframe", {"aspectRatio": "1:1"}, "a")
    problem = one(body)
    assert (problem.job_id, problem.field) == ("a", "type")
    assert "generate, merge, lipSync, addSubtitles, reframe" in problem.message


def test_generate_takes_no_input() -> None:
    body = {"jobs": [gen("a"), {**gen("b"), "dependsOn": ["a"]}]}
    assert where(body) == {("b", "dependsOn")}


def test_merge_needs_two_inputs() -> None:
    body = {"jobs": [gen("a"), job("m", "merge", {}, "a")]}
    assert "at least two" in one(body).message
    root_merge = {"jobs": [job("m", "merge", {})]}
    assert where(root_merge) == {("m", "dependsOn")}
    assert "base" in one(root_merge, has_base=True).message


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("lipSync", {"audioUrl": "https://x.test/a.mp3"}),
        ("addSubtitles", {"language": "fr"}),
        ("reframe", {"aspectRatio": "9:16"}),
    ],
)
def test_transform_arity(kind: str, params: dict[str, Any]) -> None:
    two = {"jobs": [gen("a"), gen("b"), job("t", kind, params, "a", "b")]}
    assert "exactly one" in one(two).message
    assert "exactly one" in one(two, has_base=True).message
    root = {"jobs": [job("t", kind, params)]}
    assert where(root) == {("t", "dependsOn")}
    assert ExecutionPlan.from_json(root, has_base=True).jobs[0].depends_on == ()
    assert ExecutionPlan.from_json({**root, "baseExecutionId": "exec_1"}).roots[0].id == "t"
    assert where({**root, "baseExecutionId": "exec_1"}, has_base=False) == {("t", "dependsOn")}


def test_root_generate_with_base() -> None:
    body = {"jobs": [gen("a"), job("r", "reframe", {"aspectRatio": "1:1"}, "a")]}
    assert ExecutionPlan.from_json(body, has_base=True).final_job.id == "r"


def test_check_and_validate() -> None:
    plan = ExecutionPlan((JobSpec("t", "lipSync", {"audioUrl": "file:///a.wav"}),))
    assert [p.field for p in plan.validate(has_base=False)] == ["dependsOn"]
    assert plan.validate(has_base=True) == []
    plan.check(has_base=True)
    with pytest.raises(PlanError):
        plan.check(has_base=False)


# --- params ----------------------------------------------------------------------------------


def gen_problems(**params: Any) -> set[tuple[str | None, str]]:
    return where({"jobs": [{"id": "g", "type": "generate", "params": params}]})


def test_generate_prompt() -> None:
    assert gen_problems() == {("g", "params.prompt")}
    assert gen_problems(prompt="") == {("g", "params.prompt")}
    assert gen_problems(prompt="  ") == {("g", "params.prompt")}
    assert gen_problems(prompt=5) == {("g", "params.prompt")}
    assert gen_problems(prompt="x" * 4001) == {("g", "params.prompt")}
    ExecutionPlan.from_json({"jobs": [gen("g", prompt="x" * 4000)]})


@pytest.mark.parametrize(
    "duration", [0, -1, 600.5, 601, float("nan"), float("inf"), True, "5", None, 10**400]
)
def test_generate_bad_duration(duration: Any) -> None:
    assert gen_problems(prompt="p", duration=duration) == {("g", "params.duration")}


@pytest.mark.parametrize("duration", [0.1, 1, 600, 2.5])
def test_generate_good_duration(duration: float) -> None:
    plan = ExecutionPlan.from_json({"jobs": [gen("g", duration=duration)]})
    assert plan.jobs[0].params["duration"] == duration


@pytest.mark.parametrize("ratio", ["16/9", "0:9", "16:0", "10001:1", 169, "", None, "a:b"])
def test_generate_bad_aspect_ratio(ratio: Any) -> None:
    assert gen_problems(prompt="p", aspectRatio=ratio) == {("g", "params.aspectRatio")}


def test_unknown_params_suggest_camel_case() -> None:
    found = problems({"jobs": [gen("g", aspect_ratio="9:16", seed=3)]})
    messages = {p.field: p.message for p in found}
    assert set(messages) == {"params.aspect_ratio", "params.seed"}
    assert messages["params.aspect_ratio"] == (
        "unknown parameter 'aspect_ratio' (did you mean 'aspectRatio'?)"
    )
    assert "did you mean" not in messages["params.seed"]


def test_params_must_be_an_object() -> None:
    assert where({"jobs": [{"id": "g", "type": "generate", "params": ["prompt"]}]}) == {
        ("g", "params")
    }


def merge_problems(**params: Any) -> set[tuple[str | None, str]]:
    body = {"jobs": [gen("a"), gen("b"), job("m", "merge", params, "a", "b")]}
    try:
        ExecutionPlan.from_json(body)
    except PlanError as exc:
        return {(p.job_id, p.field) for p in exc.problems}
    return set()


def test_merge_params() -> None:
    for transition in ("none", "crossfade", "fade"):
        ExecutionPlan.from_json(
            {"jobs": [gen("a"), gen("b"), job("m", "merge", {"transition": transition}, "a", "b")]}
        )
    assert merge_problems(transition="wipe") == {("m", "params.transition")}
    assert merge_problems(transition=None) == {("m", "params.transition")}
    for bad in (0, -1, 10.5, True, "1", float("nan")):
        assert merge_problems(transitionDuration=bad) == {("m", "params.transitionDuration")}
    assert merge_problems(transitionDuration=10) == set()


def transform(kind: str, **params: Any) -> dict[str, Any]:
    return {"jobs": [gen("a"), job("t", kind, params, "a")]}


def transform_ok(kind: str, **params: Any) -> None:
    ExecutionPlan.from_json(transform(kind, **params))


@pytest.mark.parametrize(
    "url", ["https://cdn.example.com/a.mp3", "http://localhost:8000/a", "file:///tmp/a.wav"]
)
def test_lip_sync_good_urls(url: str) -> None:
    transform_ok("lipSync", audioUrl=url)


@pytest.mark.parametrize(
    "url",
    ["ftp://x/a.mp3", "https://", "file://", "a.mp3", "", 5, None, "http://[::1", "http://a b/c"],
)
def test_lip_sync_bad_urls(url: Any) -> None:
    assert where(transform("lipSync", audioUrl=url)) == {("t", "params.audioUrl")}


def test_lip_sync_requires_audio_url() -> None:
    assert where(transform("lipSync")) == {("t", "params.audioUrl")}


@pytest.mark.parametrize("tag", ["fr", "es", "en-US", "zh-Hant-TW", "es-419", "de-CH-1996", "yue"])
def test_subtitles_good_languages(tag: str) -> None:
    transform_ok("addSubtitles", language=tag)


@pytest.mark.parametrize(
    "tag", ["", "f", "english!", "en_US", "en-", "-en", 3, None, "fr-ABCDEFGHI"]
)
def test_subtitles_bad_languages(tag: Any) -> None:
    assert where(transform("addSubtitles", language=tag)) == {("t", "params.language")}


def test_subtitles_require_language() -> None:
    assert where(transform("addSubtitles")) == {("t", "params.language")}


def test_subtitle_cues() -> None:
    good = [{"start": 0, "end": 1.5, "text": "Bonjour"}, {"start": 1.5, "end": 3, "text": "Salut"}]
    transform_ok("addSubtitles", language="fr", cues=good, srtUrl="https://x.test/a.srt")
    bad = [
        {"start": 0, "end": 1, "text": "ok"},
        {"start": -1, "end": 1, "text": "ok"},
        {"start": 2, "end": 2, "text": "ok"},
        {"start": 0, "end": 1, "text": ""},
        "cue",
        {"start": 0, "end": 1, "text": "ok", "style": "bold"},
        {"start": True, "end": "2", "text": 3},
    ]
    assert where(transform("addSubtitles", language="fr", cues=bad)) == {
        ("t", "params.cues[1].start"),
        ("t", "params.cues[2].end"),
        ("t", "params.cues[3].text"),
        ("t", "params.cues[4]"),
        ("t", "params.cues[5].style"),
        ("t", "params.cues[6].start"),
        ("t", "params.cues[6].end"),
        ("t", "params.cues[6].text"),
    }
    assert where(transform("addSubtitles", language="fr", cues={})) == {("t", "params.cues")}


def test_subtitle_srt_url() -> None:
    bad = transform("addSubtitles", language="fr", srtUrl="subs.srt")
    assert where(bad) == {("t", "params.srtUrl")}


def test_reframe_requires_aspect_ratio() -> None:
    transform_ok("reframe", aspectRatio="9:16")
    assert where(transform("reframe")) == {("t", "params.aspectRatio")}
    assert where(transform("reframe", aspectRatio="9x16")) == {("t", "params.aspectRatio")}


# --- collecting every problem -----------------------------------------------------------------


def test_every_problem_is_reported_at_once() -> None:
    body = {
        "jobs": [
            gen("job1", duration=0),
            {"id": "job2", "type": "generate", "params": {"prompt": "b", "aspect_ratio": "1:1"}},
            job("job3", "morph", {}),
            job("job4", "merge", {}, "job1", "job2", "job3", "job9"),
        ]
    }
    found = problems(body)
    assert [(p.job_id, p.field) for p in found] == [
        ("job1", "params.duration"),
        ("job2", "params.aspect_ratio"),
        ("job3", "type"),
        ("job4", "dependsOn"),
    ]
    assert "job9" in found[3].message
    error = PlanError(found)
    assert "4 problems" in str(error)


# --- junk -------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
keys = st.sampled_from(
    ["id", "type", "params", "dependsOn", "output", "prompt", "duration", "aspectRatio", "cues"]
)
job_like = st.dictionaries(
    keys,
    json_values | st.sampled_from(["job1", "job2", "generate", "merge", "lipSync", "$job1"]),
    max_size=6,
)
plan_like = st.fixed_dictionaries(
    {"jobs": st.lists(job_like | json_values, max_size=4)},
    optional={"baseExecutionId": json_values},
)


def parse(obj: Any, has_base: bool | None) -> ExecutionPlan | PlanError:
    try:
        return ExecutionPlan.from_json(obj, has_base=has_base)
    except PlanError as exc:
        return exc


@settings(max_examples=150, deadline=None)
@given(obj=json_values | plan_like, has_base=st.none() | st.booleans())
def test_junk_raises_only_plan_error(obj: Any, has_base: bool | None) -> None:
    result = parse(obj, has_base)
    if isinstance(result, PlanError):
        assert result.problems
        assert all(isinstance(p, Problem) for p in result.problems)
        assert str(result)
    else:
        assert ExecutionPlan.from_json(result.to_json(), has_base=has_base) == result

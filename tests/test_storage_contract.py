"""One suite over every storage backend: they must all behave like the port says (and alike).

To add a backend, add one entry to ``BACKENDS``: a factory taking the test's ``tmp_path``.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.memory import MemoryStorage
from adapters.sqlite import SqliteStorage
from engine.errors import IdempotencyConflict, StorageError
from engine.models import (
    Change,
    ErrorInfo,
    Execution,
    ExecutionStatus,
    ExecutionUpdate,
    JobInfo,
    JobUpdate,
    Video,
    Webhook,
)
from engine.ports import Storage

pytestmark = pytest.mark.anyio

BACKENDS: dict[str, Callable[[Path], Storage]] = {
    "memory": lambda tmp_path: MemoryStorage(),
    "sqlite": lambda tmp_path: SqliteStorage(tmp_path / "store.db"),
}


@pytest.fixture(params=sorted(BACKENDS))
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    store = BACKENDS[request.param](tmp_path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


CLIP = Video("https://cdn.example/c1.mp4", 3.0, "16:9", width=1280, height=720)
FINAL = Video("https://cdn.example/final.mp4", 8.5, "9:16", width=720, height=1280, status="ready")


def make_execution(
    execution_id: str = "exec_1",
    *,
    created_at: float = 1_700_000_000.0,
    status: ExecutionStatus = "pending",
    tenant: str | None = None,
    idempotency_key: str | None = None,
    jobs: int = 3,
) -> Execution:
    sources = [
        JobInfo(
            id=f"job{n}",
            type="generate",
            params={"prompt": f"Scene {n} — «café»", "duration": 3, "aspectRatio": "16:9"},
        )
        for n in range(1, jobs)
    ]
    merge = JobInfo(
        id=f"job{jobs}",
        type="merge",
        params={"transition": "crossfade", "transitionDuration": 0.5, "extra": {"a": [1, None]}},
        depends_on=tuple(job.id for job in sources),
    )
    return Execution(
        id=execution_id,
        status=status,
        jobs=(*sources, merge),
        created_at=created_at,
        tenant=tenant,
        idempotency_key=idempotency_key,
    )


def rich_execution() -> Execution:
    """Every field set, with values no default would give."""
    return Execution(
        id="exec_rich",
        status="failed",
        jobs=(
            JobInfo(
                id="job1",
                type="generate",
                params={"prompt": "Scene 1", "duration": 3, "aspectRatio": "16:9"},
                status="completed",
                attempts=2,
                started_at=1_700_000_001.25,
                finished_at=1_700_000_004.5,
                result=CLIP,
            ),
            JobInfo(
                id="job2",
                type="addSubtitles",
                params={
                    "language": "fr",
                    "cues": [
                        {"start": 0, "end": 1.5, "text": "Bonjour « monde »"},
                        {"start": 1.5, "end": 3.0, "text": "日本語\n二行目"},
                    ],
                    "nested": {"deep": {"list": [1, 2.5, True, None, "x"]}},
                },
                depends_on=("job1",),
                status="failed",
                attempts=3,
                started_at=1_700_000_005.0,
                finished_at=1_700_000_009.0,
                error=ErrorInfo("provider_error", "subtitles: bad cue", job_id="job2"),
            ),
        ),
        created_at=1_700_000_000.0,
        base_execution_id="exec_base",
        webhook=Webhook("https://hooks.example/video", secret="whsec_c2VjcmV0LWtleQ=="),
        result=FINAL,
        error=ErrorInfo("job_failed", "job job2 failed", job_id="job2"),
        started_at=1_700_000_001.0,
        completed_at=1_700_000_009.5,
        tenant="acme",
        idempotency_key="order-42",
        generation=2,
    )


# --- create and get -----------------------------------------------------------------------------


async def test_create_then_get_round_trips_every_field(storage: Storage) -> None:
    execution = rich_execution()

    created = await storage.create(execution, "fingerprint-1")
    stored = await storage.get(execution.id)

    assert created == execution
    assert stored == execution
    assert stored is not None
    assert stored.webhook is not None
    assert stored.webhook.secret == "whsec_c2VjcmV0LWtleQ=="
    assert [job.id for job in stored.jobs] == ["job1", "job2"]
    assert stored.jobs[0].result == CLIP
    assert stored.jobs[1].params["cues"][1]["text"] == "日本語\n二行目"


async def test_a_plain_execution_round_trips(storage: Storage) -> None:
    execution = make_execution(jobs=5)

    await storage.create(execution)

    assert await storage.get(execution.id) == execution


async def test_a_webhook_without_secret_round_trips(storage: Storage) -> None:
    execution = attrs.evolve(make_execution(), webhook=Webhook("https://hooks.example/x"))

    await storage.create(execution)

    assert await storage.get(execution.id) == execution


async def test_get_of_an_unknown_id_is_none(storage: Storage) -> None:
    await storage.create(make_execution("exec_1"))

    assert await storage.get("exec_nope") is None


# --- idempotency ---------------------------------------------------------------------------------


async def test_same_key_and_fingerprint_returns_the_stored_execution(storage: Storage) -> None:
    first = make_execution("exec_1", idempotency_key="k")
    await storage.create(first, "fp")
    done = JobUpdate("exec_1", "job1", "completed", 1, 1.0, 2.0, result=CLIP)
    await storage.apply([done])

    again = await storage.create(make_execution("exec_2", idempotency_key="k"), "fp")

    assert again.id == "exec_1"
    assert again.job("job1").result == CLIP  # the stored state, not the request
    assert await storage.get("exec_2") is None
    assert await storage.counts() == {"pending": 1}


async def test_same_key_without_fingerprints_returns_the_stored_execution(
    storage: Storage,
) -> None:
    await storage.create(make_execution("exec_1", idempotency_key="k"))

    again = await storage.create(make_execution("exec_2", idempotency_key="k"))

    assert again == make_execution("exec_1", idempotency_key="k")


async def test_same_key_with_another_fingerprint_conflicts(storage: Storage) -> None:
    await storage.create(make_execution("exec_1", idempotency_key="k"), "fp-1")

    with pytest.raises(IdempotencyConflict, match="'k'"):
        await storage.create(make_execution("exec_2", idempotency_key="k"), "fp-2")
    with pytest.raises(IdempotencyConflict):
        await storage.create(make_execution("exec_3", idempotency_key="k"), None)

    assert await storage.get("exec_2") is None
    assert await storage.counts() == {"pending": 1}


async def test_idempotency_keys_are_scoped_per_tenant(storage: Storage) -> None:
    tenants = [None, "", "acme", "globex"]
    for n, tenant in enumerate(tenants):
        execution = make_execution(f"exec_{n}", tenant=tenant, idempotency_key="k")
        created = await storage.create(execution, f"fp-{n}")
        assert created.id == f"exec_{n}"

    for n, tenant in enumerate(tenants):
        again = make_execution(f"exec_again_{n}", tenant=tenant, idempotency_key="k")
        assert (await storage.create(again, f"fp-{n}")).id == f"exec_{n}"
        with pytest.raises(IdempotencyConflict):
            await storage.create(again, "another")

    assert await storage.counts() == {"pending": len(tenants)}


async def test_executions_without_key_are_never_deduplicated(storage: Storage) -> None:
    await storage.create(make_execution("exec_1"), "fp")
    await storage.create(make_execution("exec_2"), "fp")

    assert await storage.counts() == {"pending": 2}


# --- apply ----------------------------------------------------------------------------------------


async def test_apply_a_job_update_sets_every_field(storage: Storage) -> None:
    await storage.create(make_execution())
    failed = ErrorInfo("provider_error", "boom", job_id="job2")

    await storage.apply(
        [
            JobUpdate("exec_1", "job1", "completed", 2, 10.0, 12.5, result=CLIP),
            JobUpdate("exec_1", "job2", "failed", 3, 11.0, 13.0, error=failed),
        ]
    )

    stored = await storage.get("exec_1")
    assert stored is not None
    assert stored.jobs[0] == attrs.evolve(
        make_execution().jobs[0],
        status="completed",
        attempts=2,
        started_at=10.0,
        finished_at=12.5,
        result=CLIP,
    )
    assert stored.jobs[1] == attrs.evolve(
        make_execution().jobs[1],
        status="failed",
        attempts=3,
        started_at=11.0,
        finished_at=13.0,
        error=failed,
    )
    assert stored.jobs[2] == make_execution().jobs[2]
    assert stored.status == "pending"


async def test_a_job_update_overwrites_every_field(storage: Storage) -> None:
    await storage.create(make_execution())
    await storage.apply(
        [JobUpdate("exec_1", "job1", "failed", 1, 1.0, 2.0, error=ErrorInfo("x", "y"))]
    )

    await storage.apply([JobUpdate("exec_1", "job1", "processing", 2, 3.0, None)])

    stored = await storage.get("exec_1")
    assert stored is not None
    job = stored.job("job1")
    assert (job.status, job.attempts, job.started_at, job.finished_at) == (
        "processing",
        2,
        3.0,
        None,
    )
    assert job.error is None
    assert job.result is None


async def test_apply_an_execution_update_sets_every_field(storage: Storage) -> None:
    await storage.create(make_execution())
    error = ErrorInfo("job_failed", "job job3 failed", job_id="job3")

    await storage.apply([ExecutionUpdate("exec_1", "processing", started_at=5.0)])
    await storage.apply(
        [ExecutionUpdate("exec_1", "failed", 5.0, 9.0, result=FINAL, error=error, generation=4)]
    )

    stored = await storage.get("exec_1")
    assert stored == attrs.evolve(
        make_execution(),
        status="failed",
        started_at=5.0,
        completed_at=9.0,
        result=FINAL,
        error=error,
        generation=4,
    )


async def test_applying_an_update_twice_is_harmless(storage: Storage) -> None:
    await storage.create(make_execution())
    changes: list[Change] = [
        JobUpdate("exec_1", "job1", "completed", 1, 1.0, 2.0, result=CLIP),
        ExecutionUpdate("exec_1", "completed", 0.5, 3.0, result=FINAL),
    ]

    await storage.apply(changes)
    once = await storage.get("exec_1")
    await storage.apply(changes)

    assert await storage.get("exec_1") == once
    assert await storage.counts() == {"completed": 1}


async def test_later_changes_in_one_apply_win(storage: Storage) -> None:
    await storage.create(make_execution())

    await storage.apply(
        [
            JobUpdate("exec_1", "job1", "processing", 1, 1.0, None),
            ExecutionUpdate("exec_1", "processing", 1.0),
            JobUpdate("exec_1", "job1", "completed", 1, 1.0, 2.0, result=CLIP),
            ExecutionUpdate("exec_1", "completed", 1.0, 2.0, result=CLIP),
        ]
    )

    stored = await storage.get("exec_1")
    assert stored is not None
    assert stored.job("job1").status == "completed"
    assert stored.status == "completed"
    assert await storage.counts() == {"completed": 1}


async def test_apply_of_nothing_is_a_no_op(storage: Storage) -> None:
    await storage.create(make_execution())

    await storage.apply([])

    assert await storage.get("exec_1") == make_execution()


@pytest.mark.parametrize(
    "bad",
    [
        JobUpdate("exec_1", "job_nope", "completed", 1, 1.0, 2.0),
        JobUpdate("exec_nope", "job1", "completed", 1, 1.0, 2.0),
        ExecutionUpdate("exec_nope", "completed", 1.0, 2.0),
    ],
    ids=["unknown job", "job of unknown execution", "unknown execution"],
)
async def test_apply_is_all_or_nothing(storage: Storage, bad: Change) -> None:
    await storage.create(make_execution())
    good: list[Change] = [
        JobUpdate("exec_1", "job1", "completed", 1, 1.0, 2.0, result=CLIP),
        ExecutionUpdate("exec_1", "processing", 1.0),
    ]

    with pytest.raises(StorageError, match="nope"):
        await storage.apply([*good, bad, *good])

    assert await storage.get("exec_1") == make_execution()
    assert await storage.counts() == {"pending": 1}
    await storage.apply(good)  # the store still works
    assert await storage.counts() == {"processing": 1}


async def test_concurrent_applies_all_land(storage: Storage) -> None:
    executions = [make_execution(f"exec_{n}", created_at=float(n)) for n in range(20)]
    for execution in executions:
        await storage.create(execution)

    async def finish(execution: Execution) -> None:
        for job in execution.jobs:
            await storage.apply([JobUpdate(execution.id, job.id, "completed", 1, 1.0, 2.0, CLIP)])
        await storage.apply([ExecutionUpdate(execution.id, "completed", 1.0, 2.0, CLIP)])

    async with anyio.create_task_group() as tg:
        for execution in executions:
            tg.start_soon(finish, execution)

    assert await storage.counts() == {"completed": 20}
    for execution in executions:
        stored = await storage.get(execution.id)
        assert stored is not None
        assert stored.completed_jobs == len(execution.jobs)


# --- unfinished and counts -----------------------------------------------------------------------


async def test_unfinished_lists_pending_and_processing_oldest_first(storage: Storage) -> None:
    statuses: list[ExecutionStatus] = [
        "pending",
        "completed",
        "processing",
        "failed",
        "pending",
        "cancelled",
    ]
    for n, status in enumerate(statuses):
        await storage.create(make_execution(f"exec_{n}", created_at=100.0 + n, status=status))
    await storage.apply(
        [
            ExecutionUpdate("exec_0", "processing", 101.0),
            ExecutionUpdate("exec_2", "completed", 101.0, 102.0, result=FINAL),
            ExecutionUpdate("exec_3", "processing", 101.0),
            JobUpdate("exec_4", "job1", "processing", 1, 103.0, None),
        ]
    )

    unfinished = await storage.unfinished()

    assert [e.id for e in unfinished] == ["exec_0", "exec_3", "exec_4"]
    assert [e.status for e in unfinished] == ["processing", "processing", "pending"]
    assert unfinished[2].job("job1").status == "processing"  # snapshots, with their jobs
    assert unfinished[2] == await storage.get("exec_4")


async def test_unfinished_of_an_empty_store_is_empty(storage: Storage) -> None:
    assert await storage.unfinished() == []
    assert await storage.counts() == {}


async def test_counts_follow_creates_and_updates(storage: Storage) -> None:
    for n in range(4):
        await storage.create(make_execution(f"exec_{n}", created_at=float(n)))
    await storage.create(make_execution("exec_done", status="completed"))
    assert await storage.counts() == {"pending": 4, "completed": 1}

    await storage.apply(
        [
            ExecutionUpdate("exec_0", "processing", 1.0),
            ExecutionUpdate("exec_1", "processing", 1.0),
            ExecutionUpdate("exec_1", "failed", 1.0, 2.0),
            ExecutionUpdate("exec_2", "cancelled", None, 2.0),
            ExecutionUpdate("exec_3", "pending"),
        ]
    )

    assert await storage.counts() == {
        "pending": 1,
        "processing": 1,
        "failed": 1,
        "cancelled": 1,
        "completed": 1,
    }


# --- every backend agrees with the reference, on random steps ------------------------------------

STATUSES = ["pending", "processing", "completed", "failed", "cancelled"]

create_step = st.tuples(
    st.just("create"),
    st.sampled_from([None, "", "acme"]),  # tenant
    st.sampled_from([None, "k1", "k2"]),  # idempotency key
    st.sampled_from([None, "fp1", "fp2"]),  # fingerprint
    st.integers(1, 3),  # jobs
)
job_step = st.tuples(
    st.just("job"),
    st.integers(0, 5),  # which execution (modulo those created; 5 = unknown)
    st.integers(1, 4),  # which job (4 may not exist)
    st.sampled_from(STATUSES),
    st.integers(0, 3),
)
execution_step = st.tuples(
    st.just("execution"),
    st.integers(0, 5),
    st.sampled_from(STATUSES),
    st.integers(0, 2),
)
steps = st.lists(
    st.lists(st.one_of(create_step, job_step, execution_step), min_size=1, max_size=3),
    min_size=1,
    max_size=12,
)


def _target(ids: list[str], n: int) -> str:
    return ids[n % len(ids)] if ids and n < 5 else "exec_unknown"


def _changes(batch: list[tuple[Any, ...]], ids: list[str]) -> list[Change]:
    changes: list[Change] = []
    for step in batch:
        if step[0] == "job":
            _, n, job, status, attempts = step
            result = CLIP if status == "completed" else None
            error = ErrorInfo("e", "failed") if status == "failed" else None
            changes.append(
                JobUpdate(_target(ids, n), f"job{job}", status, attempts, 1.0, 2.0, result, error)
            )
        elif step[0] == "execution":
            _, n, status, generation = step
            changes.append(
                ExecutionUpdate(_target(ids, n), status, 1.0, None, None, None, generation)
            )
    return changes


async def _outcome(call: Any) -> Any:
    try:
        return await call
    except (IdempotencyConflict, StorageError) as exc:
        return type(exc)


@settings(  # examples: as many as the profile says (tests/conftest.py)
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=steps)
async def test_every_backend_agrees_with_memory(steps: list[list[tuple[Any, ...]]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        reference = MemoryStorage()
        others = [make(Path(directory)) for name, make in BACKENDS.items() if name != "memory"]
        stores = [reference, *others]
        for store in stores:
            await store.open()
        try:
            ids: list[str] = []
            for batch in steps:
                creates = [step for step in batch if step[0] == "create"]
                for n, (_, tenant, key, fingerprint, jobs) in enumerate(creates):
                    execution = make_execution(
                        f"exec_{len(ids)}_{n}",
                        created_at=float(len(ids)),
                        tenant=tenant,
                        idempotency_key=key,
                        jobs=jobs,
                    )
                    outcomes = [await _outcome(s.create(execution, fingerprint)) for s in stores]
                    assert all(o == outcomes[0] for o in outcomes), outcomes
                    if isinstance(outcomes[0], Execution) and outcomes[0].id not in ids:
                        ids.append(outcomes[0].id)
                changes = _changes(batch, ids)
                outcomes = [await _outcome(s.apply(changes)) for s in stores]
                assert all(o == outcomes[0] for o in outcomes), outcomes
                for store in others:
                    assert await store.counts() == await reference.counts()
                    assert await store.unfinished() == await reference.unfinished()
                    for execution_id in ids:
                        assert await store.get(execution_id) == await reference.get(execution_id)
        finally:
            for store in stores:
                await store.close()

"""One suite over every storage backend: they must all behave like the port says (and alike).

To add a backend, add one entry to ``BACKENDS``: a factory taking the test's ``tmp_path``.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.memory import MemoryStorage
from adapters.sqlite import SqliteStorage
from engine.errors import IdempotencyConflict, LeaseLost, StorageError
from engine.models import (
    Change,
    DeliveryAttempt,
    DeliveryOutcome,
    DeliveryRecorded,
    ErrorInfo,
    Execution,
    ExecutionStatus,
    ExecutionUpdate,
    JobInfo,
    JobUpdate,
    Notification,
    OutboxAdd,
    OutboxDone,
    OutboxReset,
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


async def test_a_taken_id_is_refused(storage: Storage) -> None:
    await storage.create(make_execution("exec_1", jobs=2), owner="A", lease_until=5.0)

    with pytest.raises(StorageError):
        await storage.create(make_execution("exec_1", jobs=4), owner="B", lease_until=9.0)
    with pytest.raises(StorageError):
        await storage.create(make_execution("exec_1", idempotency_key="k"), "fp")

    assert await storage.get("exec_1") == make_execution("exec_1", jobs=2)
    assert await storage.holders() == {"A": 5.0}
    assert (await storage.create(make_execution("exec_2", idempotency_key="k"), "fp")).id == (
        "exec_2"
    )


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


# --- ownership: leases, fencing, claims ----------------------------------------------------------

T0 = 1_000.0  # the engines' clock in the ownership tests
LEASE = 30.0


async def create_held(
    storage: Storage, n: int, owner: str | None, *, lease_until: float = T0 + LEASE, **kw: Any
) -> list[str]:
    """``n`` executions held by ``owner`` (``None``: unheld), created in order; their ids."""
    ids = []
    for i in range(n):
        execution_id = kw.pop("execution_id", None) or f"exec_{owner or 'free'}_{i:02}"
        execution = make_execution(execution_id, created_at=float(i), **kw)
        await storage.create(execution, owner=owner, lease_until=lease_until)
        ids.append(execution_id)
    return ids


async def test_an_owners_apply_to_what_it_holds_is_applied(storage: Storage) -> None:
    await storage.create(make_execution(), owner="A", lease_until=T0 + LEASE)

    await storage.apply([JobUpdate("exec_1", "job1", "completed", 1, 1.0, 2.0, CLIP)], owner="A")
    await storage.apply([ExecutionUpdate("exec_1", "processing", 1.0)], owner="A")

    stored = await storage.get("exec_1")
    assert stored is not None
    assert (stored.status, stored.job("job1").status) == ("processing", "completed")


async def test_an_apply_by_another_owner_is_lease_lost_and_applies_nothing(
    storage: Storage,
) -> None:
    await storage.create(make_execution("exec_1"), owner="A", lease_until=T0 + LEASE)
    await storage.create(make_execution("exec_2"), owner="B", lease_until=T0 + LEASE)
    await storage.create(make_execution("exec_3"))  # unheld: no one's writes are fenced in
    mixed: list[Change] = [
        JobUpdate("exec_1", "job1", "completed", 1, 1.0, 2.0, CLIP),
        ExecutionUpdate("exec_2", "processing", 1.0),
        JobUpdate("exec_3", "job1", "processing", 1, 1.0, None),
        ExecutionUpdate("exec_1", "processing", 1.0),
    ]

    with pytest.raises(LeaseLost) as caught:
        await storage.apply(mixed, owner="A")

    assert isinstance(caught.value, StorageError)
    assert caught.value.execution_ids == {"exec_2", "exec_3"}
    for execution_id in ("exec_1", "exec_2", "exec_3"):
        assert await storage.get(execution_id) == make_execution(execution_id)
    assert await storage.counts() == {"pending": 3}
    await storage.apply(mixed)  # unfenced (owner=None): applied whoever holds them
    assert await storage.counts() == {"pending": 1, "processing": 2}


async def test_an_expired_lease_no_one_claimed_still_counts_as_held(storage: Storage) -> None:
    await storage.create(make_execution(), owner="A", lease_until=T0)

    await storage.apply([ExecutionUpdate("exec_1", "processing", 1.0)], owner="A")

    assert await storage.holders() == {"A": T0}
    with pytest.raises(LeaseLost):
        await storage.apply([ExecutionUpdate("exec_1", "pending")], owner="B")


async def test_a_fenced_apply_to_an_unknown_execution_is_a_storage_error(
    storage: Storage,
) -> None:
    await storage.create(make_execution(), owner="A", lease_until=T0 + LEASE)

    with pytest.raises(StorageError, match="exec_nope") as caught:
        await storage.apply(
            [
                ExecutionUpdate("exec_1", "processing", 1.0),
                ExecutionUpdate("exec_nope", "processing", 1.0),
            ],
            owner="B",
        )
    assert not isinstance(caught.value, LeaseLost)
    with pytest.raises(StorageError, match="job_nope"):
        await storage.apply([JobUpdate("exec_1", "job_nope", "failed", 1, 1.0, 2.0)], owner="A")
    assert await storage.get("exec_1") == make_execution()


async def test_an_idempotent_repeat_of_create_keeps_the_holder(storage: Storage) -> None:
    first = make_execution("exec_1", idempotency_key="k")
    await storage.create(first, "fp", owner="A", lease_until=T0 + LEASE)

    again = await storage.create(
        make_execution("exec_2", idempotency_key="k"), "fp", owner="B", lease_until=T0 + 99
    )

    assert again == first
    assert await storage.holders() == {"A": T0 + LEASE}
    await storage.apply([ExecutionUpdate("exec_1", "processing", 1.0)], owner="A")
    with pytest.raises(LeaseLost):
        await storage.apply([ExecutionUpdate("exec_1", "processing", 1.0)], owner="B")


async def test_claim_takes_unheld_expired_and_dead_executions(storage: Storage) -> None:
    expected = [
        *await create_held(storage, 2, None),
        *await create_held(storage, 2, "expired", lease_until=T0 - 1),
        *await create_held(storage, 2, "dead"),
    ]
    await create_held(storage, 2, "C")  # the claimer's own: not re-taken by a sweep
    live = await create_held(storage, 2, "B")
    at_the_limit = await create_held(storage, 1, "edge", lease_until=T0)  # not yet expired

    claimed = await storage.claim(
        "C", now=T0, lease_until=T0 + LEASE, dead_owners=["dead", "someone"]
    )

    assert sorted(e.id for e in claimed) == sorted(expected)
    assert await storage.holders() == {"C": T0 + LEASE, "B": T0 + LEASE, "edge": T0}
    for execution_id in expected:  # C holds them now; their former holders are fenced out
        await storage.apply([ExecutionUpdate(execution_id, "processing", 1.0)], owner="C")
    with pytest.raises(LeaseLost):
        await storage.apply([ExecutionUpdate(expected[2], "pending")], owner="expired")
    for execution_id in [*live, *at_the_limit]:
        with pytest.raises(LeaseLost):
            await storage.apply([ExecutionUpdate(execution_id, "processing", 1.0)], owner="C")


async def test_claim_skips_finished_executions_and_returns_snapshots(storage: Storage) -> None:
    await storage.create(make_execution("exec_done", status="completed"))
    await storage.create(make_execution("exec_1", created_at=1.0))
    await storage.create(make_execution("exec_2", created_at=2.0), owner="A", lease_until=T0 - 1)
    await storage.apply([JobUpdate("exec_2", "job1", "completed", 1, 1.0, 2.0, CLIP)])
    await storage.apply([ExecutionUpdate("exec_1", "cancelled", None, 2.0)])

    claimed = await storage.claim("B", now=T0, lease_until=T0 + LEASE)

    assert claimed == [await storage.get("exec_2")]
    assert claimed[0].job("job1").result == CLIP


async def test_claim_returns_the_oldest_first_up_to_the_limit(storage: Storage) -> None:
    # creation order decides, not created_at
    ids = [f"exec_{n}" for n in (5, 3, 9, 1, 7, 2)]
    for n, execution_id in enumerate(ids):
        await storage.create(make_execution(execution_id, created_at=100.0 - n))

    first = await storage.claim("A", now=T0, lease_until=T0 + LEASE, limit=4)
    second = await storage.claim("B", now=T0, lease_until=T0 + LEASE, limit=4)
    nothing = await storage.claim("B", now=T0, lease_until=T0 + LEASE, limit=0)

    assert [e.id for e in first] == ids[:4]
    assert [e.id for e in second] == ids[4:]
    assert nothing == []
    assert await storage.claim("C", now=T0, lease_until=T0 + LEASE) == []


async def test_claim_by_ids_takes_only_those_and_finished_ones_too(storage: Storage) -> None:
    await storage.create(make_execution("exec_failed", status="failed"), owner="B")
    await storage.create(make_execution("exec_mine"), owner="A", lease_until=T0 + LEASE)
    await storage.create(make_execution("exec_free"))
    await storage.create(make_execution("exec_live"), owner="B", lease_until=T0 + LEASE)
    await storage.create(make_execution("exec_other"))

    claimed = await storage.claim(
        "A",
        now=T0,
        lease_until=T0 + 60,
        ids=["exec_live", "exec_free", "exec_nope", "exec_failed", "exec_free"],
    )

    assert [e.id for e in claimed] == ["exec_failed", "exec_free"]  # creation order
    assert claimed[0] == make_execution("exec_failed", status="failed")
    # resuming: the finished execution is A's now, and becomes unfinished again
    await storage.apply([ExecutionUpdate("exec_failed", "pending", generation=1)], owner="A")
    assert await storage.holders() == {"A": T0 + 60, "B": T0 + LEASE}
    assert await storage.renew("A", lease_until=T0 + 90) == {
        "exec_failed",
        "exec_free",
        "exec_mine",
    }
    assert await storage.claim("A", now=T0, lease_until=T0 + 90, ids=[]) == []
    assert [e.id for e in await storage.claim("C", now=T0, lease_until=T0 + 1)] == ["exec_other"]


async def test_renew_extends_every_lease_held_and_returns_the_held_set(storage: Storage) -> None:
    mine = await create_held(storage, 3, "A", lease_until=T0 + 5)
    await create_held(storage, 1, "B", lease_until=T0 + 5)
    await storage.create(make_execution("exec_done", status="completed"), owner="A")
    await storage.apply([ExecutionUpdate(mine[2], "completed", 1.0, 2.0, FINAL)], owner="A")

    held = await storage.renew("A", lease_until=T0 + 50)

    assert held == set(mine[:2])
    assert await storage.holders() == {"A": T0 + 50, "B": T0 + 5}
    # extended: not claimable at a time the old lease would have expired
    assert [e.id for e in await storage.claim("C", now=T0 + 10, lease_until=T0 + 40)] == [
        "exec_B_00"
    ]
    assert await storage.renew("nobody", lease_until=T0 + 50) == set()


async def test_renew_no_longer_returns_what_another_owner_took_over(storage: Storage) -> None:
    mine = await create_held(storage, 3, "A", lease_until=T0)
    await storage.renew("A", lease_until=T0 + 5)  # A is paused: its lease runs out

    taken = await storage.claim("B", now=T0 + 6, lease_until=T0 + 36, limit=2)

    assert [e.id for e in taken] == mine[:2]
    assert await storage.renew("A", lease_until=T0 + 40) == {mine[2]}
    with pytest.raises(LeaseLost) as caught:
        await storage.apply(
            [ExecutionUpdate(mine[1], "completed", 1.0, 2.0), ExecutionUpdate(mine[2], "pending")],
            owner="A",
        )
    assert caught.value.execution_ids == {mine[1]}
    assert await storage.holders() == {"A": T0 + 40, "B": T0 + 36}


async def test_release_makes_executions_claimable_at_once(storage: Storage) -> None:
    mine = await create_held(storage, 4, "A", lease_until=T0 + 999)
    others = await create_held(storage, 1, "B")

    await storage.release("A", [mine[0], others[0], "exec_nope"])
    assert [e.id for e in await storage.claim("C", now=T0, lease_until=T0 + 1)] == [mine[0]]
    assert await storage.holders() == {"A": T0 + 999, "B": T0 + LEASE, "C": T0 + 1}

    await storage.release("A")
    assert await storage.holders() == {"B": T0 + LEASE, "C": T0 + 1}
    assert await storage.renew("A", lease_until=T0 + 5) == set()
    with pytest.raises(LeaseLost):
        await storage.apply([ExecutionUpdate(mine[1], "processing", 1.0)], owner="A")
    claimed = await storage.claim("D", now=T0, lease_until=T0 + 1)
    assert [e.id for e in claimed] == mine[1:]
    await storage.release("A")  # nothing held: nothing happens
    await storage.release("D", [])


async def test_holders_lists_the_latest_lease_of_each_engine_on_unfinished_work(
    storage: Storage,
) -> None:
    assert await storage.holders() == {}
    await storage.create(make_execution("exec_1"), owner="A", lease_until=T0 + 1)
    await storage.create(make_execution("exec_2"), owner="A", lease_until=T0 + 7)
    await storage.create(make_execution("exec_3"), owner="B", lease_until=T0 + 2)
    await storage.create(make_execution("exec_4"), owner="C", lease_until=T0 + 9)
    await storage.create(make_execution("exec_5"), owner="D")  # held with no expiry
    await storage.create(make_execution("exec_6"))  # unheld
    await storage.create(make_execution("exec_7", status="completed"), owner="E")

    await storage.apply([ExecutionUpdate("exec_4", "completed", 1.0, 2.0)], owner="C")

    assert await storage.holders() == {"A": T0 + 7, "B": T0 + 2, "D": math.inf}
    # a finished execution stays held: its holder's late writes are accepted, others' are not
    await storage.apply([JobUpdate("exec_4", "job1", "cancelled", 0, None, 2.0)], owner="C")
    with pytest.raises(LeaseLost):
        await storage.apply([JobUpdate("exec_4", "job1", "cancelled", 0, None, 2.0)], owner="A")
    await storage.apply([ExecutionUpdate("exec_4", "processing", 1.0)], owner="C")
    assert await storage.holders() == {"A": T0 + 7, "B": T0 + 2, "C": T0 + 9, "D": math.inf}


async def test_racing_claimers_never_take_the_same_execution(storage: Storage) -> None:
    await create_held(storage, 50, None)
    taken: dict[str, list[str]] = {"A": [], "B": []}

    async def work(owner: str) -> None:
        while True:
            claimed = await storage.claim(owner, now=T0, lease_until=T0 + LEASE, limit=5)
            if not claimed:
                return
            taken[owner] += [e.id for e in claimed]
            done = [ExecutionUpdate(e.id, "completed", 1.0, 2.0, FINAL) for e in claimed]
            await storage.apply(done, owner=owner)  # never LeaseLost: no one else took them
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(work, "A")
        tg.start_soon(work, "B")

    assert not set(taken["A"]) & set(taken["B"])
    assert len(taken["A"]) + len(taken["B"]) == 50
    assert taken["A"]
    assert taken["B"]
    assert await storage.counts() == {"completed": 50}


# --- the webhook outbox --------------------------------------------------------------------------

HOOK = Webhook("https://hooks.example/video", secret="whsec_c2VjcmV0LWtleQ==")


def payload(execution_id: str) -> dict[str, Any]:
    return {
        "executionId": execution_id,
        "status": "completed",
        "video": {"url": "https://cdn.example/final.mp4", "duration": 8.5, "title": "«café»"},
    }


async def create_ended(
    storage: Storage,
    execution_id: str,
    owner: str | None,
    *,
    lease_until: float = T0 + LEASE,
    event_id: str | None = None,
) -> str:
    """An execution (held by ``owner``) that ended, its webhook event queued in the same apply,
    as the engine writes them; the event id."""
    execution = attrs.evolve(make_execution(execution_id, tenant="acme"), webhook=HOOK)
    await storage.create(execution, owner=owner, lease_until=lease_until)
    event_id = event_id or f"evt_{execution_id}_0"
    await storage.apply(
        [
            ExecutionUpdate(execution_id, "completed", 1.0, 2.0, FINAL),
            OutboxAdd(event_id, execution_id, "completed", payload(execution_id)),
        ],
        owner=owner,
    )
    return event_id


def attempt(
    event_id: str, execution_id: str, number: int, outcome: DeliveryOutcome = "retry"
) -> DeliveryAttempt:
    delivered = outcome == "delivered"
    return DeliveryAttempt(
        event_id=event_id,
        execution_id=execution_id,
        url="https://hooks.example/video",
        attempt=number,
        at=T0 + 10.0 * number,
        status_code=200 if delivered else (None if number % 2 else 503),
        error=None if delivered else "HTTP 503 «busy»",
        latency=0.125 * number,
        outcome=outcome,
        retry_at=T0 + 10.0 * number + 5.0 if outcome == "retry" else None,
    )


def notification_of(
    execution_id: str, event_id: str | None = None, attempts_made: int = 0
) -> Notification:
    return Notification(
        event_id=event_id or f"evt_{execution_id}_0",
        execution_id=execution_id,
        status="completed",
        payload=payload(execution_id),
        webhook=HOOK,
        tenant="acme",
        attempts_made=attempts_made,
    )


async def test_an_event_is_queued_with_its_ending_and_taken_over_from_a_dead_engine(
    storage: Storage,
) -> None:
    event_id = await create_ended(storage, "exec_1", "A")

    assert await storage.outbox_counts() == {"pending": 1}
    assert await storage.claim_outbox("B", now=T0, lease_until=T0 + LEASE) == []  # A is live
    assert await storage.claim_outbox("A", now=T0, lease_until=T0 + LEASE) == []  # A's own
    claimed = await storage.claim_outbox("B", now=T0, lease_until=T0 + 60, dead_owners=["A"])

    assert claimed == [notification_of("exec_1")]
    assert claimed[0].webhook is not None
    assert claimed[0].webhook.secret == HOOK.secret
    assert await storage.claim_outbox("C", now=T0, lease_until=T0 + 60, dead_owners=["A"]) == []
    # B holds the execution now: A's late writes are fenced out, B's accepted
    with pytest.raises(LeaseLost):
        await storage.apply([DeliveryRecorded(attempt(event_id, "exec_1", 1))], owner="A")
    await storage.apply([DeliveryRecorded(attempt(event_id, "exec_1", 1))], owner="B")
    assert await storage.holders() == {"B": T0 + 60}  # its event is still pending
    assert await storage.deliveries("exec_1") == [attempt(event_id, "exec_1", 1)]


async def test_the_delivery_log_keeps_every_field_oldest_first(storage: Storage) -> None:
    first = await create_ended(storage, "exec_1", "A")
    await create_ended(storage, "exec_2", "A")
    second = "evt_exec_1_1"  # the execution was resumed and ended again
    await storage.apply([OutboxAdd(second, "exec_1", "failed", {"status": "failed"})], owner="A")
    log = [
        attempt(first, "exec_1", 1),
        attempt(second, "exec_1", 1),
        attempt(first, "exec_1", 2),
        attempt("evt_exec_2_0", "exec_2", 1, "delivered"),
        attempt(first, "exec_1", 3, "failed"),
    ]

    await storage.apply([DeliveryRecorded(a) for a in log[:2]], owner="A")
    for entry in log[2:]:
        await storage.apply([DeliveryRecorded(entry)], owner="A")

    assert await storage.deliveries("exec_1") == [log[0], log[1], log[2], log[4]]
    assert await storage.deliveries("exec_2") == [log[3]]
    assert await storage.deliveries("exec_nope") == []
    claimed = await storage.claim_outbox("B", now=T0 + LEASE + 1, lease_until=T0 + 99)
    assert [(n.event_id, n.status, n.attempts_made) for n in claimed] == [
        (first, "completed", 3),
        ("evt_exec_2_0", "completed", 1),
        (second, "failed", 1),
    ]
    assert claimed[2].payload == {"status": "failed"}


async def test_done_events_are_not_claimed_and_a_reset_makes_one_pending_again(
    storage: Storage,
) -> None:
    ids = [await create_ended(storage, f"exec_{n}", "A") for n in range(4)]
    await storage.apply(
        [
            DeliveryRecorded(attempt(ids[0], "exec_0", 1, "delivered")),
            OutboxDone(ids[0], "exec_0", "delivered"),
            DeliveryRecorded(attempt(ids[1], "exec_1", 1, "failed")),
            OutboxDone(ids[1], "exec_1", "failed"),
            OutboxDone(ids[2], "exec_2", "notified"),
        ],
        owner="A",
    )
    assert await storage.outbox_counts() == {
        "delivered": 1,
        "failed": 1,
        "notified": 1,
        "pending": 1,
    }
    claimed = await storage.claim_outbox("B", now=T0, lease_until=T0 + 9, dead_owners=["A"])
    assert claimed == [notification_of("exec_3")]

    # redeliver: the engine takes the execution by id, then resets its event; the log is kept
    assert [e.id for e in await storage.claim("C", now=T0, lease_until=T0 + 9, ids=["exec_1"])]
    await storage.apply([OutboxReset(ids[1], "exec_1")], owner="C")

    assert await storage.outbox_counts() == {"delivered": 1, "notified": 1, "pending": 2}
    assert await storage.claim_outbox("D", now=T0, lease_until=T0 + 9) == []  # C holds it
    claimed = await storage.claim_outbox("D", now=T0, lease_until=T0 + 9, dead_owners=["C"])
    assert claimed == [notification_of("exec_1", attempts_made=1)]
    await storage.apply([OutboxReset(ids[1], "exec_1")], owner="D")  # harmless when pending
    await storage.apply([OutboxDone(ids[1], "exec_1", "delivered")], owner="D")
    assert await storage.outbox_counts() == {"delivered": 2, "notified": 1, "pending": 1}


async def test_an_event_id_is_added_once(storage: Storage) -> None:
    event_id = await create_ended(storage, "exec_1", "A")
    await storage.create(make_execution("exec_2"), owner="A", lease_until=T0 + LEASE)
    ending: list[Change] = [ExecutionUpdate("exec_2", "completed", 1.0, 2.0, FINAL)]

    with pytest.raises(StorageError, match="already exists") as caught:
        await storage.apply([*ending, OutboxAdd(event_id, "exec_2", "completed", {})], owner="A")
    assert not isinstance(caught.value, LeaseLost)
    twice = OutboxAdd("evt_new", "exec_2", "completed", {})
    with pytest.raises(StorageError, match="evt_new"):
        await storage.apply([*ending, twice, twice], owner="A")
    await storage.apply([OutboxDone(event_id, "exec_1", "delivered")], owner="A")
    with pytest.raises(StorageError, match="already exists"):  # done events too
        await storage.apply([OutboxAdd(event_id, "exec_1", "completed", {})], owner="A")

    assert await storage.counts() == {"completed": 1, "pending": 1}  # nothing of them applied
    assert await storage.outbox_counts() == {"delivered": 1}
    await storage.apply([*ending, twice], owner="A")
    assert await storage.outbox_counts() == {"delivered": 1, "pending": 1}


@pytest.mark.parametrize(
    "bad",
    [
        OutboxAdd("evt_x", "exec_nope", "completed", {}),
        DeliveryRecorded(attempt("evt_nope", "exec_1", 1)),
        DeliveryRecorded(attempt("evt_exec_2_0", "exec_1", 1)),  # another execution's event
        OutboxDone("evt_nope", "exec_1", "delivered"),
        OutboxReset("evt_nope", "exec_1"),
        OutboxReset("evt_exec_1_0", "exec_nope"),
    ],
    ids=[
        "add to unknown execution",
        "record unknown event",
        "record another execution's event",
        "done unknown event",
        "reset unknown event",
        "reset of unknown execution",
    ],
)
async def test_outbox_changes_are_all_or_nothing_with_the_rest(
    storage: Storage, bad: Change
) -> None:
    await create_ended(storage, "exec_1", None)
    await create_ended(storage, "exec_2", None)
    await storage.create(make_execution("exec_3"))
    good: list[Change] = [
        ExecutionUpdate("exec_3", "failed", 1.0, 2.0),
        OutboxAdd("evt_exec_3_0", "exec_3", "failed", {"status": "failed"}),
        DeliveryRecorded(attempt("evt_exec_1_0", "exec_1", 1)),
        OutboxDone("evt_exec_1_0", "exec_1", "failed"),
    ]

    with pytest.raises(StorageError, match=r"nope|exec_2_0"):
        await storage.apply([*good, bad, *good[2:]])

    assert await storage.counts() == {"completed": 2, "pending": 1}
    assert await storage.outbox_counts() == {"pending": 2}
    assert await storage.deliveries("exec_1") == []
    await storage.apply(good)  # the store still works
    assert await storage.outbox_counts() == {"pending": 2, "failed": 1}


async def test_an_event_added_earlier_in_the_same_apply_can_be_recorded(
    storage: Storage,
) -> None:
    await storage.create(make_execution("exec_1"), owner="A", lease_until=T0)
    later = DeliveryRecorded(attempt("evt_1", "exec_1", 1))
    add = OutboxAdd("evt_1", "exec_1", "completed", payload("exec_1"))

    with pytest.raises(StorageError, match="evt_1"):  # recorded before it is added
        await storage.apply([later, add], owner="A")
    await storage.apply([add, later, OutboxDone("evt_1", "exec_1", "failed")], owner="A")

    assert await storage.deliveries("exec_1") == [later.attempt]
    assert await storage.outbox_counts() == {"failed": 1}


async def test_outbox_changes_are_fenced_like_the_rest(storage: Storage) -> None:
    event_id = await create_ended(storage, "exec_1", "A")
    await storage.create(make_execution("exec_2"), owner="B", lease_until=T0 + LEASE)
    changes: list[Change] = [
        DeliveryRecorded(attempt(event_id, "exec_1", 1)),
        OutboxDone(event_id, "exec_1", "failed"),
        OutboxAdd("evt_2", "exec_2", "completed", {}),
        ExecutionUpdate("exec_2", "completed", 1.0, 2.0),
    ]

    with pytest.raises(LeaseLost) as caught:
        await storage.apply(changes, owner="B")
    assert caught.value.execution_ids == {"exec_1"}
    with pytest.raises(LeaseLost) as caught:
        await storage.apply([OutboxReset(event_id, "exec_1")], owner="B")

    assert await storage.deliveries("exec_1") == []
    assert await storage.outbox_counts() == {"pending": 1}
    assert await storage.counts() == {"completed": 1, "pending": 1}
    await storage.apply(changes)  # unfenced: applied
    assert await storage.outbox_counts() == {"failed": 1, "pending": 1}


async def test_a_payload_that_is_not_json_is_refused(storage: Storage) -> None:
    await storage.create(make_execution("exec_1"))

    with pytest.raises(StorageError, match="not JSON"):
        await storage.apply(
            [
                ExecutionUpdate("exec_1", "completed", 1.0, 2.0),
                OutboxAdd("evt_1", "exec_1", "completed", {"when": object()}),
            ]
        )

    assert await storage.counts() == {"pending": 1}
    assert await storage.outbox_counts() == {}


async def test_a_claimed_payload_is_a_copy(storage: Storage) -> None:
    await create_ended(storage, "exec_1", None)

    [first] = await storage.claim_outbox("A", now=T0, lease_until=T0 - 1)
    first.payload["video"]["url"] = "changed"
    [again] = await storage.claim_outbox("B", now=T0, lease_until=T0 + 1)

    assert again.payload == payload("exec_1")


async def test_claim_outbox_takes_events_of_claimable_executions_oldest_first(
    storage: Storage,
) -> None:
    # events are taken in the order they were added, whatever the executions' order
    await storage.create(make_execution("exec_resumed"), owner="dead", lease_until=T0 + LEASE)
    await storage.create(make_execution("exec_plain"), owner="dead", lease_until=T0 + LEASE)
    expected = [
        await create_ended(storage, "exec_free", None),
        await create_ended(storage, "exec_expired", "old", lease_until=T0 - 1),
        await create_ended(storage, "exec_dead", "dead"),
    ]
    # an unfinished execution with an event pending from an earlier ending: left alone
    await storage.apply(
        [OutboxAdd("evt_resumed", "exec_resumed", "failed", {"status": "failed"})], owner="dead"
    )
    # an execution with no webhook and no tenant
    await storage.apply(
        [
            ExecutionUpdate("exec_plain", "failed", 1.0, 2.0),
            OutboxAdd("evt_plain", "exec_plain", "failed", {"status": "failed"}),
        ],
        owner="dead",
    )
    expected.append("evt_plain")
    await storage.apply([OutboxAdd("evt_dead_1", "exec_dead", "failed", {})], owner="dead")
    expected.append("evt_dead_1")
    await create_ended(storage, "exec_live", "B")
    await create_ended(storage, "exec_mine", "C")  # the claimer's own: not re-taken
    await create_ended(storage, "exec_edge", "edge", lease_until=T0)  # not yet expired
    await create_ended(storage, "exec_done", None)
    await storage.apply([OutboxDone("evt_exec_done_0", "exec_done", "delivered")])

    claimed = await storage.claim_outbox(
        "C", now=T0, lease_until=T0 + 60, dead_owners=["dead", "nobody"]
    )

    assert [n.event_id for n in claimed] == expected
    assert [n.execution_id for n in claimed] == [
        "exec_free",
        "exec_expired",
        "exec_dead",
        "exec_plain",
        "exec_dead",
    ]
    assert claimed[3].webhook is None
    assert claimed[3].tenant is None
    # the holders of finished executions with pending events are reported, "old" no longer
    assert await storage.holders() == {
        "C": T0 + 60,
        "B": T0 + LEASE,
        "edge": T0,
        "dead": T0 + LEASE,
    }
    for execution_id in ("exec_free", "exec_expired", "exec_dead", "exec_plain"):
        await storage.apply(
            [OutboxAdd(f"evt_{execution_id}_9", execution_id, "completed", {})], owner="C"
        )
    for execution_id in ("exec_live", "exec_edge", "exec_resumed"):
        with pytest.raises(LeaseLost):
            await storage.apply(
                [OutboxAdd(f"evt_{execution_id}_9", execution_id, "completed", {})], owner="C"
            )


async def test_claim_outbox_leaves_the_events_of_unfinished_executions_to_claim(
    storage: Storage,
) -> None:
    first = await create_ended(storage, "exec_1", "A")
    # resumed while its event is still pending: the execution is claim()'s to take over
    await storage.apply([ExecutionUpdate("exec_1", "pending", generation=1)], owner="A")

    assert await storage.claim_outbox("B", now=T0, lease_until=T0 + 60, dead_owners=["A"]) == []
    assert await storage.claim_outbox("B", now=T0 + 99, lease_until=T0 + 120) == []  # expired
    await storage.release("A")
    assert await storage.claim_outbox("B", now=T0, lease_until=T0 + 60) == []  # unheld
    assert await storage.holders() == {}
    assert [e.id for e in await storage.claim("B", now=T0, lease_until=T0 + 60)] == ["exec_1"]
    # once it ends again, its events (the old one too) are the outbox's
    second = "evt_exec_1_1"
    await storage.apply(
        [
            ExecutionUpdate("exec_1", "failed", 1.0, 2.0, generation=1),
            OutboxAdd(second, "exec_1", "failed", {"status": "failed"}),
        ],
        owner="B",
    )
    claimed = await storage.claim_outbox("C", now=T0, lease_until=T0 + 9, dead_owners=["B"])
    assert [n.event_id for n in claimed] == [first, second]


async def test_holders_reports_finished_executions_with_pending_events(storage: Storage) -> None:
    a_pending = await create_ended(storage, "exec_a1", "A", lease_until=T0 + 5)
    a_done = await create_ended(storage, "exec_a2", "A", lease_until=T0 + 9)
    await storage.apply([OutboxDone(a_done, "exec_a2", "delivered")], owner="A")
    await storage.create(make_execution("exec_b1"), owner="B", lease_until=T0 + 3)
    b_pending = await create_ended(storage, "exec_b2", "B", lease_until=T0 + 8)
    await storage.create(make_execution("exec_c", status="completed"), owner="C")  # no event
    await create_ended(storage, "exec_free", None)

    # A holds only a finished execution whose event is pending (its lease expired or not); the
    # done one does not count, however late its lease
    assert await storage.holders() == {"A": T0 + 5, "B": T0 + 8}
    await storage.apply([OutboxDone(b_pending, "exec_b2", "failed")], owner="B")
    assert await storage.holders() == {"A": T0 + 5, "B": T0 + 3}
    await storage.apply([OutboxDone(a_pending, "exec_a1", "delivered")], owner="A")
    assert await storage.holders() == {"B": T0 + 3}
    await storage.apply([OutboxReset(a_pending, "exec_a1")], owner="A")
    assert await storage.holders() == {"A": T0 + 5, "B": T0 + 3}
    # a restarted engine sees A and takes its outbox; then D holds it
    claimed = await storage.claim_outbox("D", now=T0, lease_until=T0 + 60, dead_owners=["A"])
    assert [n.event_id for n in claimed] == [a_pending, "evt_exec_free_0"]
    assert await storage.holders() == {"B": T0 + 3, "D": T0 + 60}
    await storage.release("D", ["exec_a1"])
    assert await storage.holders() == {"B": T0 + 3, "D": T0 + 60}  # exec_free
    await storage.apply([OutboxDone("evt_exec_free_0", "exec_free", "delivered")], owner="D")
    assert await storage.holders() == {"B": T0 + 3}


async def test_renew_extends_finished_executions_with_pending_events(storage: Storage) -> None:
    pending = await create_ended(storage, "exec_pending", "A", lease_until=T0 + 5)
    done = await create_ended(storage, "exec_done", "A", lease_until=T0 + 5)
    await storage.apply([OutboxDone(done, "exec_done", "delivered")], owner="A")
    await storage.create(make_execution("exec_running"), owner="A", lease_until=T0 + 5)

    held = await storage.renew("A", lease_until=T0 + 50)

    assert held == {"exec_running"}  # the unfinished ones, as before
    assert await storage.holders() == {"A": T0 + 50}
    assert await storage.claim_outbox("B", now=T0 + 10, lease_until=T0 + 40) == []
    # exec_done was not extended: its lease ran out at T0 + 5
    await storage.apply([OutboxReset(done, "exec_done")], owner="A")
    claimed = await storage.claim_outbox("B", now=T0 + 10, lease_until=T0 + 40)
    assert [n.event_id for n in claimed] == [done]
    await storage.apply([OutboxDone(done, "exec_done", "delivered")], owner="B")
    # once delivered, a renewal no longer extends it
    await storage.apply([OutboxDone(pending, "exec_pending", "delivered")], owner="A")
    await storage.renew("A", lease_until=T0 + 90)
    await storage.apply([OutboxReset(pending, "exec_pending")], owner="A")
    assert await storage.claim_outbox("B", now=T0 + 60, lease_until=T0 + 99) == [
        notification_of("exec_pending")
    ]
    assert await storage.renew("B", lease_until=T0 + 100) == set()


async def test_racing_outbox_claimers_never_take_the_same_event(storage: Storage) -> None:
    for n in range(30):
        await create_ended(storage, f"exec_{n:02}", "dead")
    taken: dict[str, list[str]] = {"A": [], "B": [], "C": []}

    async def work(owner: str) -> None:
        for _ in range(3):
            claimed = await storage.claim_outbox(
                owner, now=T0, lease_until=T0 + LEASE, dead_owners=["dead"]
            )
            taken[owner] += [n.event_id for n in claimed]
            done = [OutboxDone(n.event_id, n.execution_id, "delivered") for n in claimed]
            await storage.apply(done, owner=owner)  # never LeaseLost: no one else took them
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        for owner in taken:
            tg.start_soon(work, owner)

    everything = [e for events in taken.values() for e in events]
    assert sorted(everything) == sorted(f"evt_exec_{n:02}_0" for n in range(30))
    assert await storage.outbox_counts() == {"delivered": 30}


# --- every backend agrees with the reference, on random steps ------------------------------------

STATUSES = ["pending", "processing", "completed", "failed", "cancelled"]
OWNERS = [None, "A", "B"]
ENGINES = ["A", "B", "C"]

create_step = st.tuples(
    st.just("create"),
    st.sampled_from([None, "", "acme"]),  # tenant
    st.sampled_from([None, "k1", "k2"]),  # idempotency key
    st.sampled_from([None, "fp1", "fp2"]),  # fingerprint
    st.integers(1, 3),  # jobs
    st.sampled_from(OWNERS),
    st.sampled_from([None, 2, 5]),  # lease_until
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
claim_step = st.tuples(
    st.just("claim"),
    st.sampled_from(ENGINES),
    st.integers(0, 6),  # now
    st.integers(1, 4),  # lease length
    st.sampled_from([None, 0, 1, 2]),  # limit
    st.none() | st.lists(st.integers(0, 5), max_size=3),  # ids
    st.lists(st.sampled_from(ENGINES), max_size=2),  # dead owners
)
renew_step = st.tuples(st.just("renew"), st.sampled_from(ENGINES), st.integers(0, 8))
release_step = st.tuples(
    st.just("release"),
    st.sampled_from(ENGINES),
    st.none() | st.lists(st.integers(0, 5), max_size=3),
)
outbox_step = st.tuples(
    st.just("outbox"),
    st.sampled_from(["add", "record", "done", "reset"]),
    st.integers(0, 4),  # which execution an added event is for (a stored one, if any)
    st.integers(0, 3),  # which event
    st.sampled_from(["delivered", "failed", "notified"]),  # done: as what
)
claim_outbox_step = st.tuples(
    st.just("claim_outbox"),
    st.sampled_from(ENGINES),
    st.integers(0, 6),  # now
    st.integers(1, 4),  # lease length
    st.lists(st.sampled_from(ENGINES), max_size=2),  # dead owners
)
steps = st.lists(
    st.tuples(
        st.sampled_from(OWNERS),  # the owner this batch's apply is fenced by
        st.booleans(),  # outbox changes in the same apply as the others, or in one of their own
        st.lists(
            st.one_of(
                create_step,
                job_step,
                execution_step,
                claim_step,
                renew_step,
                release_step,
                outbox_step,
                claim_outbox_step,
            ),
            min_size=1,
            max_size=4,
        ),
    ),
    min_size=1,
    max_size=12,
)


def _target(ids: list[str], n: int) -> str:
    return ids[n % len(ids)] if ids and n < 5 else "exec_unknown"


def _changes(batch: list[tuple[Any, ...]], ids: list[str], events: dict[str, str]) -> list[Change]:
    """The batch's changes. Outbox changes name an event's own execution when it was added
    (``events``, which this updates as if the apply succeeds), else some other execution."""
    changes: list[Change] = []
    for step in batch:
        if step[0] == "outbox":
            _, kind, n, k, done = step
            if kind == "add":
                event_id, execution_id = f"evt_{k}", _target(ids, n)
                changes.append(OutboxAdd(event_id, execution_id, "completed", {"n": n}))
                events.setdefault(event_id, execution_id)
                continue
            # an event added already (mostly), with its execution; or one never added
            known = sorted(events)
            event_id = known[k % len(known)] if known and k < 3 else f"evt_{k}"
            execution_id = events.get(event_id, _target(ids, n))
            if kind == "record":
                changes.append(DeliveryRecorded(attempt(event_id, execution_id, 1 + n % 3)))
            elif kind == "done":
                changes.append(OutboxDone(event_id, execution_id, done))
            else:
                changes.append(OutboxReset(event_id, execution_id))
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


def _ownership_call(store: Storage, step: tuple[Any, ...], ids: list[str]) -> Any:
    kind = step[0]
    if kind == "claim":
        _, owner, now, length, limit, targets, dead = step
        return store.claim(
            owner,
            now=float(now),
            lease_until=float(now + length),
            limit=limit,
            ids=None if targets is None else [_target(ids, n) for n in targets],
            dead_owners=dead,
        )
    if kind == "renew":
        _, owner, lease_until = step
        return store.renew(owner, lease_until=float(lease_until))
    if kind == "claim_outbox":
        _, owner, now, length, dead = step
        return store.claim_outbox(
            owner, now=float(now), lease_until=float(now + length), dead_owners=dead
        )
    _, owner, targets = step
    return store.release(owner, None if targets is None else [_target(ids, n) for n in targets])


async def _outcome(call: Any) -> Any:
    try:
        return await call
    except LeaseLost as exc:
        return LeaseLost, exc.execution_ids
    except (IdempotencyConflict, StorageError) as exc:
        return type(exc)


@settings(  # examples: as many as the profile says (tests/conftest.py)
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=steps)
async def test_every_backend_agrees_with_memory(
    steps: list[tuple[str | None, bool, list[tuple[Any, ...]]]],
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        reference = MemoryStorage()
        others = [make(Path(directory)) for name, make in BACKENDS.items() if name != "memory"]
        stores = [reference, *others]
        for store in stores:
            await store.open()
        try:
            ids: list[str] = []
            events: dict[str, str] = {}  # added event ids: their executions
            for owner, together, batch in steps:
                for n, step in enumerate(batch):
                    if step[0] == "create":
                        _, tenant, key, fingerprint, jobs, holder, lease_until = step
                        execution = make_execution(
                            f"exec_{len(ids)}_{n}",
                            created_at=float(len(ids)),
                            tenant=tenant,
                            idempotency_key=key,
                            jobs=jobs,
                        )
                        if tenant == "acme":
                            execution = attrs.evolve(execution, webhook=HOOK)
                        outcomes = [
                            await _outcome(
                                s.create(
                                    execution, fingerprint, owner=holder, lease_until=lease_until
                                )
                            )
                            for s in stores
                        ]
                        if isinstance(outcomes[0], Execution) and outcomes[0].id not in ids:
                            ids.append(outcomes[0].id)
                    elif step[0] in ("claim", "renew", "release", "claim_outbox"):
                        outcomes = [await _outcome(_ownership_call(s, step, ids)) for s in stores]
                    else:
                        continue
                    assert all(o == outcomes[0] for o in outcomes), (step, outcomes)
                outbox = [step for step in batch if step[0] == "outbox"]
                others_first = [step for step in batch if step[0] != "outbox"]
                for part in [batch] if together else [others_first, outbox]:
                    proposed = dict(events)
                    changes = _changes(part, ids, proposed)
                    outcomes = [await _outcome(s.apply(changes, owner=owner)) for s in stores]
                    assert all(o == outcomes[0] for o in outcomes), (owner, changes, outcomes)
                    if outcomes[0] is None:
                        events = proposed
                for store in others:
                    assert await store.counts() == await reference.counts()
                    assert await store.unfinished() == await reference.unfinished()
                    assert await store.holders() == await reference.holders()
                    assert await store.outbox_counts() == await reference.outbox_counts()
                    for execution_id in ids:
                        assert await store.get(execution_id) == await reference.get(execution_id)
                        assert await store.deliveries(execution_id) == (
                            await reference.deliveries(execution_id)
                        )
        finally:
            for store in stores:
                await store.close()


# --- the outbox, on random engine-like steps: every backend agrees with the reference -----------

OUTBOX_ENGINES = ["A", "B", "C"]
_which = st.integers(0, 3)  # which execution
_event = st.integers(0, 4)  # which of the events added so far (4: one never added)
outbox_steps = st.lists(
    st.tuples(
        st.one_of(
            st.tuples(  # an execution ends, its event queued in the same apply
                st.just("end"),
                _which,
                st.sampled_from([0, 0, 1]),  # which of its endings: its event id
                st.sampled_from(["completed", "failed", "cancelled"]),
            ),
            st.tuples(st.just("record"), _event, st.sampled_from(["delivered", "retry", "failed"])),
            st.tuples(
                st.just("done"), _event, st.sampled_from(["delivered", "failed", "notified"])
            ),
            st.tuples(st.just("reset"), _event),
            st.tuples(st.just("resume"), _which),  # unfinished again
            st.tuples(
                st.just("claim_outbox"),
                st.integers(0, 8),  # now
                st.integers(1, 6),  # lease length
                st.lists(st.sampled_from(OUTBOX_ENGINES), max_size=2),  # dead owners
            ),
            st.tuples(st.just("claim_ids"), st.integers(0, 8), _which),
            st.tuples(st.just("claim"), st.integers(0, 8)),
            st.tuples(st.just("renew"), st.integers(0, 12)),
            st.tuples(st.just("release"), st.none() | _which),
        ),
        # the engine taking the step; None: an apply fenced by no owner; "holder": the one that
        # holds the execution (in the reference), so that deliveries go on
        st.sampled_from([None, "holder", "holder", *OUTBOX_ENGINES]),
    ),
    min_size=1,
    max_size=25,
)


def _outbox_call(
    store: Storage,
    step: tuple[Any, ...],
    engine: str | None,
    added: list[tuple[str, str]],
    counts: dict[str, int],
) -> Any:
    """The step's call on ``store``. ``engine`` is resolved already (``holder`` too);
    ``added``: the events added so far, with their executions; ``counts``: the attempts recorded
    so far per event, to number the next."""
    kind = step[0]
    owner = engine or "A"  # who claims, renews or releases when the step names no engine
    if kind in ("record", "done", "reset"):
        event_id, execution_id = _outbox_target(step, added)
        changes: list[Change]
        if kind == "record":
            counts[event_id] = counts.get(event_id, 0) + 1
            made = attempt(event_id, execution_id, counts[event_id], step[2])
            changes = [DeliveryRecorded(made)]
        elif kind == "done":
            changes = [OutboxDone(event_id, execution_id, step[2])]
        else:
            changes = [OutboxReset(event_id, execution_id)]
        return store.apply(changes, owner=engine)
    if kind == "end":
        _, n, generation, status = step
        execution_id, event_id = f"exec_{n}", f"evt_{n}_{generation}"
        ending: list[Change] = [
            ExecutionUpdate(execution_id, status, 1.0, 2.0, generation=generation),
            OutboxAdd(event_id, execution_id, status, {"executionId": execution_id}),
        ]
        return store.apply(ending, owner=engine)
    if kind == "resume":
        resumed = ExecutionUpdate(f"exec_{step[1]}", "pending", generation=1)
        return store.apply([resumed], owner=engine)
    if kind == "claim_outbox":
        _, now, length, dead = step
        return store.claim_outbox(
            owner, now=float(now), lease_until=float(now + length), dead_owners=dead
        )
    if kind == "claim_ids":
        _, now, n = step
        return store.claim(owner, now=float(now), lease_until=float(now + 5), ids=[f"exec_{n}"])
    if kind == "claim":
        return store.claim(owner, now=float(step[1]), lease_until=float(step[1] + 5))
    if kind == "renew":
        return store.renew(owner, lease_until=float(step[1]))
    return store.release(owner, None if step[1] is None else [f"exec_{step[1]}"])


def _outbox_target(step: tuple[Any, ...], added: list[tuple[str, str]]) -> tuple[str, str]:
    """The event (and its execution) a record, done or reset step names; an execution for the
    others that name one, with no event."""
    if step[0] in ("record", "done", "reset"):
        n = step[1]
        return added[n % len(added)] if added and n < 4 else ("evt_x", "exec_0")
    if step[0] in ("end", "resume"):
        return "", f"exec_{step[1]}"
    return "", ""


@settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=outbox_steps)
async def test_every_backend_agrees_with_memory_on_the_outbox(
    steps: list[tuple[tuple[Any, ...], str | None]],
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        reference = MemoryStorage()
        others = [make(Path(directory)) for name, make in BACKENDS.items() if name != "memory"]
        stores = [reference, *others]
        # four executions: unheld, held by A and B for a while, held by A with no expiry; all
        # but one with a webhook; the first two ended, with their events queued
        holders: list[tuple[str | None, float | None]] = [
            (None, None),
            ("A", 4.0),
            ("B", 4.0),
            ("A", None),
        ]
        ids = [f"exec_{n}" for n in range(len(holders))]
        for store in stores:
            await store.open()
            for n, (holder, lease_until) in enumerate(holders):
                execution = make_execution(ids[n], created_at=float(n), jobs=1)
                if n != 2:
                    execution = attrs.evolve(execution, webhook=HOOK, tenant=f"t{n}")
                await store.create(execution, owner=holder, lease_until=lease_until)
            for n in (0, 1):
                await _outbox_call(store, ("end", n, 0, "completed"), holders[n][0], [], {})
        try:
            added = [("evt_0_0", "exec_0"), ("evt_1_0", "exec_1")]
            attempts: list[dict[str, int]] = [{} for _ in stores]
            for step, chosen in steps:
                engine = chosen
                if chosen == "holder":
                    engine = reference.holder(_outbox_target(step, added)[1])
                outcomes = [
                    await _outcome(_outbox_call(store, step, engine, added, counts))
                    for store, counts in zip(stores, attempts, strict=True)
                ]
                assert all(o == outcomes[0] for o in outcomes), (step, engine, outcomes)
                if step[0] == "end" and outcomes[0] is None:
                    added.append((f"evt_{step[1]}_{step[2]}", f"exec_{step[1]}"))
                for store in others:
                    assert await store.outbox_counts() == await reference.outbox_counts()
                    assert await store.holders() == await reference.holders()
                    for execution_id in ids:
                        assert await store.get(execution_id) == await reference.get(execution_id)
                        assert await store.deliveries(execution_id) == (
                            await reference.deliveries(execution_id)
                        )
        finally:
            for store in stores:
                await store.close()

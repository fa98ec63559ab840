"""The PostgreSQL job board on the real server of this machine.

Each test runs in a fresh schema with a random name, dropped after. The suite is skipped, with
the reason, only when the server at :data:`DSN` does not answer.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence

import anyio
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pg_support import DSN, drop_schema, needs_postgres
from strategies import chain_plans, plans

from adapters.postgres import PostgresBoard
from engine.errors import IdempotencyConflict, InvalidState, StorageError, UnknownExecution
from engine.models import BoardEvent, Claim, ErrorInfo, Execution, JobInfo, Video, Webhook
from engine.plan import ExecutionPlan

T0 = 1_700_000_000.0
HOOK = Webhook("https://hooks.example/done", "s3cret")

pytestmark = [pytest.mark.anyio, needs_postgres]


@pytest.fixture
async def board(schema: str) -> AsyncIterator[PostgresBoard]:
    async with PostgresBoard(DSN, schema=schema, pool_max=12) as b:
        await b.register("w1", now=T0, lease_until=T0 + 30)
        yield b


# --- helpers ---------------------------------------------------------------------------------


def gen(job_id: str) -> JobInfo:
    return JobInfo(job_id, "generate", {"prompt": job_id, "duration": 2, "aspectRatio": "16:9"})


def merge(job_id: str, *deps: str) -> JobInfo:
    return JobInfo(job_id, "merge", {"transition": "none"}, deps)


def transform(job_id: str, kind: str, *deps: str) -> JobInfo:
    params = {"reframe": {"aspectRatio": "9:16"}, "lipSync": {"audioUrl": "https://a/v.mp3"}}
    return JobInfo(job_id, kind, params.get(kind, {"language": "fr"}), deps)


def execution(
    execution_id: str,
    jobs: Sequence[JobInfo],
    *,
    base: str | None = None,
    webhook: Webhook | None = HOOK,
    tenant: str | None = None,
    key: str | None = None,
) -> Execution:
    return Execution(
        id=execution_id,
        status="pending",
        jobs=tuple(jobs),
        created_at=T0,
        base_execution_id=base,
        webhook=webhook,
        tenant=tenant,
        idempotency_key=key,
    )


def from_plan(execution_id: str, plan: ExecutionPlan, base: str | None = None) -> Execution:
    jobs = [JobInfo(j.id, j.type, dict(j.params), tuple(j.depends_on)) for j in plan.jobs]
    return execution(execution_id, jobs, base=base)


def video(name: str) -> Video:
    return Video(f"https://cdn.example/{name}.mp4", 2.0, "16:9", 1280, 720)


def refs(claims: Sequence[Claim]) -> list[tuple[str, str]]:
    return sorted(c.ref for c in claims)


async def run_all(board: PostgresBoard, now: float, engine: str = "w1") -> list[Claim]:
    """Claim whatever is ready and complete it (each job's video named after it)."""
    claims = await board.claim(engine, limit=100, now=now)
    await board.complete([(c, video(f"{c.ref[0]}-{c.ref[1]}")) for c in claims], now=now)
    return claims


BASE_JOBS = [gen("job1"), gen("job2"), merge("job3", "job1", "job2")]


# --- the plan, in dependency order -----------------------------------------------------------


async def test_a_five_job_plan_runs_in_dependency_order(board: PostgresBoard) -> None:
    jobs = [gen("job1"), gen("job2"), gen("job3"), merge("job4", "job1", "job2", "job3")]
    jobs.append(transform("job5", "reframe", "job4"))
    stored = await board.submit(execution("e1", jobs), "fp", now=T0)
    assert stored.status == "pending"
    assert [j.status for j in stored.jobs] == ["pending"] * 5

    first = await board.claim("w1", limit=10, now=T0 + 1)
    assert refs(first) == [("e1", "job1"), ("e1", "job2"), ("e1", "job3")]
    assert all(c.request.attempt == 1 and c.request.inputs == () for c in first)
    assert first[0].request.idempotency_key == "e1/job1"
    assert (await board.get("e1")).status == "processing"  # type: ignore[union-attr]
    assert await board.claim("w1", limit=10, now=T0 + 1) == []

    # job4 waits for all three: two completions leave it waiting
    by_id = {c.request.job_id: c for c in first}
    await board.complete([(by_id["job3"], video("c3")), (by_id["job1"], video("c1"))], now=T0 + 2)
    assert await board.claim("w1", limit=10, now=T0 + 2) == []
    await board.complete([(by_id["job2"], video("c2"))], now=T0 + 3)
    (merge_claim,) = await board.claim("w1", limit=10, now=T0 + 3)
    assert merge_claim.ref == ("e1", "job4")
    assert merge_claim.request.inputs == (video("c1"), video("c2"), video("c3"))  # dependsOn order

    await board.complete([(merge_claim, video("m"))], now=T0 + 4)
    (last,) = await board.claim("w1", limit=10, now=T0 + 4)
    assert last.ref == ("e1", "job5")
    assert last.request.inputs == (video("m"),)
    outcome = await board.complete([(last, video("final"))], now=T0 + 5)
    assert [(e.execution_id, e.status, e.result) for e in outcome.ended] == [
        ("e1", "completed", video("final"))
    ]
    done = await board.get("e1")
    assert done is not None
    assert done.status == "completed" and done.result == video("final")
    assert done.completed_at == T0 + 5 and done.started_at == T0 + 1
    assert [j.status for j in done.jobs] == ["completed"] * 5
    assert done.job("job4").depends_on == ("job1", "job2", "job3")
    events = await board.outbox("e1")
    assert [(e[0], e[1], e[2]) for e in events] == [("evt_e1_0", "completed", "pending")]
    assert list(events[0][3]) == ["executionId", "status", "video"]  # payload_for's key order
    assert await board.counts() == {"completed": 1}


async def test_group_commit_shares_transactions_between_concurrent_callers(
    board: PostgresBoard,
) -> None:
    count = 120
    for n in range(count):
        await board.submit(execution(f"e{n}", [gen("job1")], webhook=None), None, now=T0)
    claims = await board.claim("w1", limit=count, now=T0 + 1)
    assert len(claims) == count
    ended: list[str] = []

    async def one(claim: Claim) -> None:
        outcome = await board.complete([(claim, video(claim.ref[0]))], now=T0 + 2)
        assert outcome.refused == ()
        ended.extend(e.execution_id for e in outcome.ended)

    async with anyio.create_task_group() as tg:
        for claim in claims:
            tg.start_soon(one, claim)
    assert sorted(ended) == sorted(f"e{n}" for n in range(count))
    # Callers that start together (a claimed batch finishing at once) share one transaction:
    # the writer lets the already scheduled callers queue up before it takes the batch.
    assert board.complete_transactions == 1
    assert await board.counts() == {"completed": count}


# --- variants and chains ---------------------------------------------------------------------


async def test_variants_wait_for_the_base_then_run_at_once(board: PostgresBoard) -> None:
    await board.submit(execution("base", BASE_JOBS), None, now=T0)
    lip = [transform("job1", "lipSync"), transform("job2", "addSubtitles", "job1")]
    await board.submit(execution("fr", lip, base="base"), None, now=T0)
    fresh = [gen("job1"), transform("job2", "reframe", "job1")]
    await board.submit(execution("new", fresh, base="base"), None, now=T0)

    gens = await board.claim("w1", limit=10, now=T0 + 1)
    assert refs(gens) == [("base", "job1"), ("base", "job2")]  # no variant root yet
    await board.complete([(c, video(c.ref[1])) for c in gens], now=T0 + 2)
    (merged,) = await board.claim("w1", limit=10, now=T0 + 2)
    assert merged.ref == ("base", "job3")
    await board.complete([(merged, video("base-final"))], now=T0 + 3)

    roots = await board.claim("w1", limit=10, now=T0 + 3)
    assert refs(roots) == [("fr", "job1"), ("new", "job1")]  # both variants at once
    by_exec = {c.ref[0]: c for c in roots}
    assert by_exec["fr"].request.inputs == (video("base-final"),)  # the base's video
    assert by_exec["new"].request.inputs == ()  # order-only edge: a new clip
    await board.complete([(c, video(c.ref[0])) for c in roots], now=T0 + 4)
    tails = await board.claim("w1", limit=10, now=T0 + 4)
    assert refs(tails) == [("fr", "job2"), ("new", "job2")]
    outcome = await board.complete([(c, video(f"{c.ref[0]}-out")) for c in tails], now=T0 + 5)
    assert sorted(e.execution_id for e in outcome.ended) == ["fr", "new"]


async def test_a_chain_of_variants_passes_each_final_video_on(board: PostgresBoard) -> None:
    await board.submit(execution("base", BASE_JOBS), None, now=T0)
    await board.submit(execution("v1", [transform("job1", "reframe")], base="base"), None, now=T0)
    await board.submit(execution("v2", [transform("job1", "lipSync")], base="v1"), None, now=T0)
    seen: list[tuple[str, str]] = []
    now = T0
    while True:
        now += 1
        claims = await run_all(board, now)
        if not claims:
            break
        seen.extend(refs(claims))
    assert seen == [
        ("base", "job1"),
        ("base", "job2"),
        ("base", "job3"),
        ("v1", "job1"),
        ("v2", "job1"),
    ]
    v2 = await board.get("v2")
    assert v2 is not None and v2.status == "completed"
    assert v2.result == video("v2-job1")


async def test_a_variant_of_a_completed_base_is_ready_at_once(board: PostgresBoard) -> None:
    await board.submit(execution("base", BASE_JOBS), None, now=T0)
    for step in range(2):
        await run_all(board, T0 + 1 + step)
    assert (await board.get("base")).status == "completed"  # type: ignore[union-attr]
    await board.submit(execution("v", [transform("job1", "reframe")], base="base"), None, now=T0)
    (claim,) = await board.claim("w1", limit=5, now=T0 + 5)
    assert claim.request.inputs == (video("base-job3"),)


async def test_a_variant_of_a_failed_base_is_stored_failed(board: PostgresBoard) -> None:
    await board.submit(execution("base", [gen("job1")]), None, now=T0)
    (claim,) = await board.claim("w1", limit=5, now=T0 + 1)
    await board.fail(claim, "boom", retry_at=None, now=T0 + 2)
    stored = await board.submit(
        execution("v", [transform("job1", "reframe")], base="base"), None, now=T0 + 3
    )
    assert stored.status == "failed"
    assert stored.error == ErrorInfo("base_failed", "base execution base failed")
    assert (await board.get("v")) == stored
    assert [e[0] for e in await board.outbox("v")] == ["evt_v_0"]
    assert await board.claim("w1", limit=5, now=T0 + 4) == []


async def test_an_unknown_or_foreign_base_is_unknown(board: PostgresBoard) -> None:
    await board.submit(execution("base", [gen("job1")], tenant="acme"), None, now=T0)
    with pytest.raises(UnknownExecution):
        await board.submit(execution("v", [gen("job1")], base="nope"), None, now=T0)
    with pytest.raises(UnknownExecution):
        await board.submit(execution("v", [gen("job1")], base="base", tenant="other"), None, now=T0)
    assert await board.get("v") is None


# --- leases, rescue, fencing, retries --------------------------------------------------------


async def test_a_rescued_jobs_old_token_is_refused(board: PostgresBoard) -> None:
    await board.submit(execution("e", [gen("job1"), gen("job2")]), None, now=T0)
    await board.register("zombie", now=T0, lease_until=T0 + 10)
    zombie = await board.claim("zombie", limit=5, now=T0 + 1)
    assert len(zombie) == 2
    assert await board.rescue(now=T0 + 5) == 0  # lease still running
    assert await board.heartbeat("zombie", now=T0 + 5, lease_until=T0 + 15)
    assert await board.rescue(now=T0 + 16) == 2  # expired: both go back
    assert not await board.heartbeat("zombie", now=T0 + 17, lease_until=T0 + 27)
    await board.heartbeat("w1", now=T0 + 16, lease_until=T0 + 60)

    again = await board.claim("w1", limit=5, now=T0 + 17)
    assert refs(again) == refs(zombie)
    assert [c.request.attempt for c in again] == [2, 2]  # same key, next attempt
    assert {c.request.idempotency_key for c in again} == {"e/job1", "e/job2"}

    late = await board.complete([(zombie[0], video("zombie"))], now=T0 + 18)
    assert late.refused == (zombie[0],)
    refused = await board.fail(zombie[1], "late failure", retry_at=None, now=T0 + 18)
    assert refused.refused and refused.ended == ()
    assert board.refused_total == 2

    await board.complete([(c, video("good")) for c in again], now=T0 + 19)
    twice = await board.complete([(again[0], video("twice"))], now=T0 + 20)
    assert twice.refused == (again[0],)
    done = await board.get("e")
    assert done is not None
    assert [(j.status, j.attempts, j.result) for j in done.jobs] == [
        ("completed", 2, video("good"))
    ] * 2


async def test_release_hands_jobs_back_at_once(board: PostgresBoard) -> None:
    await board.submit(execution("e", [gen("job1")]), None, now=T0)
    await board.register("w2", now=T0, lease_until=T0 + 30)
    (claim,) = await board.claim("w2", limit=5, now=T0 + 1)
    assert [(e.id, e.running) for e in await board.engines(now=T0 + 1)] == [("w1", 0), ("w2", 1)]
    assert await board.running_by_type() == {"generate": 1}
    assert await board.release("w2") == 1
    assert [e.id for e in await board.engines(now=T0 + 1)] == ["w1"]
    (again,) = await board.claim("w1", limit=5, now=T0 + 1)
    assert again.ref == claim.ref and again.request.attempt == 2
    assert (await board.complete([(claim, video("x"))], now=T0 + 2)).refused == (claim,)


async def test_a_retry_waits_for_its_run_at(board: PostgresBoard) -> None:
    await board.submit(execution("e", [gen("job1")]), None, now=T0)
    (claim,) = await board.claim("w1", limit=5, now=T0 + 1)
    outcome = await board.fail(claim, "flaky", retry_at=T0 + 11, now=T0 + 1)
    assert not outcome.refused and outcome.ended == ()
    assert await board.claim("w1", limit=5, now=T0 + 10) == []
    (again,) = await board.claim("w1", limit=5, now=T0 + 11)
    assert again.request.attempt == 2
    await board.complete([(again, video("ok"))], now=T0 + 12)
    assert (await board.get("e")).status == "completed"  # type: ignore[union-attr]


# --- failure, cancel, resume -----------------------------------------------------------------


async def _family(board: PostgresBoard) -> None:
    """base (job1, job2 -> job3), v1 on base, v2 on v1, v3 on base."""
    await board.submit(execution("base", BASE_JOBS), None, now=T0)
    await board.submit(execution("v1", [transform("j", "reframe")], base="base"), None, now=T0)
    await board.submit(execution("v2", [transform("j", "lipSync")], base="v1"), None, now=T0)
    await board.submit(execution("v3", [gen("j")], base="base"), None, now=T0)


async def test_a_failure_fails_the_execution_and_its_dependents(board: PostgresBoard) -> None:
    await _family(board)
    one, two = await board.claim("w1", limit=5, now=T0 + 1)
    outcome = await board.fail(one, "provider said no", retry_at=None, now=T0 + 2)
    assert [(e.execution_id, e.status, e.error) for e in outcome.ended] == [
        ("base", "failed", ErrorInfo("job_failed", "provider said no", "job1")),
        ("v1", "failed", ErrorInfo("base_failed", "base execution base failed")),
        ("v3", "failed", ErrorInfo("base_failed", "base execution base failed")),
        ("v2", "failed", ErrorInfo("base_failed", "base execution v1 failed")),
    ]
    assert outcome.aborted == (two.ref,)  # the sibling that was running
    base = await board.get("base")
    assert base is not None
    assert [j.status for j in base.jobs] == ["failed", "cancelled", "cancelled"]
    assert (await board.complete([(two, video("late"))], now=T0 + 3)).refused == (two,)
    assert await board.claim("w1", limit=5, now=T0 + 3) == []
    for name in ("base", "v1", "v2", "v3"):
        assert [e[0] for e in await board.outbox(name)] == [f"evt_{name}_0"]
    assert await board.counts() == {"failed": 4}


async def test_cancel_cancels_and_fails_dependents_once(board: PostgresBoard) -> None:
    await _family(board)
    running = await board.claim("w1", limit=5, now=T0 + 1)
    outcome = await board.cancel("base", now=T0 + 2, reason="user asked")
    assert [(e.execution_id, e.status) for e in outcome.ended] == [
        ("base", "cancelled"),
        ("v1", "failed"),
        ("v3", "failed"),
        ("v2", "failed"),
    ]
    assert outcome.ended[0].error == ErrorInfo("cancelled", "user asked")
    assert outcome.ended[1].error == ErrorInfo("base_failed", "base execution base cancelled")
    assert outcome.aborted == tuple(refs(running))
    again = await board.cancel("base", now=T0 + 3, reason="twice")
    assert again.ended == () and again.aborted == ()
    with pytest.raises(UnknownExecution):
        await board.cancel("nope", now=T0, reason="x")
    refused = await board.complete([(c, video("late")) for c in running], now=T0 + 4)
    assert len(refused.refused) == 2
    for name in ("base", "v1", "v2", "v3"):
        assert len(await board.outbox(name)) == 1


async def test_resume_runs_again_from_where_it_stopped(board: PostgresBoard) -> None:
    await _family(board)
    one, two = await board.claim("w1", limit=5, now=T0 + 1)
    await board.complete([(two, video("kept"))], now=T0 + 2)
    await board.fail(one, "boom", retry_at=None, now=T0 + 3)
    with pytest.raises(InvalidState, match="resume it first"):
        await board.resume("v1", now=T0 + 4)
    resumed = await board.resume("base", now=T0 + 4)
    assert resumed.status == "processing" and resumed.generation == 1
    assert [j.status for j in resumed.jobs] == ["pending", "completed", "pending"]
    with pytest.raises(InvalidState):
        await board.resume("base", now=T0 + 4)
    await board.resume("v1", now=T0 + 4)  # its base runs again: it waits for it
    await board.resume("v2", now=T0 + 4)
    (retried,) = await board.claim("w1", limit=5, now=T0 + 5)
    assert retried.ref == ("base", "job1") and retried.request.attempt == 2
    now = T0 + 5
    await board.complete([(retried, video("c1"))], now=now)
    while await run_all(board, now := now + 1):
        pass
    base = await board.get("base")
    assert base is not None and base.status == "completed"
    (merge_info,) = [j for j in base.jobs if j.id == "job3"]
    assert merge_info.status == "completed"
    assert [(await board.get(n)).status for n in ("v1", "v2", "v3")] == [  # type: ignore[union-attr]
        "completed",
        "completed",
        "failed",
    ]
    assert [e[0] for e in await board.outbox("base")] == ["evt_base_0", "evt_base_1"]


# --- idempotency ----------------------------------------------------------------------------


async def test_concurrent_idempotent_submits_make_one_execution(schema: str) -> None:
    async with (
        PostgresBoard(DSN, schema=schema) as one,
        PostgresBoard(DSN, schema=schema) as two,
    ):
        stored: list[Execution] = []

        async def submit(board: PostgresBoard, n: int, fingerprint: str) -> None:
            stored.append(
                await board.submit(
                    execution(f"e{n}", BASE_JOBS, key="k1", tenant="acme"), fingerprint, now=T0
                )
            )

        async with anyio.create_task_group() as tg:
            for n in range(6):
                tg.start_soon(submit, one if n % 2 else two, n, "same")
        assert len({s.id for s in stored}) == 1
        assert (await one.counts()) == {"pending": 1}

        conflicts: list[Exception] = []

        async def other(board: PostgresBoard, n: int) -> None:
            try:
                await submit(board, 10 + n, "another")
            except IdempotencyConflict as exc:
                conflicts.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(other, one, 0)
            tg.start_soon(other, two, 1)
        assert len(conflicts) == 2
        # the key is scoped per tenant: another tenant may use it
        fresh = await one.submit(execution("x", BASE_JOBS, key="k1"), "another", now=T0)
        assert fresh.id == "x"
        assert (await one.counts()) == {"pending": 2}


# --- per-type limits -------------------------------------------------------------------------


async def test_a_type_limit_holds_under_concurrent_claimers(board: PostgresBoard) -> None:
    for n in range(30):
        await board.submit(execution(f"e{n}", [gen("job1")], webhook=None), None, now=T0)
        await board.submit(
            execution(f"m{n}", [transform("job1", "reframe")], base=f"e{n}", webhook=None),
            None,
            now=T0,
        )
    limit = 4
    await board.set_limits({"generate": limit})
    held: list[Claim] = []
    peak = 0
    done = 0
    rng = random.Random(7)

    async def claimer(name: str) -> None:
        nonlocal peak, done
        while done < 60:
            claims = await board.claim(name, limit=3, now=T0 + 1, types=None)
            held.extend(claims)
            running = sum(1 for c in held if c.request.type == "generate")
            peak = max(peak, running)
            assert running <= limit
            assert (await board.running_by_type()).get("generate", 0) <= limit
            await anyio.sleep(rng.random() * 0.01)
            if claims:
                await board.complete([(c, video("v")) for c in claims], now=T0 + 1)
                done += len(claims)
                for claim in claims:  # only once the database no longer counts them
                    held.remove(claim)
            else:
                await anyio.sleep(0.005)

    async with anyio.create_task_group() as tg:
        for n in range(8):
            await board.register(f"c{n}", now=T0, lease_until=T0 + 60)
            tg.start_soon(claimer, f"c{n}")
    assert peak == limit  # the cap was reached, never passed
    assert await board.counts() == {"completed": 60}


# --- wake-ups --------------------------------------------------------------------------------


async def test_listen_yields_ready_cancel_and_ended(board: PostgresBoard) -> None:
    got: list[BoardEvent] = []
    async with board.listen() as events:
        await board.submit(execution("e", [gen("job1"), gen("job2")]), None, now=T0)
        (one, _) = await board.claim("w1", limit=5, now=T0 + 1)
        await board.cancel("e", now=T0 + 2, reason="stop")
        with anyio.fail_after(5):
            async for event in events:
                got.append(event)
                if event.kind == "ended":
                    break
    assert got == [
        BoardEvent("ready", "generate"),
        BoardEvent("cancel", "e"),
        BoardEvent("ended", "e"),
    ]
    assert one.ref == ("e", "job1")


# --- outbox ----------------------------------------------------------------------------------


async def test_the_outbox_is_delivered_by_one_live_engine_at_a_time(board: PostgresBoard) -> None:
    from engine.models import DeliveryAttempt

    await board.submit(execution("e", [gen("job1")]), None, now=T0)
    await run_all(board, T0 + 1)
    await board.register("n2", now=T0, lease_until=T0 + 10)
    (event,) = await board.claim_outbox("n2", now=T0 + 2, lease_until=T0 + 10)
    assert event.event_id == "evt_e_0" and event.webhook == HOOK and event.attempts_made == 0
    assert event.payload["status"] == "completed"
    assert await board.claim_outbox("w1", now=T0 + 3, lease_until=T0 + 30) == []
    attempt = DeliveryAttempt("evt_e_0", "e", HOOK.url, 1, T0 + 2, 500, None, 0.1, "retry", T0 + 7)
    await board.record_delivery(attempt)
    # n2 dies: once its lease is over, another engine takes the event, attempts carried on
    (taken,) = await board.claim_outbox("w1", now=T0 + 11, lease_until=T0 + 30)
    assert taken.attempts_made == 1
    await board.outbox_done("evt_e_0", "delivered")
    assert await board.claim_outbox("w1", now=T0 + 40, lease_until=T0 + 60) == []
    assert await board.deliveries("e") == [attempt]
    assert await board.outbox_counts() == {"delivered": 1}


# --- opening: migrations and bad DSNs --------------------------------------------------------


async def test_many_concurrent_openers_migrate_once(schema: str) -> None:
    boards = [PostgresBoard(DSN, schema=schema) for _ in range(8)]
    async with anyio.create_task_group() as tg:
        for b in boards:
            tg.start_soon(b.open)
    try:
        await boards[0].submit(execution("e", [gen("job1")]), None, now=T0)
        assert (await boards[-1].get("e")) is not None
    finally:
        for b in boards:
            await b.close()
    with psycopg.connect(DSN) as conn:
        rows = conn.execute(f'SELECT version FROM "{schema}".schema_version').fetchall()
    assert rows == [(1,)]


async def test_a_newer_schema_is_refused(schema: str) -> None:
    async with PostgresBoard(DSN, schema=schema):
        pass
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f'UPDATE "{schema}".schema_version SET version = 99')
    with pytest.raises(StorageError, match="version 99, newer than this code"):
        await PostgresBoard(DSN, schema=schema).open()


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("postgresql://postgres@127.0.0.1:1/test", "server is unreachable"),
        ("postgresql://no_such_role_x@127.0.0.1:5432/test", "user \\(role\\) does not exist"),
        ("postgresql://postgres@127.0.0.1:5432/no_such_db_x", "database does not exist"),
    ],
)
async def test_bad_dsns_are_clear_storage_errors(dsn: str, message: str, schema: str) -> None:
    with pytest.raises(StorageError, match=message) as info:
        await PostgresBoard(dsn, schema=schema).open()
    assert "127.0.0.1" in str(info.value)


async def test_a_closed_board_says_so(schema: str) -> None:
    with pytest.raises(StorageError, match="not open"):
        await PostgresBoard(DSN, schema=schema).get("e")


# --- a property over random plans and interleavings ------------------------------------------


@pytest.fixture(scope="module")
def property_schema() -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    drop_schema(name)


@st.composite
def forests(draw: st.DrawFn) -> list[tuple[ExecutionPlan, int | None]]:
    """Executions as (plan, index of its base among the earlier ones, or None)."""
    out: list[tuple[ExecutionPlan, int | None]] = []
    for n in range(draw(st.integers(1, 4))):
        base = draw(st.none() | st.integers(0, n - 1)) if n else None
        if base is None:
            out.append((draw(plans(has_base=False, max_jobs=8)), None))
        else:
            out.append((draw(st.one_of(chain_plans(), plans(has_base=True, max_jobs=6))), base))
    return out


class _Checker:
    def __init__(self, board: PostgresBoard, executions: dict[str, Execution]) -> None:
        self.board = board
        self.executions = executions
        self.completed: dict[tuple[str, str], int] = {}

    def deps_of(self, ref: tuple[str, str]) -> list[tuple[str, str]]:
        ex = self.executions[ref[0]]
        job = ex.job(ref[1])
        deps = [(ref[0], d) for d in job.depends_on]
        if not job.depends_on and ex.base_execution_id is not None:
            base = self.executions[ex.base_execution_id]
            deps.append((base.id, base.final_job_id))
        return deps

    def check_claim(self, claim: Claim) -> None:
        for dep in self.deps_of(claim.ref):
            assert dep in self.completed, f"{claim.ref} claimed before {dep} completed"
        assert claim.request.idempotency_key == f"{claim.ref[0]}/{claim.ref[1]}"


async def _complete(
    board: PostgresBoard, checker: _Checker, claims: list[Claim], now: float
) -> None:
    outcome = await board.complete([(c, video(c.ref[1])) for c in claims], now=now)
    refused = {id(c) for c in outcome.refused}
    for c in claims:
        if id(c) not in refused:
            assert c.ref not in checker.completed, f"{c.ref} completed twice"
            checker.completed[c.ref] = 1


async def _all_ended(board: PostgresBoard, executions: dict[str, Execution]) -> bool:
    for ex_id in executions:
        stored = await board.get(ex_id)
        if stored is None or stored.status not in ("completed", "failed", "cancelled"):
            return False
    return True


async def _run_forest(
    schema: str, forest: list[tuple[ExecutionPlan, int | None]], seed: int
) -> None:
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:8]
    async with PostgresBoard(DSN, schema=schema, pool_max=4) as board:
        engines = [f"w{tag}{n}" for n in range(2)]
        for name in engines:
            await board.register(name, now=T0, lease_until=T0 + 10_000)
        executions: dict[str, Execution] = {}
        for n, (plan, base) in enumerate(forest):
            ex = from_plan(f"x{tag}{n}", plan, None if base is None else f"x{tag}{base}")
            executions[ex.id] = ex
            await board.submit(ex, None, now=T0)
        checker = _Checker(board, executions)
        held: list[Claim] = []
        claimed_by: dict[int, str] = {}
        now = T0
        for step in range(400):
            now += 1
            action = rng.random()
            if action < 0.45 or not held:
                engine = rng.choice(engines)
                claims = await board.claim(engine, limit=rng.randint(1, 5), now=now)
                for claim in claims:
                    checker.check_claim(claim)
                    claimed_by[id(claim)] = engine
                held.extend(claims)
            elif action < 0.85:
                rng.shuffle(held)
                k = rng.randint(1, len(held))
                take, held = held[:k], held[k:]
                await _complete(board, checker, take, now)
            elif action < 0.93:
                claim = held.pop(rng.randrange(len(held)))
                retry = rng.random() < 0.7
                await board.fail(claim, "scripted", retry_at=now if retry else None, now=now)
            else:  # a zombie: its jobs handed back, then it reports late for one
                released = [c for c in held if c.ref and claimed_by[id(c)] == engines[0]]
                await board.release(engines[0])
                await board.register(engines[0], now=now, lease_until=T0 + 10_000)
                stale = [c for c in held if c in released]
                held = [c for c in held if c not in stale]
                if stale:
                    outcome = await board.complete([(stale[0], video("zombie"))], now=now)
                    assert outcome.refused == (stale[0],)
            if step % 10 == 0 and not held and await _all_ended(board, executions):
                break
        # drain: no more failures, every execution must end
        for _ in range(200):
            now += 1
            if held:
                await _complete(board, checker, held, now)
                held = []
            claims = await board.claim(engines[1], limit=50, now=now)
            for claim in claims:
                checker.check_claim(claim)
            held = claims
            if not claims:
                break
        for ex_id in executions:
            stored = await board.get(ex_id)
            assert stored is not None
            assert stored.status in ("completed", "failed", "cancelled"), (ex_id, stored.status)
            for job in stored.jobs:
                assert job.status in ("completed", "failed", "cancelled"), (ex_id, job)
                if job.status == "completed":
                    assert (ex_id, job.id) in checker.completed
            assert len(await board.outbox(ex_id)) == 1


@settings(deadline=None)
@given(forest=forests(), seed=st.integers(0, 2**32 - 1))
def test_random_plans_and_interleavings_keep_the_invariants(
    property_schema: str, forest: list[tuple[ExecutionPlan, int | None]], seed: int
) -> None:
    anyio.run(_run_forest, property_schema, forest, seed)

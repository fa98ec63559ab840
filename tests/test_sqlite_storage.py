"""What only the SQLite store does: durability, pragmas, group commit, bad files, several
instances on one file. What every store does is in ``test_storage_contract.py``."""

from __future__ import annotations

import gc
import os
import random
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_storage_contract import (
    CLIP,
    FINAL,
    attempt,
    create_ended,
    make_execution,
    notification_of,
    payload,
    rich_execution,
)

from adapters.sqlite import SqliteStorage
from adapters.sqlite.schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION
from adapters.sqlite.statements import SELECT_HOLDERS
from adapters.sqlite.writer import MAX_GROUP
from engine.errors import ConfigError, IdempotencyConflict, LeaseLost, StorageError
from engine.models import (
    Change,
    DeliveryRecorded,
    Execution,
    ExecutionUpdate,
    JobUpdate,
    OutboxAdd,
    OutboxDone,
)

pytestmark = pytest.mark.anyio


def raw(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection, as another program would open the file."""
    return sqlite3.connect(path, isolation_level=None)


async def outcome(call: Awaitable[Any]) -> Any:
    """The call's result, or the type of the engine error it raised."""
    try:
        return await call
    except (IdempotencyConflict, StorageError) as exc:
        return type(exc)


async def taken_by_the_writer(store: SqliteStorage) -> None:
    """Wait until the writer thread has taken every queued write. Polls: no event of the
    loop's marks a thread's progress."""
    writer = store._writer
    assert writer is not None
    with anyio.fail_after(5):
        while writer.queued:  # noqa: ASYNC110
            await anyio.sleep(0.001)


async def queued_in_order(store: SqliteStorage, calls: list[Awaitable[Any]]) -> list[Any]:
    """Run ``calls`` so that they queue for the writer in this order, behind a first call that
    waits for a write lock another program holds; their outcomes. Every call after the first
    is written in one group."""
    results: list[Any] = [None] * len(calls)

    async def run(n: int, call: Awaitable[Any]) -> None:
        results[n] = await outcome(call)

    other = raw(store.path)
    try:
        other.execute("BEGIN IMMEDIATE")
        async with anyio.create_task_group() as tg:
            for n, call in enumerate(calls):
                tg.start_soon(run, n, call)
                await anyio.wait_all_tasks_blocked()
                if n == 0:
                    await taken_by_the_writer(store)  # it waits for the lock in BEGIN
            other.execute("ROLLBACK")
    finally:
        other.close()
    return results


# --- durability and settings ---------------------------------------------------------------------


async def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SqliteStorage(path) as store:
        await store.create(rich_execution(), "fp")
        await store.create(make_execution("exec_1", idempotency_key="k"), "fp-1")
        await store.apply(
            [
                JobUpdate("exec_1", "job1", "completed", 1, 1.0, 2.0, result=CLIP),
                ExecutionUpdate("exec_1", "processing", 1.0),
            ]
        )
        before = [await store.get("exec_rich"), await store.get("exec_1")]

    async with SqliteStorage(path) as reopened:
        assert [await reopened.get("exec_rich"), await reopened.get("exec_1")] == before
        assert [e.id for e in await reopened.unfinished()] == ["exec_1"]
        assert await reopened.counts() == {"failed": 1, "processing": 1}
        # the idempotency record survives too
        again = await reopened.create(make_execution("exec_2", idempotency_key="k"), "fp-1")
        assert again.id == "exec_1"
        with pytest.raises(IdempotencyConflict):
            await reopened.create(make_execution("exec_3", idempotency_key="k"), "fp-2")


async def test_a_large_backlog_of_unfinished_executions_reads_back(tmp_path: Path) -> None:
    async with SqliteStorage(tmp_path / "store.db") as store:
        executions = [make_execution(f"exec_{n:04}", created_at=float(n)) for n in range(800)]
        async with anyio.create_task_group() as tg:  # concurrently, so in few transactions
            for execution in executions:
                tg.start_soon(store.create, execution)
        await store.apply([ExecutionUpdate("exec_0003", "completed", 1.0, 2.0, result=FINAL)])

        unfinished = await store.unfinished()  # 2397 rows: decoded in a worker thread

        expected = [e for e in executions if e.id != "exec_0003"]
        assert sorted(unfinished, key=lambda e: e.id) == expected


@pytest.mark.parametrize(("synchronous", "level"), [("FULL", 2), ("NORMAL", 1)])
async def test_pragmas_are_set(tmp_path: Path, synchronous: Any, level: int) -> None:
    path = tmp_path / "store.db"
    async with SqliteStorage(path, synchronous=synchronous, busy_timeout=0.25) as store:
        assert await store.pragmas() == {
            "journal_mode": "wal",
            "synchronous": level,
            "busy_timeout": 250,
            "foreign_keys": 1,
            "application_id": APPLICATION_ID,
            "user_version": SCHEMA_VERSION,
        }
    with raw(path) as conn:  # WAL is a property of the file, kept after close
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


async def test_an_empty_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    path.touch()

    async with SqliteStorage(path) as store:
        await store.create(make_execution())
        assert await store.get("exec_1") == make_execution()


@pytest.mark.parametrize(
    "options",
    [{"synchronous": "OFF"}, {"busy_timeout": -1.0}, {"busy_timeout": float("nan")}],
)
def test_bad_options_are_config_errors(tmp_path: Path, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SqliteStorage(tmp_path / "store.db", **options)


@pytest.mark.parametrize("path", [":memory:", "", "file:store.db?mode=memory"])
def test_a_store_needs_a_file(path: str) -> None:
    with pytest.raises(ConfigError, match="file path"):
        SqliteStorage(path)


async def test_a_closed_store_refuses_calls_and_can_reopen(tmp_path: Path) -> None:
    store = SqliteStorage(tmp_path / "store.db")
    with pytest.raises(StorageError, match="not open"):
        await store.get("exec_1")
    with pytest.raises(StorageError, match="not open"):
        await store.create(make_execution())
    await store.close()  # closing what is not open does nothing

    await store.open()
    await store.open()  # opening twice does nothing
    await store.create(make_execution())
    await store.close()
    await store.close()
    with pytest.raises(StorageError, match="not open"):
        await store.apply([ExecutionUpdate("exec_1", "processing", 1.0)])

    async with store:
        assert await store.get("exec_1") == make_execution()


# --- group commit --------------------------------------------------------------------------------


async def test_group_commit_batches_concurrent_applies(tmp_path: Path) -> None:
    async with SqliteStorage(tmp_path / "store.db") as store:
        executions = [make_execution(f"exec_{n}", jobs=20) for n in range(10)]
        for execution in executions:
            await store.create(execution)
        before = store.stats.transactions
        updates = [
            JobUpdate(execution.id, job.id, "completed", 1, 1.0, 2.0, result=CLIP)
            for execution in executions
            for job in execution.jobs
        ]
        assert len(updates) == 200

        async with anyio.create_task_group() as tg:
            for update in updates:
                tg.start_soon(store.apply, [update])

        transactions = store.stats.transactions - before
        assert transactions <= len(updates) // 10, store.stats
        assert store.stats.largest_group > 1
        assert store.stats.rollbacks == 0
        for execution in executions:
            stored = await store.get(execution.id)
            assert stored is not None
            assert stored.completed_jobs == 20


async def test_a_failing_call_does_not_fail_its_neighbours(tmp_path: Path) -> None:
    async with SqliteStorage(tmp_path / "store.db") as store:
        await store.create(make_execution("exec_1", jobs=40, idempotency_key="k"), "fp")
        good: list[Change] = [
            JobUpdate("exec_1", f"job{n}", "completed", 1, 1.0, 2.0, CLIP) for n in range(1, 41)
        ]
        calls: list[Awaitable[Any]] = [store.apply([change]) for change in good]
        calls.insert(10, store.apply([JobUpdate("exec_1", "job_nope", "failed", 1, 1.0, 2.0)]))
        calls.insert(20, store.create(make_execution("exec_2", idempotency_key="k"), "other"))
        calls.insert(30, store.create(make_execution("exec_1")))  # the id is taken
        calls.insert(35, store.create(make_execution("exec_3", idempotency_key="k"), "fp"))
        results: dict[int, Any] = {}

        async def run(n: int, call: Awaitable[Any]) -> None:
            results[n] = await outcome(call)

        async with anyio.create_task_group() as tg:
            for n, call in enumerate(calls):
                tg.start_soon(run, n, call)

        failures = {n: r for n, r in results.items() if isinstance(r, type)}
        assert failures == {10: StorageError, 20: IdempotencyConflict, 30: StorageError}
        assert isinstance(results[35], Execution)
        assert results[35].id == "exec_1"
        assert store.stats.rollbacks >= 1
        stored = await store.get("exec_1")
        assert stored is not None
        assert stored.completed_jobs == 40
        assert await store.counts() == {"pending": 1}


async def test_close_commits_what_is_queued(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SqliteStorage(path)
    await store.open()
    await store.create(make_execution("exec_1", jobs=30))
    async with anyio.create_task_group() as tg:
        for n in range(1, 31):
            tg.start_soon(store.apply, [JobUpdate("exec_1", f"job{n}", "completed", 1, 1.0, 2.0)])
        await anyio.wait_all_tasks_blocked()  # every apply is queued or being written
        await store.close()
        with pytest.raises(StorageError, match="not open"):
            await store.apply([ExecutionUpdate("exec_1", "processing", 1.0)])

    async with SqliteStorage(path) as reopened:
        stored = await reopened.get("exec_1")
        assert stored is not None
        assert stored.completed_jobs == 30


async def test_a_write_locked_by_another_program_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SqliteStorage(path, busy_timeout=0) as store:
        await store.create(make_execution())
        other = raw(path)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StorageError, match="locked") as caught:
                await store.apply([ExecutionUpdate("exec_1", "processing", 1.0)])
            assert str(path) in str(caught.value)
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
            assert await store.get("exec_1") == make_execution()  # reads go on (WAL)
            other.execute("ROLLBACK")
        finally:
            other.close()

        await store.apply([ExecutionUpdate("exec_1", "processing", 1.0)])
        assert await store.counts() == {"processing": 1}


async def test_cancelled_callers_leave_the_store_working(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SqliteStorage(path) as store:
        await store.create(make_execution("exec_1", jobs=4))
        scopes = [anyio.CancelScope() for _ in range(4)]

        async def complete(n: int) -> None:
            with scopes[n - 1]:
                await store.apply([JobUpdate("exec_1", f"job{n}", "completed", 1, 1.0, 2.0)])

        writer = store._writer
        assert writer is not None
        other = raw(path)  # holds the write lock: the writer thread waits for it in BEGIN
        try:
            other.execute("BEGIN IMMEDIATE")
            async with anyio.create_task_group() as tg:
                tg.start_soon(complete, 1)
                await anyio.wait_all_tasks_blocked()
                await taken_by_the_writer(store)  # job1's write; it waits for the lock in BEGIN
                for n in range(2, 4):
                    tg.start_soon(complete, n)
                await anyio.wait_all_tasks_blocked()
                assert writer.queued == 2
                scopes[0].cancel()  # taken by the writer: its transaction is finished all the same
                scopes[1].cancel()  # queued: dropped, and the writer thread skips it
                other.execute("ROLLBACK")
        finally:
            other.close()
        await complete(4)  # the writer goes on

        stored = await store.get("exec_1")
        assert stored is not None
        assert [job.status for job in stored.jobs] == [
            "completed",
            "pending",
            "completed",
            "completed",
        ]
        assert scopes[1].cancelled_caught


# --- bad files -----------------------------------------------------------------------------------


def _missing_directory(tmp_path: Path) -> Path:
    return tmp_path / "nowhere" / "store.db"


def _directory(tmp_path: Path) -> Path:
    (tmp_path / "store.db").mkdir()
    return tmp_path / "store.db"


def _random_bytes(tmp_path: Path) -> Path:
    path = tmp_path / "store.db"
    path.write_bytes(random.Random(0).randbytes(3 * 4096))
    return path


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "store.db"
    path.write_text("id,status\nexec_1,pending\n")
    return path


def _foreign_tables(tmp_path: Path) -> Path:
    path = tmp_path / "store.db"
    with raw(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.close()
    return path


def _foreign_application_id(tmp_path: Path) -> Path:
    path = tmp_path / "store.db"
    conn = raw(path)
    conn.execute("PRAGMA application_id = 1234")
    conn.close()
    return path


def _foreign_user_version(tmp_path: Path) -> Path:
    path = tmp_path / "store.db"
    conn = raw(path)
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    return path


def _files(directory: Path) -> dict[str, bytes | None]:
    """Every file under ``directory``, with its bytes (``None`` for a directory)."""
    return {
        str(path.relative_to(directory)): path.read_bytes() if path.is_file() else None
        for path in sorted(directory.rglob("*"))
    }


@pytest.mark.parametrize(
    ("make", "cause"),
    [
        pytest.param(_missing_directory, "directory .* does not exist", id="missing directory"),
        pytest.param(_directory, "is a directory", id="directory"),
        pytest.param(_random_bytes, "not an SQLite database", id="random bytes"),
        pytest.param(_text_file, "not an SQLite database", id="text file"),
        pytest.param(_foreign_tables, "another application", id="foreign tables"),
        pytest.param(
            _foreign_application_id,
            "another application .*application_id 1234",
            id="foreign application_id",
        ),
        pytest.param(
            _foreign_user_version, "another application .*user_version 7", id="foreign version"
        ),
    ],
)
async def test_a_bad_file_is_a_clear_storage_error(
    tmp_path: Path, make: Callable[[Path], Path], cause: str
) -> None:
    path = make(tmp_path)
    before = _files(tmp_path)
    store = SqliteStorage(path)

    with pytest.raises(StorageError, match=cause) as caught:
        await store.open()

    assert str(path) in str(caught.value)
    assert _files(tmp_path) == before  # nothing created, migrated or switched to WAL
    with pytest.raises(StorageError, match="not open"):
        await store.get("exec_1")
    gc.collect()  # an unclosed connection would warn now, and warnings are errors


def _corrupt_pages(path: Path) -> None:
    """Overwrite the root page of every table and index with noise; the header and the schema
    (which may span several pages) stay readable."""
    with raw(path) as conn:
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        roots = [r for (r,) in conn.execute("SELECT rootpage FROM sqlite_master") if r and r > 1]
    conn.close()
    data = bytearray(path.read_bytes())
    noise = random.Random(1)
    for root in roots:
        start = (root - 1) * page_size
        data[start : start + page_size] = noise.randbytes(page_size)
    path.write_bytes(bytes(data))


async def test_a_corrupted_store_fails_reads_and_writes_with_storage_errors(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    async with SqliteStorage(path) as store:
        for n in range(20):
            await store.create(make_execution(f"exec_{n}", jobs=5))
    _corrupt_pages(path)

    async with SqliteStorage(path) as store:  # the header still reads: it opens
        for call in (store.get("exec_3"), store.unfinished(), store.create(make_execution())):
            with pytest.raises(StorageError, match="corrupt") as caught:
                await call
            assert str(path) in str(caught.value)


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0, reason="needs a user that file modes apply to"
)
async def test_a_read_only_file_is_a_clear_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SqliteStorage(path) as store:
        await store.create(make_execution())
    path.chmod(0o444)
    try:
        with pytest.raises(StorageError, match="read-only") as caught:
            await SqliteStorage(path).open()
        assert str(path) in str(caught.value)
    finally:
        path.chmod(0o644)


async def test_a_file_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SqliteStorage(path) as store:
        await store.create(make_execution())
    conn = raw(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()

    with pytest.raises(StorageError, match="newer version") as caught:
        await SqliteStorage(path).open()

    assert str(path) in str(caught.value)
    conn = raw(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
    conn.close()


# --- several instances (or processes) on one file ------------------------------------------------


async def test_two_instances_on_one_file_see_each_other(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SqliteStorage(path) as one, SqliteStorage(path) as two:
        await one.create(make_execution("exec_1", created_at=1.0))
        await two.create(make_execution("exec_2", created_at=2.0))

        assert await one.get("exec_2") == make_execution("exec_2", created_at=2.0)
        assert await two.get("exec_1") == make_execution("exec_1", created_at=1.0)

        await two.apply([ExecutionUpdate("exec_1", "completed", 1.0, 2.0, result=FINAL)])
        await one.apply([JobUpdate("exec_2", "job1", "processing", 1, 3.0, None)])

        for store in (one, two):
            assert await store.counts() == {"completed": 1, "pending": 1}
            [unfinished] = await store.unfinished()
            assert unfinished.job("job1").status == "processing"
            exec_1 = await store.get("exec_1")
            assert exec_1 is not None
            assert exec_1.result == FINAL


async def test_concurrent_writes_from_two_instances_all_land(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SqliteStorage(path) as one, SqliteStorage(path) as two:
        await one.create(make_execution("exec_1", jobs=60))
        async with anyio.create_task_group() as tg:
            for n in range(1, 61):
                store = one if n % 2 else two
                update = JobUpdate("exec_1", f"job{n}", "completed", 1, 1.0, 2.0, CLIP)
                tg.start_soon(store.apply, [update])

        stored = await two.get("exec_1")
        assert stored is not None
        assert stored.completed_jobs == 60


async def test_racing_idempotent_creates_yield_one_execution(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    results: dict[tuple[str, int], Any] = {}
    async with SqliteStorage(path) as one, SqliteStorage(path) as two:

        async def create(name: str, store: SqliteStorage, n: int, fingerprint: str) -> None:
            execution = make_execution(f"exec_{name}_{n}", idempotency_key=f"key-{n}")
            results[name, n] = await outcome(store.create(execution, fingerprint))

        async with anyio.create_task_group() as tg:
            for n in range(40):
                # the same request on keys 0-19, different requests on keys 20-39
                tg.start_soon(create, "one", one, n, "fp")
                tg.start_soon(create, "two", two, n, "fp" if n < 20 else "fp-two")

        for n in range(20):
            first, second = results["one", n], results["two", n]
            assert isinstance(first, Execution)
            assert isinstance(second, Execution)
            assert first == second
        for n in range(20, 40):
            pair = [results["one", n], results["two", n]]
            assert IdempotencyConflict in pair
            assert sum(isinstance(result, Execution) for result in pair) == 1
        assert await one.counts() == {"pending": 40}
        assert await two.counts() == {"pending": 40}


# --- ownership: fencing inside group commit, racing claimers, the v2 migration -------------------

T0 = 1_000.0


async def test_a_group_holds_at_most_max_group_calls(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SqliteStorage(path) as store:
        await store.create(make_execution("exec_1"))
        writer = store._writer
        assert writer is not None
        before = store.stats.transactions
        update = [ExecutionUpdate("exec_1", "processing", 1.0)]
        other = raw(path)  # holds the write lock: the writer thread waits for it in BEGIN
        try:
            other.execute("BEGIN IMMEDIATE")
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.apply, update)
                await anyio.wait_all_tasks_blocked()
                await taken_by_the_writer(store)
                for _ in range(MAX_GROUP + 10):
                    tg.start_soon(store.apply, update)
                await anyio.wait_all_tasks_blocked()
                assert writer.queued == MAX_GROUP + 10
                other.execute("ROLLBACK")
        finally:
            other.close()
        assert store.stats.largest_group == MAX_GROUP
        assert store.stats.transactions == before + 3  # the first call, MAX_GROUP, then 10
        assert store.stats.rollbacks == 0


async def test_a_fenced_out_call_fails_alone_and_its_group_commits(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SqliteStorage(path) as store:
        await store.create(make_execution("exec_a", jobs=6), owner="A", lease_until=T0)
        await store.create(make_execution("exec_b", jobs=6), owner="B", lease_until=T0)
        calls: list[Awaitable[Any]] = [
            store.apply([ExecutionUpdate("exec_a", "processing", 1.0)], owner="A")
        ]
        for n in range(1, 7):
            update_a = JobUpdate("exec_a", f"job{n}", "completed", 1, 1.0, 2.0)
            update_b = JobUpdate("exec_b", f"job{n}", "completed", 1, 1.0, 2.0)
            calls.append(store.apply([update_a], owner="A"))
            calls.append(store.apply([update_b], owner="A" if n == 3 else "B"))
        calls.append(store.apply([ExecutionUpdate("exec_b", "failed", 1.0, 2.0)], owner="A"))
        calls.append(store.apply([ExecutionUpdate("exec_b", "processing", 1.0)]))  # unfenced

        results = await queued_in_order(store, calls)

        lost = {n: r for n, r in enumerate(results) if r is not None}
        assert lost == {6: LeaseLost, len(calls) - 2: LeaseLost}
        assert store.stats.rollbacks == 0
        assert store.stats.largest_group == len(calls) - 1
        exec_a, exec_b = await store.get("exec_a"), await store.get("exec_b")
        assert exec_a is not None
        assert exec_b is not None
        assert (exec_a.status, exec_a.completed_jobs) == ("processing", 6)
        assert (exec_b.status, exec_b.completed_jobs) == ("processing", 5)
        assert exec_b.job("job3").status == "pending"


async def test_a_fence_sees_the_writes_queued_before_it_in_its_group(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SqliteStorage(path) as store:
        await store.create(make_execution("exec_0"))
        await store.create(make_execution("exec_1"), owner="A", lease_until=T0)
        new = make_execution("exec_new")
        keyed = make_execution("exec_keyed", idempotency_key="k")
        calls: list[Awaitable[Any]] = [
            store.apply([ExecutionUpdate("exec_0", "processing", 1.0)]),  # waits for the lock
            # the group: a claim, then A's write (fenced out), then B's (accepted)
            store.apply([JobUpdate("exec_1", "job1", "processing", 1, 1.0, None)], owner="A"),
            store.claim("B", now=T0 + 1, lease_until=T0 + 30, ids=["exec_1"]),
            store.apply([JobUpdate("exec_1", "job2", "processing", 1, 1.0, None)], owner="A"),
            store.apply([JobUpdate("exec_1", "job3", "processing", 1, 1.0, None)], owner="B"),
            # creates, held, then their holder's writes: found, in the same transaction
            store.create(new, owner="C", lease_until=T0 + 30),
            store.create(keyed, "fp", owner="C", lease_until=T0 + 30),
            store.apply(
                [
                    ExecutionUpdate("exec_new", "processing", 1.0),
                    ExecutionUpdate("exec_keyed", "processing", 1.0),
                ],
                owner="C",
            ),
            store.release("C", ["exec_keyed"]),
            store.apply([ExecutionUpdate("exec_keyed", "completed", 1.0, 2.0)], owner="C"),
            store.renew("B", lease_until=T0 + 60),
        ]

        results = await queued_in_order(store, calls)

        assert results[1] is None
        assert [e.id for e in results[2]] == ["exec_1"]
        assert results[2][0].job("job1").status == "processing"  # the write before the claim
        assert results[3:5] == [LeaseLost, None]
        assert results[5:9] == [new, keyed, None, None]
        assert results[9:] == [LeaseLost, {"exec_1"}]
        assert store.stats.largest_group == len(calls) - 1
        assert store.stats.rollbacks == 0
        stored = await store.get("exec_1")
        assert stored is not None
        assert [job.status for job in stored.jobs] == ["processing", "pending", "processing"]
        assert await store.holders() == {"B": T0 + 60, "C": T0 + 30}
        assert await store.counts() == {"pending": 1, "processing": 3}


async def test_racing_claims_from_two_instances_never_overlap(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SqliteStorage(path) as one, SqliteStorage(path) as two:
        async with anyio.create_task_group() as tg:
            for n in range(50):
                tg.start_soon(one.create, make_execution(f"exec_{n:02}", created_at=float(n)))
        taken: dict[str, list[str]] = {
            f"{name}-{n}": [] for name in ("one", "two") for n in range(3)
        }

        async def work(name: str, store: SqliteStorage) -> None:
            claimed = await store.claim(name, now=T0, lease_until=T0 + 30, limit=5)
            taken[name] += [e.id for e in claimed]
            done = [ExecutionUpdate(e.id, "completed", 1.0, 2.0, FINAL) for e in claimed]
            await store.apply(done, owner=name)

        # rounds in which three engines on each instance claim at once, and finish what they took
        for _ in range(10):
            before = sum(map(len, taken.values()))
            async with anyio.create_task_group() as tg:
                for n in range(3):
                    tg.start_soon(work, f"one-{n}", one)
                    tg.start_soon(work, f"two-{n}", two)
            if sum(map(len, taken.values())) == before:
                break

        everything = [i for ids in taken.values() for i in ids]
        assert sorted(everything) == [f"exec_{n:02}" for n in range(50)]  # each taken once
        assert any(taken[f"one-{n}"] for n in range(3))
        assert any(taken[f"two-{n}"] for n in range(3))
        assert await one.counts() == {"completed": 50}


async def test_a_claim_blocked_by_another_programs_lock_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SqliteStorage(path, busy_timeout=0) as store:
        await store.create(make_execution())
        other = raw(path)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StorageError, match="locked"):
                await store.claim("A", now=T0, lease_until=T0 + 30)
            with pytest.raises(StorageError, match="locked"):
                await store.renew("A", lease_until=T0 + 30)
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert [e.id for e in await store.claim("A", now=T0, lease_until=T0 + 30)] == ["exec_1"]


def _version_1_file(path: Path) -> None:
    """A store as version 1 of the schema wrote it, with one execution in it."""
    conn = raw(path)
    conn.execute("BEGIN")
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO executions (id, status, tenant, idempotency_key, fingerprint, created_at, "
        "started_at, generation) VALUES ('exec_1', 'processing', 'acme', 'k', 'fp', 1.0, 2.0, 3)"
    )
    conn.execute(
        "INSERT INTO executions (id, status, created_at, completed_at, result) "
        "VALUES ('exec_2', 'completed', 2.0, 4.0, ?)",
        ('{"url":"u","duration":1.0,"aspectRatio":"16:9","status":"completed"}',),
    )
    for n, (job_id, status) in enumerate([("job1", "completed"), ("job2", "pending")]):
        conn.execute(
            "INSERT INTO jobs (execution_id, job_id, position, type, params, depends_on, "
            "status, attempts) VALUES ('exec_1', ?, ?, 'generate', '{\"prompt\":\"x\"}', "
            "'[]', ?, ?)",
            (job_id, n, status, n),
        )
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    conn.execute("COMMIT")
    conn.close()


async def test_a_version_1_file_is_migrated_on_open(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    _version_1_file(path)

    async with SqliteStorage(path) as store:
        assert (await store.pragmas())["user_version"] == SCHEMA_VERSION == 3
        stored = await store.get("exec_1")
        assert stored is not None
        assert (stored.status, stored.tenant, stored.generation) == ("processing", "acme", 3)
        assert [(job.id, job.status, job.attempts) for job in stored.jobs] == [
            ("job1", "completed", 0),
            ("job2", "pending", 1),
        ]
        assert await store.counts() == {"processing": 1, "completed": 1}
        again = await store.create(
            make_execution("exec_9", tenant="acme", idempotency_key="k"), "fp"
        )
        assert again == stored
        # what version 1 stored is unheld: anyone may claim it, then only its holder may write
        assert await store.holders() == {}
        assert await store.claim("A", now=T0, lease_until=T0 + 30) == [stored]
        with pytest.raises(LeaseLost):
            await store.apply([ExecutionUpdate("exec_1", "failed", 2.0, 5.0)], owner="B")
        await store.apply([ExecutionUpdate("exec_1", "failed", 2.0, 5.0)], owner="A")
        assert await store.counts() == {"failed": 1, "completed": 1}

    with raw(path) as conn:
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM executions "
            "WHERE owner = ? AND status IN ('pending', 'processing')",
            ("A",),
        ).fetchall()
    conn.close()
    assert "executions_held" in indexes
    assert "executions_held" in str(plan)


# --- the webhook outbox: inside group commit, across reopen, the v3 migration -------------------


async def test_outbox_writes_are_fenced_and_fail_alone_in_their_group(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SqliteStorage(path) as store:
        await store.create(make_execution("exec_0"))
        await store.create(make_execution("exec_a"), owner="A", lease_until=T0 + 30)
        await store.create(make_execution("exec_b"), owner="B", lease_until=T0 + 30)
        first, second = attempt("evt_a", "exec_a", 1), attempt("evt_a", "exec_a", 2, "delivered")
        calls: list[Awaitable[Any]] = [
            store.apply([ExecutionUpdate("exec_0", "processing", 1.0)]),  # waits for the lock
            store.apply(
                [
                    ExecutionUpdate("exec_a", "completed", 1.0, 2.0, FINAL),
                    OutboxAdd("evt_a", "exec_a", "completed", payload("exec_a")),
                ],
                owner="A",
            ),
            store.apply([DeliveryRecorded(first)], owner="A"),
            store.apply([OutboxAdd("evt_a", "exec_b", "failed", {})], owner="B"),  # taken
            # A is presumed dead: C takes its event, seeing the writes queued before
            store.claim_outbox("C", now=T0, lease_until=T0 + 60, dead_owners=["A"]),
            store.apply([DeliveryRecorded(second)], owner="A"),  # fenced out
            store.apply(
                [DeliveryRecorded(second), OutboxDone("evt_a", "exec_a", "delivered")], owner="C"
            ),
            store.apply([DeliveryRecorded(attempt("evt_nope", "exec_b", 1))], owner="B"),
            store.renew("C", lease_until=T0 + 90),
        ]

        results = await queued_in_order(store, calls)

        assert results[:4] == [None, None, None, StorageError]
        [claimed] = results[4]
        assert (claimed.event_id, claimed.attempts_made) == ("evt_a", 1)
        assert results[5:] == [LeaseLost, None, StorageError, set()]
        assert store.stats.rollbacks >= 1  # the failing calls were found by retrying alone
        assert await store.deliveries("exec_a") == [first, second]
        assert await store.deliveries("exec_b") == []
        assert await store.outbox_counts() == {"delivered": 1}
        assert await store.counts() == {"completed": 1, "pending": 1, "processing": 1}


async def test_a_taken_event_id_is_named(tmp_path: Path) -> None:
    async with SqliteStorage(tmp_path / "store.db") as store:
        event_id = await create_ended(store, "exec_1", "A")
        await store.create(make_execution("exec_2"))

        with pytest.raises(StorageError, match=f"'{event_id}' already exists") as caught:
            await store.apply([OutboxAdd(event_id, "exec_2", "completed", {})])
        assert str(tmp_path) in str(caught.value)
        with pytest.raises(StorageError, match="no such webhook event 'evt_x' of execution"):
            await store.apply([OutboxDone("evt_x", "exec_2", "failed")])


async def test_the_outbox_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    log = [attempt("evt_exec_1_0", "exec_1", 1), attempt("evt_exec_1_0", "exec_1", 2)]
    async with SqliteStorage(path) as store:
        await create_ended(store, "exec_1", "A")
        await create_ended(store, "exec_2", "A")
        await store.apply([DeliveryRecorded(a) for a in log], owner="A")
        await store.apply([OutboxDone("evt_exec_2_0", "exec_2", "notified")], owner="A")

    async with SqliteStorage(path) as reopened:  # A died: its lease runs out
        assert await reopened.outbox_counts() == {"pending": 1, "notified": 1}
        assert await reopened.deliveries("exec_1") == log
        claimed = await reopened.claim_outbox("B", now=T0 + 31, lease_until=T0 + 60)
        assert claimed == [notification_of("exec_1", attempts_made=2)]

    with raw(path) as conn:
        rows = conn.execute(
            "SELECT event_id, status, execution_status, payload, created_at > 0, done_at > 0 "
            "FROM outbox ORDER BY seq"
        ).fetchall()
    conn.close()
    assert rows[0][:3] == ("evt_exec_1_0", "pending", "completed")
    assert rows[0][3] == (
        '{"executionId":"exec_1","status":"completed","video":{"url":'
        '"https://cdn.example/final.mp4","duration":8.5,"title":"«café»"}}'
    )
    assert rows[0][4:] == (1, None)
    assert rows[1][1:2] + rows[1][4:] == ("notified", 1, 1)


def _version_2_file(path: Path) -> None:
    """A store as version 2 of the schema wrote it: one execution held, one finished."""
    conn = raw(path)
    conn.execute("BEGIN")
    for statement in (*MIGRATIONS[0], *MIGRATIONS[1]):
        conn.execute(statement)
    conn.execute(
        "INSERT INTO executions (id, status, webhook_url, webhook_secret, tenant, created_at, "
        "started_at, owner, lease_until) VALUES ('exec_1', 'processing', "
        "'https://hooks.example/video', 'whsec_c2VjcmV0LWtleQ==', 'acme', 1.0, 2.0, 'A', ?)",
        (T0 + 30,),
    )
    conn.execute(
        "INSERT INTO executions (id, status, created_at, completed_at, owner, lease_until) "
        "VALUES ('exec_2', 'completed', 2.0, 4.0, 'A', ?)",
        (T0 + 30,),
    )
    conn.execute(
        "INSERT INTO jobs (execution_id, job_id, position, type, params, depends_on, status, "
        "attempts) VALUES ('exec_1', 'job1', 0, 'generate', '{\"prompt\":\"x\"}', '[]', "
        "'processing', 1)"
    )
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 2")
    conn.execute("COMMIT")
    conn.close()


async def test_a_version_2_file_is_migrated_on_open(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    _version_2_file(path)

    async with SqliteStorage(path) as store:
        assert (await store.pragmas())["user_version"] == SCHEMA_VERSION == 3
        assert await store.holders() == {"A": T0 + 30}  # the holds are kept
        assert await store.counts() == {"processing": 1, "completed": 1}
        assert await store.outbox_counts() == {}
        assert await store.deliveries("exec_1") == []
        assert await store.claim_outbox("B", now=T0, lease_until=T0 + 60) == []
        with pytest.raises(LeaseLost):
            await store.apply([ExecutionUpdate("exec_1", "completed", 2.0, 5.0)], owner="B")
        ending: list[Change] = [
            ExecutionUpdate("exec_1", "completed", 2.0, 5.0, FINAL),
            OutboxAdd("evt_exec_1_0", "exec_1", "completed", payload("exec_1")),
        ]
        await store.apply(ending, owner="A")
        await store.apply([DeliveryRecorded(attempt("evt_exec_1_0", "exec_1", 1))], owner="A")
        claimed = await store.claim_outbox("B", now=T0, lease_until=T0 + 60, dead_owners=["A"])
        assert claimed == [notification_of("exec_1", attempts_made=1)]
        assert await store.outbox_counts() == {"pending": 1}

    with raw(path) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        plans = [
            str(conn.execute(f"EXPLAIN QUERY PLAN {sql}", parameters).fetchall())
            for sql, parameters in [
                (
                    "SELECT o.event_id FROM outbox AS o JOIN executions AS e "
                    "ON e.id = o.execution_id WHERE o.status = 'pending' "
                    "AND (e.owner IS NULL OR e.lease_until < ? OR e.owner IN (?)) ORDER BY o.seq",
                    (T0, "A"),
                ),
                (
                    "UPDATE executions SET lease_until = ? WHERE id IN (SELECT execution_id "
                    "FROM outbox WHERE status = 'pending') AND owner = ? "
                    "AND status NOT IN ('pending', 'processing')",
                    (T0, "A"),
                ),
                (
                    "SELECT attempt FROM delivery_attempts WHERE execution_id = ? ORDER BY seq",
                    ("exec_1",),
                ),
                (SELECT_HOLDERS, ()),
            ]
        ]
    conn.close()
    assert {"outbox", "outbox_pending", "outbox_counts", "delivery_attempts"} <= names
    assert "outbox_pending" in plans[0]
    assert "outbox_pending" in plans[1]
    assert "delivery_attempts_by_execution" in plans[2]
    assert "TEMP B-TREE" not in plans[2]  # read in order from the index
    # holders(): the held rows and the pending events, never the finished history
    assert "executions_held" in plans[3]
    assert "outbox_pending" in plans[3]
    assert "SCAN e" not in plans[3]
    assert "SCAN executions" not in plans[3]

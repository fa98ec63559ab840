"""A provider for worker processes that logs every call in a table of the test's database.

``python -m contrib.worker --provider fleet_provider:make`` (with ``tests/`` on ``PYTHONPATH``)
runs :class:`LoggingProvider`: each call writes a row of ``<FLEET_LOG_SCHEMA>.calls`` before the
work (pid, execution, job, type, attempt, idempotency key, ``started_at``) and sets
``finished_at`` and ``outcome`` after it (``ok``, ``error``, ``cancelled``). A process killed
mid-call leaves ``finished_at`` NULL. Times are ``time.time()`` taken in the worker as the call
starts (before the row is written) and as it ends: the clock every process of one host shares,
so the log orders calls across the fleet's processes (all on this machine in the tests).

Environment: ``FLEET_LOG_SCHEMA`` (required), ``VIDEOFLOW_TEST_DSN`` (where the log is; this
machine's server by default: the log connects directly, not through the worker's ``--postgres``
DSN, so a test that cuts the board's connections keeps its log), ``FLEET_LATENCY`` (seconds
each call sleeps, ``0.05``, or ``LOW,HIGH`` for a uniform draw). A ``generate`` whose prompt
starts with ``FAIL`` raises a non-retryable :class:`ProviderError` (a scripted failure).
Videos are those of :class:`adapters.memory.FakeVideoProvider`.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import anyio
import psycopg
from attrs import define, field

from adapters.memory import FakeVideoProvider
from engine import JobRequest, ProviderError, Video

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"

#: The log table, in the schema ``FLEET_LOG_SCHEMA`` names.
TABLE = "calls"


def log_dsn() -> str:
    return os.environ.get("VIDEOFLOW_TEST_DSN", DEFAULT_DSN)


def create_log(dsn: str, schema: str) -> None:
    """Create the schema (if needed) and its empty call log, before any worker starts."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        conn.execute(
            f"""
            CREATE TABLE IF NOT EXISTS "{schema}".{TABLE} (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                pid integer NOT NULL,
                execution_id text NOT NULL,
                job_id text NOT NULL,
                type text NOT NULL,
                attempt integer NOT NULL,
                idempotency_key text NOT NULL,
                started_at double precision NOT NULL,
                finished_at double precision,
                outcome text
            )
            """
        )


def parse_latency(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    lo = float(low)
    hi = float(high) if high else lo
    if lo < 0 or hi < lo:
        raise ValueError(f"FLEET_LATENCY={text!r}: expected SECONDS or LOW,HIGH with LOW <= HIGH")
    return lo, hi


@define
class LoggingProvider:
    """See the module docstring."""

    dsn: str
    schema: str
    latency: tuple[float, float] = (0.05, 0.05)
    fake: FakeVideoProvider = field(factory=FakeVideoProvider)
    rng: random.Random = field(factory=random.Random)
    _conn: psycopg.AsyncConnection[Any] | None = field(default=None, init=False)
    _lock: anyio.Lock = field(factory=anyio.Lock, init=False)

    async def _execute(self, query: str, params: tuple[Any, ...]) -> Any:
        async with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
            cur = await self._conn.execute(query, params)
            return await cur.fetchone() if cur.description else None

    async def run(self, request: JobRequest) -> Video:
        started = time.time()
        row = await self._execute(
            f'INSERT INTO "{self.schema}".{TABLE} (pid, execution_id, job_id, type, attempt, '
            "idempotency_key, started_at) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                os.getpid(),
                request.execution_id,
                request.job_id,
                request.type,
                request.attempt,
                request.idempotency_key,
                started,
            ),
        )
        assert row is not None
        outcome = "cancelled"
        try:
            await anyio.sleep(self.rng.uniform(*self.latency))
            if request.type == "generate" and str(request.params.get("prompt", "")).startswith(
                "FAIL"
            ):
                outcome = "error"
                raise ProviderError("scripted failure", retryable=False)
            try:
                video = await self.fake.run(request)
            except BaseException:
                outcome = "error"
                raise
            outcome = "ok"
            return video
        finally:
            finished = time.time()
            with anyio.CancelScope(shield=True):
                await self._execute(
                    f'UPDATE "{self.schema}".{TABLE} SET outcome = %s, finished_at = %s '
                    "WHERE id = %s",
                    (outcome, finished, row[0]),
                )


def make() -> LoggingProvider:
    """The ``--provider fleet_provider:make`` factory, configured from the environment."""
    schema = os.environ.get("FLEET_LOG_SCHEMA")
    if not schema:
        raise RuntimeError("fleet_provider needs FLEET_LOG_SCHEMA (the schema of its call log)")
    return LoggingProvider(
        log_dsn(), schema, latency=parse_latency(os.environ.get("FLEET_LATENCY", "0.05"))
    )

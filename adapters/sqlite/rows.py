"""Rows <-> the engine's models: the tuples the store binds and reads back.

Stored JSON columns (results, errors, params, dependencies, webhook payloads) use the wire
format of :mod:`engine.wire`; rows never leave the adapter.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any

from adapters.sqlite import statements
from engine import wire
from engine.errors import StorageError
from engine.models import (
    DeliveryAttempt,
    DeliveryRecorded,
    ErrorInfo,
    Execution,
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

#: One row, as bound to a statement or read from one.
Row = tuple[Any, ...]

#: One outbox change of an apply: its statement (one of ``statements.INSERT_EVENT``,
#: ``INSERT_ATTEMPT``, ``EVENT_DONE``, ``EVENT_RESET``) and its row.
OutboxRow = tuple[str, Row]


#: One encoder for every stored JSON column: ``json.dumps`` with options builds a new one each
#: call, which costs as much as the encoding.
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def dumps(value: Any, what: str, *args: object) -> str:
    """``value`` as compact JSON; else a ``StorageError`` naming ``what.format(*args)``."""
    try:
        return _ENCODE(value)
    except (TypeError, ValueError) as exc:
        raise StorageError(f"cannot store {what.format(*args)}: it is not JSON ({exc})") from exc


def video_json(video: Video | None) -> str | None:
    return None if video is None else dumps(wire.to_json(video), "a video")


def error_json(error: ErrorInfo | None) -> str | None:
    return None if error is None else dumps(wire.to_json(error), "an error")


def _params_json(job: JobInfo) -> str:
    params = job.params
    if not params:
        return "{}"
    return dumps(params if type(params) is dict else dict(params), "the params of job {!r}", job.id)


def _depends_json(job: JobInfo) -> str:
    depends_on = job.depends_on
    if not depends_on:
        return "[]"
    return dumps(depends_on, "the dependencies of job {!r}", job.id)  # a tuple encodes as a list


def execution_row(
    execution: Execution, fingerprint: str | None, owner: str | None, lease_until: float | None
) -> Row:
    webhook = execution.webhook
    return (
        execution.id,
        execution.status,
        execution.tenant,
        execution.idempotency_key,
        fingerprint,
        execution.base_execution_id,
        None if webhook is None else webhook.url,
        None if webhook is None else webhook.secret,
        video_json(execution.result),
        error_json(execution.error),
        execution.created_at,
        execution.started_at,
        execution.completed_at,
        execution.generation,
        owner,
        lease_until,
    )


def job_rows(execution: Execution) -> list[Row]:
    return [
        (
            execution.id,
            job.id,
            position,
            job.type,
            _params_json(job),
            _depends_json(job),
            job.status,
            job.attempts,
            job.started_at,
            job.finished_at,
            video_json(job.result),
            error_json(job.error),
        )
        for position, job in enumerate(execution.jobs)
    ]


def job_update_row(change: JobUpdate) -> Row:
    return (
        change.status,
        change.attempts,
        change.started_at,
        change.finished_at,
        video_json(change.result),
        error_json(change.error),
        change.execution_id,
        change.job_id,
    )


def execution_update_row(change: ExecutionUpdate) -> Row:
    return (
        change.status,
        change.started_at,
        change.completed_at,
        video_json(change.result),
        error_json(change.error),
        change.generation,
        change.execution_id,
    )


def outbox_row(
    change: OutboxAdd | DeliveryRecorded | OutboxDone | OutboxReset, now: float
) -> OutboxRow:
    if isinstance(change, OutboxAdd):
        payload = dumps(dict(change.payload), "the payload of webhook event {!r}", change.event_id)
        return statements.INSERT_EVENT, (
            change.status,
            payload,
            now,
            change.event_id,
            change.execution_id,
        )
    if isinstance(change, DeliveryRecorded):
        a = change.attempt
        row = (a.url, a.attempt, a.at, a.status_code, a.error, a.latency, a.outcome, a.retry_at)
        return statements.INSERT_ATTEMPT, (*row, a.event_id, a.execution_id)
    if isinstance(change, OutboxDone):
        return statements.EVENT_DONE, (change.status, now, change.event_id, change.execution_id)
    return statements.EVENT_RESET, (change.event_id, change.execution_id)


def attempt_from_row(row: Row) -> DeliveryAttempt:
    event_id, execution_id, url, attempt, at, status_code, error, latency, outcome, retry_at = row
    return DeliveryAttempt(
        event_id=event_id,
        execution_id=execution_id,
        url=url,
        attempt=attempt,
        at=at,
        status_code=status_code,
        error=error,
        latency=latency,
        outcome=outcome,
        retry_at=retry_at,
    )


def notification_from_row(row: Row) -> Notification:
    event_id, execution_id, status, payload, url, secret, tenant, attempts = row
    return Notification(
        event_id=event_id,
        execution_id=execution_id,
        status=status,
        payload=json.loads(payload),
        webhook=None if url is None else Webhook(url, secret),
        tenant=tenant,
        attempts_made=attempts,
    )


def assemble(rows: Iterable[sqlite3.Row | Row]) -> list[Execution]:
    """Executions from joined rows (execution columns, then job columns), in row order."""
    executions: list[Execution] = []
    head: Row | None = None
    jobs: list[JobInfo] = []
    for row in rows:
        values = tuple(row)
        if head is None or values[0] != head[0]:
            if head is not None:
                executions.append(execution_from_row(head, jobs))
            head, jobs = values[: statements.N_EXECUTION_COLUMNS], []
        if values[statements.N_EXECUTION_COLUMNS] is not None:
            jobs.append(job_from_row(values[statements.N_EXECUTION_COLUMNS :]))
    if head is not None:
        executions.append(execution_from_row(head, jobs))
    return executions


def execution_from_row(row: Row, jobs: list[JobInfo]) -> Execution:
    (
        execution_id,
        status,
        created_at,
        base_execution_id,
        webhook_url,
        webhook_secret,
        result,
        error,
        started_at,
        completed_at,
        tenant,
        idempotency_key,
        generation,
    ) = row
    return Execution(
        id=execution_id,
        status=status,
        jobs=tuple(jobs),
        created_at=created_at,
        base_execution_id=base_execution_id,
        webhook=None if webhook_url is None else Webhook(webhook_url, webhook_secret),
        result=None if result is None else wire.from_json(json.loads(result), Video),
        error=None if error is None else wire.from_json(json.loads(error), ErrorInfo),
        started_at=started_at,
        completed_at=completed_at,
        tenant=tenant,
        idempotency_key=idempotency_key,
        generation=generation,
    )


def job_from_row(row: Row) -> JobInfo:
    (
        job_id,
        type_,
        params,
        depends_on,
        status,
        attempts,
        started_at,
        finished_at,
        result,
        error,
    ) = row
    return JobInfo(
        id=job_id,
        type=type_,
        params=json.loads(params),
        depends_on=() if depends_on == "[]" else tuple(json.loads(depends_on)),
        status=status,
        attempts=attempts,
        started_at=started_at,
        finished_at=finished_at,
        result=None if result is None else wire.from_json(json.loads(result), Video),
        error=None if error is None else wire.from_json(json.loads(error), ErrorInfo),
    )

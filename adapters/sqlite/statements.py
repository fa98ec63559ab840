"""The SQL of the SQLite store: every statement it runs, in one place.

Statements with ``{marks}`` (or ``{ids}``) take an ``IN (...)`` list: format them with
:func:`marks` for a chunk of at most :data:`CHUNK` values (see :func:`chunks`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

#: The most values bound to one ``IN (...)`` list (SQLite's limit is 999 on old builds).
CHUNK = 500


def marks(n: int) -> str:
    """``n`` placeholders for an ``IN (...)`` list: ``?, ?, ?``."""
    return ", ".join("?" * n)


def chunks(values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    """``values`` in slices of at most :data:`CHUNK`."""
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


EXECUTION_COLUMNS = (
    "e.id, e.status, e.created_at, e.base_execution_id, e.webhook_url, e.webhook_secret, "
    "e.result, e.error, e.started_at, e.completed_at, e.tenant, e.idempotency_key, e.generation"
)
JOB_COLUMNS = (
    "j.job_id, j.type, j.params, j.depends_on, j.status, j.attempts, j.started_at, "
    "j.finished_at, j.result, j.error"
)
N_EXECUTION_COLUMNS = 13

SELECT_ONE = f"""
    SELECT {EXECUTION_COLUMNS}, {JOB_COLUMNS}
    FROM executions AS e LEFT JOIN jobs AS j ON j.execution_id = e.id
    WHERE e.id = ?
    ORDER BY j.position
"""
SELECT_UNFINISHED = f"""
    SELECT {EXECUTION_COLUMNS}, {JOB_COLUMNS}
    FROM executions AS e LEFT JOIN jobs AS j ON j.execution_id = e.id
    WHERE e.status IN ('pending', 'processing')
    ORDER BY e.seq, j.position
"""
SELECT_BY_SEQ = f"""
    SELECT {EXECUTION_COLUMNS}, {JOB_COLUMNS}
    FROM executions AS e LEFT JOIN jobs AS j ON j.execution_id = e.id
    WHERE e.seq IN ({{marks}})
    ORDER BY e.seq, j.position
"""
# Holds on unfinished executions (through executions_held), and on finished ones with pending
# webhook events (through outbox_pending): never the finished history.
SELECT_HOLDERS = """
    SELECT owner, max(lease_until) FROM (
        SELECT owner, lease_until FROM executions
        WHERE status IN ('pending', 'processing') AND owner IS NOT NULL
        UNION ALL
        SELECT e.owner, e.lease_until
        FROM outbox AS o JOIN executions AS e ON e.id = o.execution_id
        WHERE o.status = 'pending' AND e.owner IS NOT NULL
            AND e.status NOT IN ('pending', 'processing')
    )
    GROUP BY owner
"""
SELECT_OWNERS = "SELECT id, owner FROM executions WHERE id IN ({marks})"
# Claimable: unheld, expired, or held by one of the takeable owners (dead ones; the claimer too
# when it names the executions).
CLAIMABLE = "(owner IS NULL OR lease_until < ? OR owner IN ({marks}))"
SELECT_CLAIMABLE = f"""
    SELECT seq FROM executions
    WHERE status IN ('pending', 'processing') AND {CLAIMABLE}
    ORDER BY seq
    LIMIT ?
"""
SELECT_CLAIMABLE_IDS = f"""
    SELECT seq FROM executions
    WHERE id IN ({{ids}}) AND (status NOT IN ('pending', 'processing') OR {CLAIMABLE})
"""
TAKE = "UPDATE executions SET owner = ?, lease_until = ? WHERE seq = ?"
RENEW = """
    UPDATE executions SET lease_until = ?
    WHERE owner = ? AND status IN ('pending', 'processing')
"""
SELECT_HELD = "SELECT id FROM executions WHERE owner = ? AND status IN ('pending', 'processing')"
RELEASE_ALL = """
    UPDATE executions SET owner = NULL, lease_until = NULL
    WHERE owner = ? AND status IN ('pending', 'processing')
"""
RELEASE_ONE = "UPDATE executions SET owner = NULL, lease_until = NULL WHERE id = ? AND owner = ?"
SELECT_COUNTS = "SELECT status, n FROM execution_counts WHERE n != 0"
#: One tenant's, counted from its rows (a scan: no index keys on the tenant alone).
SELECT_COUNTS_OF_TENANT = "SELECT status, count(*) FROM executions WHERE tenant = ? GROUP BY status"

# --- the webhook outbox (schema version 3) ---
# Every outbox statement ends with the event id and the execution id, in that order.
INSERT_EVENT = """
    INSERT INTO outbox (execution_status, payload, created_at, status, event_id, execution_id)
    SELECT ?, ?, ?, 'pending', ?, id FROM executions WHERE id = ?
"""
INSERT_ATTEMPT = """
    INSERT INTO delivery_attempts (
        url, attempt, at, status_code, error, latency, outcome, retry_at, event_id, execution_id
    )
    SELECT ?, ?, ?, ?, ?, ?, ?, ?, event_id, execution_id FROM outbox
    WHERE event_id = ? AND execution_id = ?
"""
EVENT_DONE = "UPDATE outbox SET status = ?, done_at = ? WHERE event_id = ? AND execution_id = ?"
EVENT_RESET = """
    UPDATE outbox SET status = 'pending', done_at = NULL WHERE event_id = ? AND execution_id = ?
"""
SELECT_EVENT_IDS = "SELECT event_id FROM outbox WHERE event_id IN ({marks})"
SELECT_CLAIMABLE_EVENTS = """
    SELECT o.event_id, o.execution_id, o.execution_status, o.payload, e.webhook_url,
        e.webhook_secret, e.tenant,
        (SELECT count(*) FROM delivery_attempts AS d
         WHERE d.execution_id = o.execution_id AND d.event_id = o.event_id)
    FROM outbox AS o JOIN executions AS e ON e.id = o.execution_id
    WHERE o.status = 'pending' AND e.status NOT IN ('pending', 'processing')
        AND (e.owner IS NULL OR e.lease_until < ? OR e.owner IN ({marks}))
    ORDER BY o.seq
"""
TAKE_BY_ID = "UPDATE executions SET owner = ?, lease_until = ? WHERE id = ?"
# Finished executions only: RENEW has extended the unfinished ones.
RENEW_OUTBOX = """
    UPDATE executions SET lease_until = ?
    WHERE id IN (SELECT execution_id FROM outbox WHERE status = 'pending')
        AND owner = ? AND status NOT IN ('pending', 'processing')
"""
SELECT_DELIVERIES = """
    SELECT event_id, execution_id, url, attempt, at, status_code, error, latency, outcome,
        retry_at
    FROM delivery_attempts WHERE execution_id = ? ORDER BY seq
"""
SELECT_OUTBOX_COUNTS = "SELECT status, n FROM outbox_counts WHERE n != 0"
# Its terms match the expressions of the index executions_by_idempotency_key, so it uses it.
FIND_KEY = """
    SELECT id, fingerprint FROM executions
    WHERE (tenant IS NULL) = ? AND ifnull(tenant, '') = ? AND idempotency_key = ?
"""
INSERT_EXECUTION = """
    INSERT INTO executions (
        id, status, tenant, idempotency_key, fingerprint, base_execution_id, webhook_url,
        webhook_secret, result, error, created_at, started_at, completed_at, generation, owner,
        lease_until
    ) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
INSERT_JOB = """
    INSERT INTO jobs (
        execution_id, job_id, position, type, params, depends_on, status, attempts,
        started_at, finished_at, result, error
    ) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
UPDATE_JOB = """
    UPDATE jobs SET status = ?, attempts = ?, started_at = ?, finished_at = ?, result = ?,
        error = ?
    WHERE execution_id = ? AND job_id = ?
"""
UPDATE_EXECUTION = """
    UPDATE executions SET status = ?, started_at = ?, completed_at = ?, result = ?, error = ?,
        generation = ?
    WHERE id = ?
"""

# --- existence checks, to name what an apply targets that is not stored ---
EXECUTION_EXISTS = "SELECT 1 FROM executions WHERE id = ?"
JOB_EXISTS = "SELECT 1 FROM jobs WHERE execution_id = ? AND job_id = ?"
EVENT_EXISTS = "SELECT 1 FROM outbox WHERE event_id = ? AND execution_id = ?"

"""The board's SQL, one statement per kind of change; ``{s}`` is the quoted schema.

Batches travel as arrays (``unnest``), so a batch of any size is one statement and one round
trip. Rows that several transactions may update are locked in key order (``ORDER BY ... FOR
UPDATE``) before they are written, which keeps deadlocks rare; the board retries the few left.
"""

from __future__ import annotations

LIVE = "('pending', 'processing')"

# --- submit ----------------------------------------------------------------------------------

# FOR SHARE: a base's ending (an UPDATE of this row) waits for this submit to commit, and the
# ending reads the dependents after taking that row, so it sees this execution's edges.
LOCK_BASE = """
    SELECT status, tenant, final_job FROM {s}.executions WHERE id = %s FOR SHARE
"""

INSERT_EXECUTION = """
    INSERT INTO {s}.executions (
        id, tenant, idempotency_key, fingerprint, status, base_execution_id, final_job,
        webhook_url, webhook_secret, result, error, created_at, started_at, completed_at,
        generation)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, NULL, %s::jsonb, %s, NULL, %s, %s)
    ON CONFLICT ((tenant IS NULL), (coalesce(tenant, '')), idempotency_key)
        WHERE idempotency_key IS NOT NULL
    DO NOTHING
    RETURNING id
"""

FIND_KEY = """
    SELECT id, fingerprint FROM {s}.executions
    WHERE (tenant IS NULL) = %s AND coalesce(tenant, '') = %s AND idempotency_key = %s
"""

INSERT_JOBS = """
    INSERT INTO {s}.jobs (
        execution_id, job_id, position, type, params, depends_on, status, waiting, run_at)
    SELECT %s, u.job_id, u.position, u.type, u.params::jsonb, u.depends_on::jsonb, u.status,
        u.waiting, %s
    FROM unnest(%s::text[], %s::int[], %s::text[], %s::text[], %s::text[], %s::text[], %s::int[])
        AS u(job_id, position, type, params, depends_on, status, waiting)
"""

INSERT_DEPS = """
    INSERT INTO {s}.deps (dep_execution_id, dep_job_id, execution_id, job_id, slot)
    SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::int[])
"""

# --- claim -----------------------------------------------------------------------------------

LOCK_LIMITS = """
    SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0)))
    FROM unnest(%s::text[]) AS k
"""

READ_LIMITS = "SELECT type, max_running FROM {s}.limits WHERE type = ANY(%s::text[])"

SET_LIMITS = """
    INSERT INTO {s}.limits (type, max_running)
    SELECT * FROM unnest(%s::text[], %s::int[])
    ON CONFLICT (type) DO UPDATE SET max_running = excluded.max_running
"""

CLEAR_LIMITS = "DELETE FROM {s}.limits WHERE NOT (type = ANY(%s::text[]))"

OUTBOX_RESET = """
    UPDATE {s}.outbox
    SET status = 'pending', done_at = NULL, claimed_by = %s, lease_until = 0
    WHERE event_id = %s AND execution_id = %s
"""

COUNT_RUNNING = """
    SELECT type, count(*) FROM {s}.jobs
    WHERE status = 'processing' AND type = ANY(%s::text[])
    GROUP BY type
"""

# One index range per type (jobs_ready is (type, run_at) WHERE status = 'ready'), each locked
# as it is read (SKIP LOCKED: concurrent claimers take different rows), then the oldest
# ``limit`` of them claimed. The execution turns ``processing`` with its first claim. The
# inputs are read at claim time from the dependencies' results, in slot order.
CLAIM = """
    WITH quota AS (
        SELECT * FROM unnest(%(types)s::text[], %(quotas)s::int[]) AS q(type, n)
    ), picked AS (
        SELECT c.execution_id, c.job_id
        FROM quota CROSS JOIN LATERAL (
            SELECT j.execution_id, j.job_id, j.run_at FROM {s}.jobs AS j
            WHERE j.status = 'ready' AND j.type = quota.type AND j.run_at <= %(now)s
            ORDER BY j.run_at
            LIMIT quota.n
            FOR UPDATE SKIP LOCKED
        ) AS c
        ORDER BY c.run_at
        LIMIT %(limit)s
    ), claimed AS (
        UPDATE {s}.jobs AS j
        SET status = 'processing', attempts = j.attempts + 1, claimed_by = %(engine)s,
            claim_token = gen_random_uuid()::text, started_at = %(now)s, finished_at = NULL
        FROM picked
        WHERE j.execution_id = picked.execution_id AND j.job_id = picked.job_id
        RETURNING j.execution_id, j.job_id, j.type, j.params, j.attempts, j.claim_token,
            j.position
    ), started AS (
        UPDATE {s}.executions AS e
        SET status = 'processing', started_at = coalesce(e.started_at, %(now)s)
        WHERE e.id IN (SELECT execution_id FROM claimed) AND e.status = 'pending'
    )
    SELECT c.execution_id, c.job_id, c.type, c.params, c.attempts, c.claim_token,
        (SELECT coalesce(jsonb_agg(dj.result ORDER BY d.slot), '[]'::jsonb)
         FROM {s}.deps AS d
         JOIN {s}.jobs AS dj ON dj.execution_id = d.dep_execution_id AND dj.job_id = d.dep_job_id
         WHERE d.execution_id = c.execution_id AND d.job_id = c.job_id AND d.slot >= 0)
    FROM claimed AS c
    ORDER BY c.execution_id, c.position
"""

# --- complete (one batch) ----------------------------------------------------------------------

# Fenced on the claim token: a job rescued, handed back, cancelled or claimed again since has
# another token (or none) and is not touched.
# The batch is one JSON array of [execution_id, job_id, token, result] (one string to send:
# cheaper for the client than four text arrays, whose elements psycopg quotes one by one).
COMPLETE_JOBS = """
    WITH b AS (
        SELECT r->>0 AS execution_id, r->>1 AS job_id, r->>2 AS token, r->3 AS result
        FROM jsonb_array_elements(%s::jsonb) AS r
    ), locked AS (
        SELECT j.execution_id, j.job_id, b.token, b.result, j.job_id = e.final_job AS final
        FROM {s}.jobs AS j
        JOIN b ON j.execution_id = b.execution_id AND j.job_id = b.job_id
        JOIN {s}.executions AS e ON e.id = j.execution_id
        WHERE j.claim_token = b.token AND j.status = 'processing'
        ORDER BY j.execution_id, j.job_id
        FOR UPDATE OF j
    )
    UPDATE {s}.jobs AS j
    SET status = 'completed', result = locked.result, error = NULL,
        finished_at = %s, claimed_by = NULL, claim_token = NULL
    FROM locked
    WHERE j.execution_id = locked.execution_id AND j.job_id = locked.job_id
    RETURNING j.execution_id, j.job_id, locked.token, locked.final
"""

COMPLETE_EXECUTIONS = """
    UPDATE {s}.executions AS e
    SET status = 'completed', result = f.result::jsonb, error = NULL, completed_at = %s
    FROM unnest(%s::text[], %s::text[]) AS f(id, result)
    WHERE e.id = f.id AND e.status IN ('pending', 'processing')
    RETURNING e.id, e.tenant, e.webhook_url, e.webhook_secret, e.generation, e.created_at,
        e.started_at, e.result
"""

# Runs after COMPLETE_EXECUTIONS took the ended executions' rows, in a statement of its own, so
# it sees the edges of every dependent execution whose submit committed before.
RELEASE_DEPENDENTS = """
    WITH done AS (
        SELECT * FROM unnest(%s::text[], %s::text[]) AS d(execution_id, job_id)
    ), hits AS (
        SELECT d.execution_id, d.job_id, count(*)::int AS n
        FROM {s}.deps AS d
        JOIN done ON d.dep_execution_id = done.execution_id AND d.dep_job_id = done.job_id
        GROUP BY d.execution_id, d.job_id
    ), locked AS (
        SELECT j.execution_id, j.job_id, hits.n
        FROM {s}.jobs AS j
        JOIN hits ON j.execution_id = hits.execution_id AND j.job_id = hits.job_id
        WHERE j.status = 'waiting'
        ORDER BY j.execution_id, j.job_id
        FOR UPDATE OF j
    )
    UPDATE {s}.jobs AS j
    SET waiting = j.waiting - locked.n,
        status = CASE WHEN j.waiting = locked.n THEN 'ready' ELSE 'waiting' END,
        run_at = CASE WHEN j.waiting = locked.n THEN %s ELSE j.run_at END
    FROM locked
    WHERE j.execution_id = locked.execution_id AND j.job_id = locked.job_id
    RETURNING j.type, j.status
"""

INSERT_OUTBOX = """
    INSERT INTO {s}.outbox (
        event_id, execution_id, execution_status, status, payload, created_at)
    SELECT u.event_id, u.execution_id, u.execution_status, 'pending', u.payload::json, %s
    FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[])
        AS u(event_id, execution_id, execution_status, payload)
"""

NOTIFY = """
    SELECT count(pg_notify(n.channel, n.payload))
    FROM unnest(%s::text[], %s::text[]) AS n(channel, payload)
"""

# --- fail, cancel, resume ----------------------------------------------------------------------

FAIL_JOB = """
    UPDATE {s}.jobs
    SET status = 'failed', error = %s::jsonb, finished_at = %s, claimed_by = NULL,
        claim_token = NULL
    WHERE execution_id = %s AND job_id = %s AND claim_token = %s AND status = 'processing'
    RETURNING attempts
"""

RETRY_JOB = """
    UPDATE {s}.jobs
    SET status = 'ready', run_at = %s, error = %s::jsonb, finished_at = %s, claimed_by = NULL,
        claim_token = NULL
    WHERE execution_id = %s AND job_id = %s AND claim_token = %s AND status = 'processing'
    RETURNING type
"""

END_EXECUTIONS = """
    UPDATE {s}.executions AS e
    SET status = u.status, error = u.error::jsonb, result = NULL, completed_at = %s
    FROM unnest(%s::text[], %s::text[], %s::text[]) AS u(id, status, error)
    WHERE e.id = u.id AND e.status IN ('pending', 'processing')
    RETURNING e.id, e.status, e.tenant, e.webhook_url, e.webhook_secret, e.generation,
        e.created_at, e.started_at, e.error
"""

LIVE_DEPENDENTS = """
    SELECT id, base_execution_id FROM {s}.executions
    WHERE base_execution_id = ANY(%s::text[]) AND status IN ('pending', 'processing')
    ORDER BY seq
"""

CANCEL_JOBS = """
    WITH prev AS (
        SELECT execution_id, job_id, status FROM {s}.jobs
        WHERE execution_id = ANY(%s::text[]) AND status IN ('waiting', 'ready', 'processing')
        ORDER BY execution_id, job_id
        FOR UPDATE
    )
    UPDATE {s}.jobs AS j
    SET status = 'cancelled', claimed_by = NULL, claim_token = NULL,
        finished_at = CASE WHEN prev.status = 'processing' THEN %s ELSE j.finished_at END
    FROM prev
    WHERE j.execution_id = prev.execution_id AND j.job_id = prev.job_id
    RETURNING j.execution_id, j.job_id, prev.status
"""

LOCK_EXECUTION = """
    SELECT status, base_execution_id FROM {s}.executions WHERE id = %s FOR UPDATE
"""

# Every unfinished job of the execution, its unmet dependencies counted again from the jobs
# they name (in this execution or its base).
RESUME_JOBS = """
    WITH w AS (
        SELECT j.job_id,
            count(d.dep_job_id) FILTER (WHERE dj.status IS DISTINCT FROM 'completed')::int AS n
        FROM {s}.jobs AS j
        LEFT JOIN {s}.deps AS d ON d.execution_id = j.execution_id AND d.job_id = j.job_id
        LEFT JOIN {s}.jobs AS dj
            ON dj.execution_id = d.dep_execution_id AND dj.job_id = d.dep_job_id
        WHERE j.execution_id = %(id)s AND j.status <> 'completed'
        GROUP BY j.job_id
    )
    UPDATE {s}.jobs AS j
    SET status = CASE WHEN w.n = 0 THEN 'ready' ELSE 'waiting' END, waiting = w.n,
        run_at = %(now)s, finished_at = NULL, result = NULL, error = NULL, claimed_by = NULL,
        claim_token = NULL
    FROM w
    WHERE j.execution_id = %(id)s AND j.job_id = w.job_id
    RETURNING j.type, j.status
"""

RESUME_EXECUTION = """
    UPDATE {s}.executions AS e
    SET status = CASE WHEN EXISTS (
            SELECT 1 FROM {s}.jobs AS j WHERE j.execution_id = e.id AND j.status = 'completed')
            THEN 'processing' ELSE 'pending' END,
        generation = e.generation + 1, result = NULL, error = NULL, completed_at = NULL
    WHERE e.id = %s
    RETURNING e.status, e.generation
"""

# --- engines, leases -------------------------------------------------------------------------

REGISTER = """
    INSERT INTO {s}.engines (id, job_types, started_at, heartbeat_at, lease_until)
    VALUES (%s, %s, %s, %s, %s)
    ON CONFLICT (id) DO UPDATE
    SET job_types = excluded.job_types, heartbeat_at = excluded.heartbeat_at,
        lease_until = excluded.lease_until
"""

HEARTBEAT = "UPDATE {s}.engines SET heartbeat_at = %s, lease_until = %s WHERE id = %s"

RESCUE = """
    WITH gone AS (
        DELETE FROM {s}.engines WHERE lease_until < %(now)s
    ), rescued AS (
        UPDATE {s}.jobs AS j
        SET status = 'ready', claimed_by = NULL, claim_token = NULL, run_at = %(now)s
        WHERE j.status = 'processing' AND NOT EXISTS (
            SELECT 1 FROM {s}.engines AS g
            WHERE g.id = j.claimed_by AND g.lease_until >= %(now)s)
        RETURNING j.type
    )
    SELECT type, count(*) FROM rescued GROUP BY type
"""

RELEASE = """
    WITH gone AS (
        DELETE FROM {s}.engines WHERE id = %(engine)s
    ), events AS (
        UPDATE {s}.outbox SET claimed_by = NULL, lease_until = NULL
        WHERE claimed_by = %(engine)s AND status = 'pending'
    ), back AS (
        UPDATE {s}.jobs
        SET status = 'ready', claimed_by = NULL, claim_token = NULL
        WHERE status = 'processing' AND claimed_by = %(engine)s
        RETURNING type
    )
    SELECT type, count(*) FROM back GROUP BY type
"""

# --- reads -----------------------------------------------------------------------------------

GET = """
    SELECT e.id, e.status, e.created_at, e.base_execution_id, e.webhook_url, e.webhook_secret,
        e.result, e.error, e.started_at, e.completed_at, e.tenant, e.idempotency_key,
        e.generation,
        j.job_id, j.type, j.params, j.depends_on, j.status, j.attempts, j.started_at,
        j.finished_at, j.result, j.error
    FROM {s}.executions AS e LEFT JOIN {s}.jobs AS j ON j.execution_id = e.id
    WHERE e.id = %s
    ORDER BY j.position
"""

COUNTS = "SELECT status, count(*) FROM {s}.executions GROUP BY status"
COUNTS_OF_TENANT = "SELECT status, count(*) FROM {s}.executions WHERE tenant = %s GROUP BY status"
RUNNING_BY_TYPE = "SELECT type, count(*) FROM {s}.jobs WHERE status = 'processing' GROUP BY type"
JOB_COUNTS = "SELECT status, count(*) FROM {s}.jobs GROUP BY status"

ENGINES = """
    SELECT g.id, g.job_types, g.started_at, g.heartbeat_at, g.lease_until,
        (SELECT count(*) FROM {s}.jobs AS j
         WHERE j.status = 'processing' AND j.claimed_by = g.id)
    FROM {s}.engines AS g
    WHERE g.lease_until >= %s
    ORDER BY g.id
"""

# --- the outbox ------------------------------------------------------------------------------

# Held: claimed by an engine whose claim has not expired, or which is alive (heartbeating).
CLAIM_OUTBOX = """
    WITH picked AS (
        SELECT o.event_id
        FROM {s}.outbox AS o JOIN {s}.executions AS e ON e.id = o.execution_id
        WHERE o.status = 'pending' AND e.status NOT IN ('pending', 'processing')
            AND (o.claimed_by IS NULL OR (o.lease_until < %(now)s AND NOT EXISTS (
                SELECT 1 FROM {s}.engines AS g
                WHERE g.id = o.claimed_by AND g.lease_until >= %(now)s)))
        ORDER BY o.seq
        LIMIT %(limit)s
        FOR UPDATE OF o SKIP LOCKED
    )
    UPDATE {s}.outbox AS o
    SET claimed_by = %(engine)s, lease_until = %(lease)s
    FROM picked, {s}.executions AS e
    WHERE o.event_id = picked.event_id AND e.id = o.execution_id
    RETURNING o.seq, o.event_id, o.execution_id, o.execution_status, o.payload, e.webhook_url,
        e.webhook_secret, e.tenant,
        (SELECT count(*) FROM {s}.deliveries AS d WHERE d.event_id = o.event_id)
"""

RECORD_DELIVERY = """
    INSERT INTO {s}.deliveries (
        event_id, execution_id, url, attempt, at, status_code, error, latency, outcome, retry_at)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""

OUTBOX_DONE = """
    UPDATE {s}.outbox
    SET status = %s, done_at = extract(epoch FROM clock_timestamp())
    WHERE event_id = %s
"""

DELIVERIES = """
    SELECT event_id, execution_id, url, attempt, at, status_code, error, latency, outcome,
        retry_at
    FROM {s}.deliveries WHERE execution_id = %s ORDER BY seq
"""

OUTBOX_ROWS = """
    SELECT event_id, execution_status, status, payload FROM {s}.outbox
    WHERE execution_id = %s ORDER BY seq
"""

OUTBOX_COUNTS = "SELECT status, count(*) FROM {s}.outbox GROUP BY status"

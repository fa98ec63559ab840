"""The PostgreSQL job board's schema and its versioned migrations.

Everything lives in one schema of its own (``videoflow`` by default), so one database can hold
several boards (tests use a fresh random schema each). ``schema_version`` holds one row: how many
entries of :data:`MIGRATIONS` have been applied. A schema with a higher version than this code
knows was written by a newer release and is refused rather than misread.

Migrations run in one transaction under ``pg_advisory_xact_lock`` on a key derived from the
schema name, so any number of processes may open the same board at once: the first migrates,
the others wait for its commit and then find nothing to do. Add a migration by appending to
:data:`MIGRATIONS`; never edit one that has shipped. ``{s}`` in a statement is the quoted schema.

Layout (version 1). Times are seconds on the engines' clock (``double precision``), not
``timestamptz``: the engine runs on an injectable clock.

- ``executions``: one row per execution. ``seq`` is the submission order. ``final_job`` is the
  plan's sink, whose completion completes the execution. ``(tenant, idempotency_key)`` is unique
  when a key is set; the index keys on ``(tenant IS NULL, coalesce(tenant, ''))`` so that "no
  tenant" is a scope of its own, distinct from a tenant named ``''`` (a plain
  ``UNIQUE (tenant, key)`` would let two NULL-tenant rows share a key). ``submit`` inserts with
  ``ON CONFLICT`` on that index: idempotency is the constraint's, not a read-then-write.
- ``jobs``: one row per job. ``status`` is ``waiting`` (``waiting`` > 0 unmet dependencies),
  ``ready`` (claimable from ``run_at`` on), ``processing`` (claimed by ``claimed_by`` with
  ``claim_token``), ``completed``, ``failed`` or ``cancelled``. ``attempts`` counts claims.
  ``jobs_ready`` serves the claim query (one index range per type, in ``run_at`` order);
  ``jobs_processing`` the per-type running counts (limits, metrics), rescue and release.
- ``deps``: one row per dependency edge, in-plan and across executions (each root job of a
  dependent execution depends on its base's final job). ``slot`` is the index of the
  dependency's video among the job's inputs, or -1 for an order-only edge (a ``generate`` root of
  a variant waits for the base but takes no input). The primary key leads with the dependency,
  which is what a completion looks up.
- ``engines``: one row per live engine: its job types and its lease (one heartbeat write per
  engine per interval renews the lease on every job it holds).
- ``outbox``: one row per webhook event (``evt_{execution}_{generation}``), written in the
  transaction that ends its execution. ``payload`` is ``json``, not ``jsonb``, so the body keeps
  the key order ``payload_for`` gave it. ``deliveries`` is the attempt log.
- ``limits``: the fleet-wide cap on running jobs of a type. Every claim reads it, so an engine
  started without ``limits=`` obeys the caps another engine set: the database enforces them.

``jobs`` and ``deps`` carry no foreign keys: they are written only with their execution, in the
board's own transactions, and a per-row constraint trigger would cost on the hottest inserts.
"""

from __future__ import annotations

_V1 = (
    """
    CREATE TABLE {s}.executions (
        seq bigint GENERATED ALWAYS AS IDENTITY,
        id text PRIMARY KEY,
        tenant text,
        idempotency_key text,
        fingerprint text,
        status text NOT NULL CHECK (
            status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')),
        base_execution_id text REFERENCES {s}.executions (id),
        final_job text NOT NULL,
        webhook_url text,
        webhook_secret text,
        result jsonb,
        error jsonb,
        created_at double precision NOT NULL,
        started_at double precision,
        completed_at double precision,
        generation integer NOT NULL DEFAULT 0
    )
    """,
    """
    CREATE UNIQUE INDEX executions_idempotency
    ON {s}.executions ((tenant IS NULL), (coalesce(tenant, '')), idempotency_key)
    WHERE idempotency_key IS NOT NULL
    """,
    """
    CREATE INDEX executions_by_base ON {s}.executions (base_execution_id)
    WHERE base_execution_id IS NOT NULL
    """,
    "CREATE INDEX executions_by_tenant_status ON {s}.executions (tenant, status)",
    """
    CREATE TABLE {s}.jobs (
        execution_id text NOT NULL,
        job_id text NOT NULL,
        position integer NOT NULL,
        type text NOT NULL,
        params jsonb NOT NULL,
        depends_on jsonb NOT NULL,
        status text NOT NULL CHECK (
            status IN ('waiting', 'ready', 'processing', 'completed', 'failed', 'cancelled')),
        waiting integer NOT NULL CHECK (waiting >= 0),
        attempts integer NOT NULL DEFAULT 0,
        run_at double precision NOT NULL,
        claimed_by text,
        claim_token text,
        started_at double precision,
        finished_at double precision,
        result jsonb,
        error jsonb,
        PRIMARY KEY (execution_id, job_id)
    )
    """,
    "CREATE INDEX jobs_ready ON {s}.jobs (type, run_at) WHERE status = 'ready'",
    "CREATE INDEX jobs_processing ON {s}.jobs (type) WHERE status = 'processing'",
    """
    CREATE TABLE {s}.deps (
        dep_execution_id text NOT NULL,
        dep_job_id text NOT NULL,
        execution_id text NOT NULL,
        job_id text NOT NULL,
        slot integer NOT NULL,
        PRIMARY KEY (dep_execution_id, dep_job_id, execution_id, job_id)
    )
    """,
    "CREATE INDEX deps_by_job ON {s}.deps (execution_id, job_id)",
    """
    CREATE TABLE {s}.engines (
        id text PRIMARY KEY,
        job_types text[] NOT NULL,
        started_at double precision NOT NULL,
        heartbeat_at double precision NOT NULL,
        lease_until double precision NOT NULL
    )
    """,
    """
    CREATE TABLE {s}.outbox (
        seq bigint GENERATED ALWAYS AS IDENTITY,
        event_id text PRIMARY KEY,
        execution_id text NOT NULL REFERENCES {s}.executions (id),
        execution_status text NOT NULL,
        status text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed', 'notified')),
        payload json NOT NULL,
        created_at double precision NOT NULL,
        claimed_by text,
        lease_until double precision,
        done_at double precision
    )
    """,
    "CREATE INDEX outbox_pending ON {s}.outbox (seq) WHERE status = 'pending'",
    """
    CREATE TABLE {s}.deliveries (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        event_id text NOT NULL REFERENCES {s}.outbox (event_id),
        execution_id text NOT NULL,
        url text NOT NULL,
        attempt integer NOT NULL,
        at double precision NOT NULL,
        status_code integer,
        error text,
        latency double precision NOT NULL,
        outcome text NOT NULL,
        retry_at double precision
    )
    """,
    "CREATE INDEX deliveries_by_execution ON {s}.deliveries (execution_id, seq)",
    "CREATE INDEX deliveries_by_event ON {s}.deliveries (event_id)",
    """
    CREATE TABLE {s}.limits (
        type text PRIMARY KEY,
        max_running integer NOT NULL CHECK (max_running >= 0)
    )
    """,
)

#: ``MIGRATIONS[i]`` takes a schema from version ``i`` to ``i + 1``.
MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1,)

#: The schema version this code writes: the number of migrations.
SCHEMA_VERSION = len(MIGRATIONS)

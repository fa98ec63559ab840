"""The SQLite store's schema and its migrations.

A store file is recognised by two header fields:

- ``PRAGMA application_id`` is :data:`APPLICATION_ID` (ASCII ``VFLW``). A file with another
  application id, or with id 0 but a non-empty schema or a non-zero ``user_version``, belongs to
  someone else and is never touched.
- ``PRAGMA user_version`` is the schema version: how many entries of :data:`MIGRATIONS` have been
  applied. A file with a higher version than this code knows was written by a newer release and
  is refused rather than misread.

Each migration is a tuple of single SQL statements run, in order, inside the opening
``BEGIN IMMEDIATE`` transaction, so two processes opening one new file migrate it once. Add a
migration by appending to :data:`MIGRATIONS`; never edit one that has shipped.

Layout (version 1):

- ``executions``: one row per execution. ``seq`` (an ``INTEGER PRIMARY KEY``, stable under
  ``VACUUM``) is the insertion order, which ``unfinished()`` returns. Results and errors are the
  wire JSON of :class:`~engine.models.Video` and :class:`~engine.models.ErrorInfo`.
  ``(tenant, idempotency_key)`` is unique when the key is set; the index keys on
  ``(tenant IS NULL, ifnull(tenant, ''))`` so that "no tenant" is one scope of its own, distinct
  from a tenant named ``''``.
- ``jobs``: one row per job; ``(execution_id, position)`` orders an execution's jobs for
  ``get()``, ``(execution_id, job_id)`` finds one for an update.
- ``execution_counts``: executions per status, kept by triggers, so ``counts()`` is a read of a
  few rows instead of a scan of every execution.

Version 2 adds execution ownership (leases and fencing, see :class:`~engine.ports.Storage`):

- ``executions.owner``: the engine holding the execution, or ``NULL`` when no one does;
  ``executions.lease_until``: until when (a number on the engines' clock; ``NULL`` when
  unheld, ``Inf`` for a hold without expiry). A finished execution keeps its last holder.
- ``executions_held``: ``(owner, lease_until)`` over unfinished executions only, so that
  ``renew(owner)``, ``release(owner)`` and ``holders()`` read the held rows, not the history.
  ``claim`` scans the unfinished executions in ``seq`` order through ``executions_unfinished``.

Version 3 adds the durable webhook outbox:

- ``outbox``: one row per webhook event, written in the transaction that ends its execution.
  ``seq`` orders the events ("oldest first", stable under ``VACUUM``); ``event_id`` is unique.
  ``execution_status`` is the status the event announces, ``status`` the event's own:
  ``pending`` until a notifier is done with it, then ``delivered``, ``failed`` or ``notified``.
  ``payload`` is the webhook body as compact JSON. ``created_at`` and ``done_at`` are wall-clock
  Unix times, for people reading the file (the port never returns them).
- ``outbox_pending``: the pending events in ``seq`` order, what ``claim_outbox``, ``renew`` and
  ``holders()`` read, so the delivered history is never scanned.
- ``outbox_counts``: events per status, kept by triggers like ``execution_counts``.
- ``delivery_attempts``: the delivery log, one row per attempt, in ``seq`` order; an event's
  attempt count is its number of rows. ``delivery_attempts_by_execution`` reads one
  execution's log in order.
"""

from __future__ import annotations

#: ``PRAGMA application_id`` of every store file: ASCII ``VFLW`` as a big-endian 32-bit integer.
APPLICATION_ID = 0x56464C57

_V1 = (
    """
    CREATE TABLE executions (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        tenant TEXT,
        idempotency_key TEXT,
        fingerprint TEXT,
        base_execution_id TEXT,
        webhook_url TEXT,
        webhook_secret TEXT,
        result TEXT,
        error TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        completed_at REAL,
        generation INTEGER NOT NULL DEFAULT 0
    )
    """,
    """
    CREATE UNIQUE INDEX executions_by_idempotency_key
    ON executions (tenant IS NULL, ifnull(tenant, ''), idempotency_key)
    WHERE idempotency_key IS NOT NULL
    """,
    """
    CREATE INDEX executions_unfinished
    ON executions (seq)
    WHERE status IN ('pending', 'processing')
    """,
    """
    CREATE TABLE jobs (
        execution_id TEXT NOT NULL REFERENCES executions (id),
        job_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        type TEXT NOT NULL,
        params TEXT NOT NULL,
        depends_on TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        started_at REAL,
        finished_at REAL,
        result TEXT,
        error TEXT,
        PRIMARY KEY (execution_id, job_id)
    )
    """,
    "CREATE UNIQUE INDEX jobs_by_position ON jobs (execution_id, position)",
    """
    CREATE TABLE execution_counts (
        status TEXT PRIMARY KEY,
        n INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    """
    CREATE TRIGGER execution_counts_insert AFTER INSERT ON executions
    BEGIN
        INSERT OR IGNORE INTO execution_counts (status, n) VALUES (NEW.status, 0);
        UPDATE execution_counts SET n = n + 1 WHERE status = NEW.status;
    END
    """,
    """
    CREATE TRIGGER execution_counts_update AFTER UPDATE OF status ON executions
    WHEN OLD.status IS NOT NEW.status
    BEGIN
        UPDATE execution_counts SET n = n - 1 WHERE status = OLD.status;
        INSERT OR IGNORE INTO execution_counts (status, n) VALUES (NEW.status, 0);
        UPDATE execution_counts SET n = n + 1 WHERE status = NEW.status;
    END
    """,
    """
    CREATE TRIGGER execution_counts_delete AFTER DELETE ON executions
    BEGIN
        UPDATE execution_counts SET n = n - 1 WHERE status = OLD.status;
    END
    """,
)

_V2 = (
    "ALTER TABLE executions ADD COLUMN owner TEXT",
    "ALTER TABLE executions ADD COLUMN lease_until REAL",
    """
    CREATE INDEX executions_held
    ON executions (owner, lease_until)
    WHERE status IN ('pending', 'processing')
    """,
)

_V3 = (
    """
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        execution_id TEXT NOT NULL REFERENCES executions (id),
        execution_status TEXT NOT NULL,
        status TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at REAL NOT NULL,
        done_at REAL
    )
    """,
    "CREATE INDEX outbox_pending ON outbox (seq) WHERE status = 'pending'",
    """
    CREATE TABLE outbox_counts (
        status TEXT PRIMARY KEY,
        n INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    """
    CREATE TRIGGER outbox_counts_insert AFTER INSERT ON outbox
    BEGIN
        INSERT OR IGNORE INTO outbox_counts (status, n) VALUES (NEW.status, 0);
        UPDATE outbox_counts SET n = n + 1 WHERE status = NEW.status;
    END
    """,
    """
    CREATE TRIGGER outbox_counts_update AFTER UPDATE OF status ON outbox
    WHEN OLD.status IS NOT NEW.status
    BEGIN
        UPDATE outbox_counts SET n = n - 1 WHERE status = OLD.status;
        INSERT OR IGNORE INTO outbox_counts (status, n) VALUES (NEW.status, 0);
        UPDATE outbox_counts SET n = n + 1 WHERE status = NEW.status;
    END
    """,
    """
    CREATE TRIGGER outbox_counts_delete AFTER DELETE ON outbox
    BEGIN
        UPDATE outbox_counts SET n = n - 1 WHERE status = OLD.status;
    END
    """,
    """
    CREATE TABLE delivery_attempts (
        seq INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL REFERENCES outbox (event_id),
        execution_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        at REAL NOT NULL,
        status_code INTEGER,
        error TEXT,
        latency REAL NOT NULL,
        outcome TEXT NOT NULL,
        retry_at REAL,
        url TEXT NOT NULL
    )
    """,
    "CREATE INDEX delivery_attempts_by_execution ON delivery_attempts (execution_id)",
)

#: ``MIGRATIONS[i]`` takes a file from schema version ``i`` to ``i + 1``.
MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2, _V3)

#: The schema version this code writes: the number of migrations.
SCHEMA_VERSION = len(MIGRATIONS)

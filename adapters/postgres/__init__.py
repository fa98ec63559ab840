"""A job board on PostgreSQL (extra ``postgres``: psycopg 3 and psycopg_pool).

See :mod:`adapters.postgres.board` for the model: readiness decided by the database, batched
claims with ``FOR UPDATE SKIP LOCKED``, fenced and group-committed completions, per-engine
leases, fleet-wide per-type limits, and LISTEN/NOTIFY wake-ups with polling as the backstop.
"""

from __future__ import annotations

try:
    import psycopg  # noqa: F401
    import psycopg_pool  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "adapters.postgres needs psycopg 3 and psycopg_pool: "
        "pip install 'videoflow-engine[postgres]'"
    ) from exc

from adapters.postgres.board import MAX_GROUP, PostgresBoard
from adapters.postgres.schema import SCHEMA_VERSION

__all__ = [
    "MAX_GROUP",
    "SCHEMA_VERSION",
    "PostgresBoard",
]

"""The PostgreSQL server the tests run on, and a fresh schema per test.

``VIDEOFLOW_TEST_DSN`` (default: this machine's server, database ``test``) names it. Without a
server, the PostgreSQL tests are skipped on a developer's machine and fail in CI (``CI`` set),
where ``.ci/run`` waits for the server first.
"""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest

DSN = os.environ.get("VIDEOFLOW_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def _server_answers() -> str | None:
    try:
        with psycopg.connect(DSN, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL at {DSN} is unreachable: {exc}"


UNREACHABLE = _server_answers()
if UNREACHABLE is not None and os.environ.get("CI"):
    raise RuntimeError(f"{UNREACHABLE} (CI needs the server; .ci/run waits for it)")

#: Mark a module's tests as needing the server.
needs_postgres = pytest.mark.skipif(UNREACHABLE is not None, reason=UNREACHABLE or "")


def drop_schema(schema: str) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def new_schema_name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"

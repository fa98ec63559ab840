"""Connecting to PostgreSQL, migrating a board's schema, and translating psycopg's errors.

Every psycopg error that leaves the board is a :class:`~engine.errors.StorageError` whose
message names the server (host, port, database, user; never the password) and the cause, with
the fix where there is an obvious one.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict

from adapters.postgres.schema import MIGRATIONS, SCHEMA_VERSION
from engine.errors import ConfigError, StorageError

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,47}")

#: Seconds to wait for a server before giving up on connecting.
CONNECT_TIMEOUT = 10


def check_schema_name(schema: str) -> str:
    """The schema name, checked: lowercase letters, digits and ``_``, at most 48 characters
    (channel names ``<schema>_ready`` must fit PostgreSQL's 63-byte identifiers)."""
    if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
        raise ConfigError(
            f"schema name {schema!r} is not valid: use lowercase letters, digits and '_', "
            "starting with a letter or '_', at most 48 characters"
        )
    return schema


def describe(dsn: str) -> str:
    """``host:port/dbname as user``, from a DSN, without its password."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "an unparsable DSN"
    host = info.get("host") or info.get("hostaddr") or "localhost"
    port = info.get("port") or "5432"
    db = info.get("dbname") or "(default database)"
    user = info.get("user") or "(default user)"
    return f"PostgreSQL at {host}:{port}, database {db!r} as user {user!r}"


def connect_error(dsn: str, exc: psycopg.Error) -> StorageError:
    """A clear error for a failed connection attempt."""
    where = describe(dsn)
    text = " ".join(str(exc).split())  # one line: libpq's hints come on lines of their own
    low = text.lower()
    if isinstance(exc, psycopg.ProgrammingError) and "conninfo" in low:
        return StorageError(f"invalid PostgreSQL DSN: {text}")
    if "does not exist" in low and "database" in low:
        why = "the database does not exist (create it with `createdb`, or fix the DSN)"
    elif "role" in low and "does not exist" in low:
        why = "the user (role) does not exist on the server (fix the DSN's user)"
    elif "password authentication failed" in low or "authentication failed" in low:
        why = "bad credentials (check the DSN's user and password)"
    elif "no password supplied" in low:
        why = "the server wants a password and the DSN has none"
    elif "connection refused" in low or "could not connect" in low or "timeout" in low:
        why = "the server is unreachable (is PostgreSQL running, and on that host and port?)"
    else:
        why = "connection failed"
    return StorageError(f"cannot connect to {where}: {why}: {text}")


def storage_error(schema: str, op: str, exc: psycopg.Error) -> StorageError:
    """A clear error for a failed operation on an open board."""
    state = f" [{exc.sqlstate}]" if exc.sqlstate else ""
    if isinstance(exc, pg_errors.UndefinedTable):
        return StorageError(
            f"PostgreSQL board {schema!r}, {op}: its tables are gone (was the schema dropped?)"
            f"{state}: {exc}"
        )
    return StorageError(f"PostgreSQL board {schema!r}, {op}{state}: {exc}")


async def connect(dsn: str, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    """One autocommit connection, or a :class:`StorageError` saying why not."""
    try:
        return await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT, **kwargs
        )
    except psycopg.Error as exc:
        raise connect_error(dsn, exc) from exc


async def migrate(conn: psycopg.AsyncConnection[Any], schema: str) -> int:
    """Bring ``schema`` to :data:`SCHEMA_VERSION`; return the version it had.

    One transaction under an advisory lock keyed on the schema name, so concurrent openers
    migrate once. A schema newer than this code is refused.
    """
    quoted = f'"{schema}"'
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"videoflow-migrate:{schema}",),
        )
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {quoted}.schema_version (version integer NOT NULL)"
        )
        cur = await conn.execute(f"SELECT version FROM {quoted}.schema_version")
        rows = await cur.fetchall()
        if len(rows) > 1:
            raise StorageError(
                f"schema {schema!r}: schema_version holds {len(rows)} rows instead of one"
            )
        version = int(rows[0][0]) if rows else 0
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"schema {schema!r} is at version {version}, newer than this code knows "
                f"({SCHEMA_VERSION}): upgrade videoflow-engine to use it"
            )
        for migration in MIGRATIONS[version:]:
            for statement in migration:
                await conn.execute(statement.replace("{s}", quoted))
        if not rows:
            await conn.execute(
                f"INSERT INTO {quoted}.schema_version (version) VALUES (%s)", (SCHEMA_VERSION,)
            )
        elif version != SCHEMA_VERSION:
            await conn.execute(
                f"UPDATE {quoted}.schema_version SET version = %s", (SCHEMA_VERSION,)
            )
    return version

"""The store's connections: opening a file as a store (check it is one, or empty, set the
pragmas, migrate), and making the reader and the writer connections.

See :mod:`adapters.sqlite.schema` for the header fields that mark a store and its migrations.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import aiosqlite
import anyio

from adapters.sqlite.schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION
from adapters.sqlite.transaction import rollback
from engine.errors import StorageError


def check_path(path: Path) -> None:
    """Fail, naming why, when ``path`` cannot be a store: a directory, no parent, read-only."""
    if path.is_dir():
        raise StorageError(f"cannot open SQLite store {path}: it is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise StorageError(f"cannot open SQLite store {path}: directory {parent} does not exist")
    if path.exists() and not os.access(path, os.W_OK):
        raise StorageError(f"cannot open SQLite store {path}: the file is read-only")


async def connect_reader(path: Path, busy_timeout: float) -> aiosqlite.Connection:
    """The reader: through ``aiosqlite``, in autocommit mode, refusing writes."""
    conn = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout)
    try:
        await conn.execute("PRAGMA query_only = ON")
    except BaseException:
        with anyio.CancelScope(shield=True), contextlib.suppress(sqlite3.Error):
            await conn.close()
        raise
    return conn


def open_writer(path: Path, busy_timeout: float, synchronous: str) -> sqlite3.Connection:
    """The writer, prepared (see :func:`prepare`); blocking, for a worker thread.

    A plain ``sqlite3`` connection in autocommit mode (the writer begins its own
    transactions), usable from any thread: the group-commit writer's thread
    (:class:`~adapters.sqlite.writer.GroupWriter`) owns it once opened.
    """
    conn = sqlite3.connect(
        path, isolation_level=None, timeout=busy_timeout, check_same_thread=False
    )
    try:
        prepare(conn, path, synchronous)
    except BaseException:
        conn.close()
        raise
    return conn


def prepare(conn: sqlite3.Connection, path: Path, synchronous: str) -> None:
    """Check the file is ours (or empty), set the pragmas, create or migrate the schema."""
    _check_header(path, *_header(conn))  # before changing anything in the file
    found = list(conn.execute("PRAGMA journal_mode = WAL"))
    mode = str(found[0][0]).lower() if found else "unknown"
    if mode != "wal":
        raise StorageError(
            f"cannot open SQLite store {path}: it cannot use WAL journal mode "
            f"(SQLite kept {mode!r}); is it on a network file system?"
        )
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Again, under the write lock: another process may have migrated it meanwhile.
        _, version, _ = header = _header(conn)
        _check_header(path, *header)
        for migration in MIGRATIONS[version:]:
            for statement in migration:
                conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        # Written even when unchanged: it proves, now, that the file can be written.
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise


def _header(conn: sqlite3.Connection) -> tuple[int, int, int]:
    (application_id,) = conn.execute("PRAGMA application_id").fetchone()
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    (objects,) = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return int(application_id), int(version), int(objects)


def _check_header(path: Path, application_id: int, version: int, objects: int) -> None:
    if application_id == APPLICATION_ID:
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"cannot open SQLite store {path}: it was written by a newer version "
                f"of this library (schema version {version}; this version knows up to "
                f"{SCHEMA_VERSION}); upgrade the library to use it"
            )
        return
    if application_id == 0 and version == 0 and objects == 0:
        return  # a new or empty file: it becomes a store
    raise StorageError(
        f"cannot open SQLite store {path}: it is an SQLite database of another "
        f"application (application_id {application_id}, user_version {version}, "
        f"{objects} schema objects), not a store of this library; it was left untouched"
    )

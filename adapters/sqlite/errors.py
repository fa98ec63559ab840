"""``sqlite3`` errors -> :class:`~engine.errors.StorageError`s that name the file and the cause.

Also the adapter's own two exceptions, raised inside a write transaction and translated by the
writer: :class:`WholeGroup` (the store failed, not one call) and :class:`UnknownTargets` (an
``apply`` names rows that are not stored).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from attrs import frozen

from engine.errors import StorageError

_HINTS = {
    "SQLITE_CANTOPEN": "cannot open the file (missing directory, a directory, or no permission)",
    "SQLITE_NOTADB": "not an SQLite database (corrupt, encrypted or another kind of file)",
    "SQLITE_CORRUPT": "the database file is corrupt",
    "SQLITE_READONLY": "the file is read-only",
    "SQLITE_PERM": "permission denied",
    "SQLITE_AUTH": "permission denied",
    "SQLITE_FULL": "the disk is full",
    "SQLITE_IOERR": "disk I/O error",
    "SQLITE_CONSTRAINT": "a constraint was violated",
}


class WholeGroup(Exception):
    """``BEGIN`` or ``COMMIT`` failed: the cause is the store's, not one call's."""

    def __init__(self, cause: sqlite3.Error) -> None:
        super().__init__(str(cause))
        self.cause = cause


class UnknownTargets(Exception):
    """An ``apply`` names an execution, job or webhook event that is not stored, or adds an
    event whose id is taken."""


@frozen
class Translator:
    """Turns errors met on the store at ``path`` into :class:`StorageError`s."""

    path: Path
    busy_timeout: float

    def failure(self, exc: Exception) -> Exception:
        """What one write call fails with, for an exception its transaction raised."""
        if isinstance(exc, sqlite3.Error):
            return self.error("cannot write to", exc)
        if isinstance(exc, UnknownTargets):
            error = StorageError(f"cannot apply changes to SQLite store {self.path}: {exc}")
            error.__cause__ = exc
            return error
        return exc

    def error(self, doing: str, exc: sqlite3.Error) -> StorageError:
        """``<doing> SQLite store <path>: <hint> (<sqlite3 message>)``; ``doing``: "cannot read"."""
        name = getattr(exc, "sqlite_errorname", "")
        hint = _HINTS.get(name) or _HINTS.get(f"SQLITE_{_family(name)}")
        if name.startswith("SQLITE_BUSY") or name.startswith("SQLITE_LOCKED"):
            hint = (
                "the file stayed locked by another connection for longer than busy_timeout "
                f"({self.busy_timeout:g} s)"
            )
        cause = f"{hint} ({exc})" if hint else str(exc)
        error = StorageError(f"{doing} SQLite store {self.path}: {cause}")
        error.__cause__ = exc
        return error


def _family(name: str) -> str:
    """``SQLITE_IOERR_FSYNC`` -> ``IOERR``: extended result codes share their primary's hint."""
    parts = name.split("_")
    return parts[1] if len(parts) > 1 else ""

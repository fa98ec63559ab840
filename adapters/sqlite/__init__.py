"""The durable store: executions and jobs in one SQLite file, shared by several processes."""

from adapters.sqlite.storage import SqliteStorage, WriterStats

__all__ = ["SqliteStorage", "WriterStats"]

"""The factories' defaults: the one engine module that imports adapters.

``Engine.in_memory``, ``Engine.sqlite`` and ``Pipeline.execute(api_url=...)`` need concrete
adapters when the caller names none. They get them here, imported when first called, so that
importing :mod:`engine` never imports an adapter and the rest of the engine depends only on its
ports (:mod:`engine.ports`). The import-layer contract in ``pyproject.toml`` allows this module,
and only it, to import :mod:`adapters`.
"""

from __future__ import annotations

from typing import Any

from engine.errors import ConfigError
from engine.handle import RemoteEngine
from engine.ports import JobBoard, JobQueue, Notifier, Storage, VideoProvider


def fake_provider() -> VideoProvider:
    """The default provider of ``Engine.in_memory``/``Engine.sqlite``: results are not real."""
    from adapters.memory import FakeVideoProvider

    return FakeVideoProvider()


def http_notifier() -> Notifier:
    """The default notifier: signed webhooks over HTTP (``adapters.http.HttpNotifier``)."""
    from adapters.http import HttpNotifier

    return HttpNotifier()


def memory_queue() -> JobQueue:
    from adapters.memory import MemoryQueue

    return MemoryQueue()


def memory_storage(*, keep_journal: bool = False) -> Storage:
    from adapters.memory import MemoryStorage

    return MemoryStorage(keep_journal=keep_journal)


def sqlite_storage(path: str, **options: Any) -> Storage:
    from adapters.sqlite import SqliteStorage

    return SqliteStorage(path, **options)


def postgres_board(dsn: str, *, schema: str, **options: Any) -> JobBoard:
    """``adapters.postgres.PostgresBoard`` (extra ``postgres``: psycopg 3 and its pool)."""
    try:
        from adapters.postgres import PostgresBoard
    except ImportError as exc:  # psycopg missing
        raise ConfigError(
            "Engine.postgres needs psycopg 3 and psycopg_pool: "
            "pip install 'videoflow-engine[postgres]'"
        ) from exc
    return PostgresBoard(dsn, schema=schema, **options)


def remote_engine(api_url: str, api_key: str) -> RemoteEngine:
    """``adapters.http.EngineClient``: the target of ``execute(api_url=..., api_key=...)``."""
    from adapters.http import EngineClient

    return EngineClient(api_url, api_key)

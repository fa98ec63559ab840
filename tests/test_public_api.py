"""The fixed public surface of CONTRACT.md stays exported, and the core imports no adapter."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

import engine

CONTRACT_NAMES = {
    "compose",
    "generate_video",
    "merge",
    "lip_sync",
    "add_subtitles",
    "reframe",
    "Engine",
    "verify_webhook",
    "EngineError",
    "PlanError",
    "UnknownExecution",
    "ExecutionFailed",
    "InvalidSignature",
    "ProviderError",
    "IdempotencyConflict",
    "RetryPolicy",
    "Video",
    "JobRequest",
    "Progress",
    "StatusReport",
    "ExecutionPlan",
}

ADAPTER_NAMES = {
    "adapters.memory": {"FakeVideoProvider", "RecordingNotifier", "MemoryStorage", "MemoryQueue"},
    "adapters.sqlite": {"SqliteStorage"},
    "adapters.http": {"HttpNotifier", "EngineClient", "HttpVideoProvider"},
    "adapters.ffmpeg": {"FFmpegVideoProvider"},
    "contrib.asgi": {"create_app"},
}


def test_contract_names_are_exported() -> None:
    assert set(engine.__all__) >= CONTRACT_NAMES


def test_every_exported_name_resolves_and_all_is_sorted() -> None:
    for name in engine.__all__:
        assert hasattr(engine, name), name
    assert engine.__all__ == sorted(engine.__all__, key=lambda n: (n[0].islower(), n))


def test_every_public_error_derives_from_engine_error() -> None:
    errors = [
        value
        for value in vars(engine).values()
        if inspect.isclass(value) and issubclass(value, Exception)
    ]
    assert errors
    assert all(issubclass(error, engine.EngineError) for error in errors)


@pytest.mark.parametrize("module", sorted(ADAPTER_NAMES))
def test_adapter_names(module: str) -> None:
    loaded = importlib.import_module(module)
    for name in ADAPTER_NAMES[module]:
        assert hasattr(loaded, name), f"{module}.{name}"


def test_the_core_imports_no_adapter() -> None:
    code = (
        "import sys, engine; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('adapters', 'contrib')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

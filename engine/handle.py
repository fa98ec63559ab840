"""``PipelineExecution``: the handle ``Pipeline.execute`` returns."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, Self

import anyio

from engine.errors import EngineError, ExecutionFailed
from engine.models import (
    TERMINAL,
    ErrorInfo,
    ExecutionStatus,
    Progress,
    StatusReport,
    Video,
    Webhook,
)

if TYPE_CHECKING:
    from engine.dsl import Pipeline
    from engine.scheduler import Ended

ProgressCallback = Callable[[Progress], Any]
CompleteCallback = Callable[[Video], Any]
ErrorCallback = Callable[[ExecutionFailed], Any]


class ExecutionBackend(Protocol):
    """What a handle needs from whatever runs the execution (an Engine or a remote client)."""

    def call_soon(self, callback: Callable[[Any], Any], argument: Any) -> None: ...

    async def status(self, execution_id: str) -> StatusReport: ...


class PipelineExecution:
    """One submitted execution. Callbacks fire exactly once per event, plain or async; one
    registered after the execution ended fires at once. ``wait()`` returns the final video or
    raises :class:`~engine.ExecutionFailed`."""

    def __init__(self, execution_id: str, backend: ExecutionBackend) -> None:
        self.id = execution_id
        self._backend = backend
        self._status: ExecutionStatus = "pending"
        self._video: Video | None = None
        self._failure: ExecutionFailed | None = None
        self._done = anyio.Event()
        self._on_complete: list[CompleteCallback] = []
        self._on_error: list[ErrorCallback] = []
        self._on_progress: list[ProgressCallback] = []
        self.last_progress: Progress | None = None

    def __repr__(self) -> str:
        return f"PipelineExecution(id={self.id!r}, status={self._status!r})"

    @property
    def status(self) -> ExecutionStatus:
        """The last status this handle has seen (``refresh()`` asks again)."""
        return self._status

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def on_complete(self, callback: CompleteCallback) -> Self:
        if self._done.is_set():
            if self._video is not None:
                self._backend.call_soon(callback, self._video)
        else:
            self._on_complete.append(callback)
        return self

    def on_error(self, callback: ErrorCallback) -> Self:
        if self._done.is_set():
            if self._failure is not None:
                self._backend.call_soon(callback, self._failure)
        else:
            self._on_error.append(callback)
        return self

    def on_progress(self, callback: ProgressCallback) -> Self:
        self._on_progress.append(callback)
        return self

    @property
    def has_callbacks(self) -> bool:
        return bool(self._on_complete or self._on_error or self._on_progress)

    async def wait(self, timeout: float | None = None) -> Video:  # noqa: ASYNC109
        """The final video. Raises ExecutionFailed, or TimeoutError after ``timeout`` seconds."""
        with anyio.fail_after(timeout):
            await self._done.wait()
        if self._failure is not None:
            raise self._failure
        assert self._video is not None
        return self._video

    async def refresh(self) -> StatusReport:
        """Ask for the current status; an ending seen this way fires the callbacks too."""
        report = await self._backend.status(self.id)
        if report.status in TERMINAL:
            self.finish(report.status, report.result, report.error)
        else:
            self._status = report.status
        return report

    # --- fed by the backend -----------------------------------------------------------------------

    def progress(self, progress: Progress) -> None:
        if self._done.is_set():
            return
        self._status = progress.status
        self.last_progress = progress
        for callback in self._on_progress:
            self._backend.call_soon(callback, progress)

    def ended(self, ended: Ended) -> None:
        self.finish(ended.status, ended.result, ended.error)

    def finish(
        self, status: ExecutionStatus, result: Video | None, error: ErrorInfo | None
    ) -> None:
        if self._done.is_set():
            return
        self._status = status
        if status == "completed" and result is not None:
            self._video = result
            for complete in self._on_complete:
                self._backend.call_soon(complete, result)
        else:
            info = error or ErrorInfo(status, f"execution {status}")
            self._failure = ExecutionFailed(self.id, status, info.code, info.message, info.job_id)
            for failed in self._on_error:
                self._backend.call_soon(failed, self._failure)
        self._on_complete.clear()
        self._on_error.clear()
        self._done.set()


async def execute_pipeline(
    pipeline: Pipeline,
    target: Any = None,
    *,
    base_execution_id: str | None = None,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    api_url: str | None = None,
    api_key: str | None = None,
    idempotency_key: str | None = None,
) -> PipelineExecution:
    """Submit ``pipeline`` to ``target`` (an Engine) and return its handle."""
    from engine.engine import Engine

    if webhook_secret is not None and webhook_url is None:
        raise EngineError("webhook_secret was given without webhook_url")
    if target is None:
        if api_url is None:
            raise EngineError("execute() needs a target: an Engine, or api_url= and api_key=")
        raise EngineError("the remote client (api_url=) is not available in this version")
    if not isinstance(target, Engine):
        raise TypeError(f"execute() target must be an Engine, not {type(target).__name__}")
    plan = pipeline.plan(base_execution_id=base_execution_id)
    webhook = Webhook(webhook_url, webhook_secret) if webhook_url is not None else None
    execution_id = await target.submit(
        plan,
        base_execution_id=base_execution_id,
        webhook=webhook,
        idempotency_key=idempotency_key,
    )
    handle = PipelineExecution(execution_id, target)
    for callback in pipeline.progress_callbacks:
        handle.on_progress(callback)
    snapshot = await target.subscribe(execution_id, handle)
    if snapshot.status in TERMINAL:
        handle.finish(snapshot.status, snapshot.result, snapshot.error)
    return handle

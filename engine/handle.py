"""``PipelineExecution``: the handle ``Pipeline.execute`` returns."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol, Self, runtime_checkable

import anyio

from engine.errors import EngineError, ExecutionFailed
from engine.models import (
    TERMINAL,
    Ended,
    ErrorInfo,
    ExecutionStatus,
    Progress,
    StatusReport,
    Video,
    Webhook,
)

ProgressCallback = Callable[[Progress], Any]
CompleteCallback = Callable[[Video], Any]
ErrorCallback = Callable[[ExecutionFailed], Any]

log = logging.getLogger("engine.handle")


class ExecutionBackend(Protocol):
    """What a handle needs from whatever runs the execution (an Engine or a remote client)."""

    def call_soon(self, callback: Callable[[Any], Any], argument: Any) -> None: ...

    async def status(self, execution_id: str) -> StatusReport: ...


class Poller(Protocol):
    """What a handle of a remote execution polls through (``adapters.http.EngineClient``)."""

    def spawn(self, poll: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Run ``poll`` in the background; ``False`` when there is nowhere to run it."""
        ...

    async def poll(self, handle: PipelineExecution) -> None:
        """Poll until ``handle`` is done, feeding it progress and its ending."""
        ...

    async def poll_once(self, handle: PipelineExecution) -> StatusReport:
        """Fetch the status once and feed it to ``handle``."""
        ...

    async def settle(self) -> None:
        """Await callbacks the poller could not run in the background."""
        ...


@runtime_checkable
class RemoteEngine(Protocol):
    """A remote ``execute`` target: submits over the network and lets handles poll."""

    async def submit(
        self,
        plan: Any,
        *,
        base_execution_id: str | None = None,
        webhook: Webhook | Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> str: ...

    async def status(self, execution_id: str) -> StatusReport: ...

    def call_soon(self, callback: Callable[[Any], Any], argument: Any) -> None: ...

    def spawn(self, poll: Callable[[], Coroutine[Any, Any, None]]) -> bool: ...

    async def poll(self, handle: PipelineExecution) -> None: ...

    async def poll_once(self, handle: PipelineExecution) -> StatusReport: ...

    async def settle(self) -> None: ...


class PipelineExecution:
    """One submitted execution. Callbacks fire exactly once per event, plain or async; one
    registered after the execution ended fires at once. ``wait()`` returns the final video or
    raises :class:`~engine.ExecutionFailed`.

    A remote execution (``poller`` given) polls the status endpoint in the background once a
    callback is registered, if its poller can run a background task; ``wait()`` and ``refresh()``
    poll too when nothing else does. With no callbacks it never polls by itself.
    """

    def __init__(
        self, execution_id: str, backend: ExecutionBackend, *, poller: Poller | None = None
    ) -> None:
        self.id = execution_id
        self._backend = backend
        self._poller = poller
        self._polling = False
        self._poll_error: EngineError | None = None
        self._changed = anyio.Event()
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
            self._poll_in_background()
        return self

    def on_error(self, callback: ErrorCallback) -> Self:
        if self._done.is_set():
            if self._failure is not None:
                self._backend.call_soon(callback, self._failure)
        else:
            self._on_error.append(callback)
            self._poll_in_background()
        return self

    def on_progress(self, callback: ProgressCallback) -> Self:
        self._on_progress.append(callback)
        self._poll_in_background()
        return self

    @property
    def has_callbacks(self) -> bool:
        return bool(self._on_complete or self._on_error or self._on_progress)

    async def wait(self, timeout: float | None = None) -> Video:  # noqa: ASYNC109
        """The final video. Raises ExecutionFailed, or TimeoutError after ``timeout`` seconds.

        For a remote execution it polls, unless a background poll already does; an error that
        stopped the polling (such as ``UnknownExecution``) is raised here.
        """
        with anyio.fail_after(timeout):
            if self._poller is None:
                await self._done.wait()
            else:
                await self._wait_polling(self._poller)
        if self._failure is not None:
            raise self._failure
        assert self._video is not None
        return self._video

    async def refresh(self) -> StatusReport:
        """Ask for the current status; an ending seen this way fires the callbacks too."""
        if self._poller is not None:
            return await self._poller.poll_once(self)
        report = await self._backend.status(self.id)
        if report.status in TERMINAL:
            self.finish(report.status, report.result, report.error)
        else:
            self._status = report.status
        return report

    # --- fed by the backend -----------------------------------------------------------------------

    def progress(self, progress: Progress) -> None:
        """Tell the progress callbacks of a change: a progress equal to the last one told is
        not told again (several jobs starting at once, a status poll that saw no change)."""
        if self._done.is_set() or progress == self.last_progress:
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
        self._changed.set()

    # --- remote executions: polling ---------------------------------------------------------------

    def _poll_in_background(self) -> None:
        poller = self._poller
        if poller is None or self._polling or self._done.is_set() or self._poll_error is not None:
            return
        self._polling = poller.spawn(self._background_poll)

    async def _background_poll(self) -> None:
        assert self._poller is not None
        self._polling = True
        try:
            await self._poller.poll(self)
        except EngineError as exc:
            log.warning("polling execution %s stopped: %s", self.id, exc)
            self._poll_error = exc
        except Exception as exc:
            log.exception("polling execution %s failed", self.id)
            self._poll_error = EngineError(f"polling execution {self.id} failed: {exc!r}")
        finally:
            self._stopped_polling()

    def _stopped_polling(self) -> None:
        self._polling = False
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait_polling(self, poller: Poller) -> None:
        while not self._done.is_set():
            if self._poll_error is not None:
                error, self._poll_error = self._poll_error, None
                raise error
            if self._polling:
                await self._changed.wait()
                continue
            self._polling = True
            try:
                await poller.poll(self)
            finally:
                self._stopped_polling()
        await poller.settle()

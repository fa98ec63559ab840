"""``EngineClient``: the HTTP API (``contrib.asgi``) as a remote ``execute`` target.

``async with EngineClient(url, key) as client:`` owns an ``httpx.AsyncClient`` and a task group in
which handles poll the status endpoint in the background; leaving the block waits for those polls
(each ends when its execution does). Without ``async with`` every call opens and closes its own
connection, and a handle polls only while ``wait()`` or ``refresh()`` runs.

The server's answers become the engine's errors, here at the boundary: 422 with ``errors`` is
:class:`~engine.PlanError` (the server's problems), 404 :class:`~engine.UnknownExecution`, 401
:class:`Unauthorized`, 409 :class:`~engine.IdempotencyConflict` or
:class:`~engine.InvalidState`; 429 (and 409 while an idempotent request is being created) is
retried after ``Retry-After``, a bounded number of times; 5xx and transport failures are
:class:`TransportError`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import anyio
import anyio.abc
import httpx

from adapters.net import exponential, parse_retry_after
from engine.errors import (
    EngineError,
    IdempotencyConflict,
    InvalidState,
    PlanError,
    Problem,
    UnknownExecution,
)
from engine.handle import PipelineExecution
from engine.models import TERMINAL, Progress, StatusReport, Webhook
from engine.plan import ExecutionPlan

__all__ = ["EngineClient", "TransportError", "Unauthorized"]

log = logging.getLogger(__name__)

_PROBLEM = "urn:videoflow:problem:"


class TransportError(EngineError):
    """The server could not be reached, timed out, or failed (5xx): worth trying again later."""


class Unauthorized(EngineError):
    """The server refused the API key (401): missing, unknown or revoked."""


class EngineClient:
    """A remote engine behind the HTTP API; pass it as ``pipeline.execute(client)``.

    ``poll_interval`` is the first wait between status polls; it doubles while nothing changes, up
    to ``max_poll_interval``, and starts over when the execution moves. ``max_retries`` bounds
    the retries of a 429 (each after ``Retry-After``, seconds or an HTTP date, or without one after
    a backoff from 0.5 s doubling; both capped at ``max_retry_after`` seconds).
    """

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        client: httpx.AsyncClient | None = None,
        poll_interval: float = 0.5,
        max_poll_interval: float = 5.0,
        timeout: float = 30.0,
        max_retries: int = 5,
        max_retry_after: float = 30.0,
        max_poll_failures: int = 10,
    ) -> None:
        if not (poll_interval > 0 and max_poll_interval >= poll_interval):
            raise ValueError("need 0 < poll_interval <= max_poll_interval")
        if not max_retry_after >= 0:
            raise ValueError("max_retry_after must be >= 0 seconds")
        self.api_url = api_url.rstrip("/")
        self._auth = {"authorization": f"Bearer {api_key}"}
        self._given = client
        self._http: httpx.AsyncClient | None = client
        self._owns_http = False
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_after = max_retry_after
        self.max_poll_failures = max_poll_failures
        self._task_group: anyio.abc.TaskGroup | None = None
        self._entered = False
        self._pending: list[tuple[Awaitable[Any], object]] = []

    def __repr__(self) -> str:
        return f"EngineClient({self.api_url!r})"

    # --- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("an EngineClient can be entered only once")
        self._entered = True
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout)
            self._owns_http = True
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        task_group = self._task_group
        try:
            if task_group is not None:
                return await task_group.__aexit__(exc_type, exc, tb)
            return None
        finally:
            self._task_group = None
            if self._owns_http and self._http is not None:
                with anyio.CancelScope(shield=True):
                    await self._http.aclose()
                self._http = None
                self._owns_http = False

    # --- the API ----------------------------------------------------------------------------------

    async def submit(
        self,
        plan: ExecutionPlan | Mapping[str, Any],
        *,
        base_execution_id: str | None = None,
        webhook: Webhook | Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """``POST /api/execute``; returns the new (or, for a repeated idempotent request, the
        existing) execution's id."""
        body = dict(plan.to_json() if isinstance(plan, ExecutionPlan) else plan)
        if base_execution_id is not None:
            body.setdefault("baseExecutionId", base_execution_id)
        if webhook is not None:
            if isinstance(webhook, Webhook):
                hook: dict[str, Any] = {"url": webhook.url}
                if webhook.secret is not None:
                    hook["secret"] = webhook.secret
            else:
                hook = dict(webhook)
            body["webhook"] = hook
        headers = {"content-type": "application/json"}
        if idempotency_key is not None:
            headers["idempotency-key"] = idempotency_key
        content = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        try:
            answer = await self._request(
                "POST",
                "/api/execute",
                content=content,
                headers=headers,
                missing=body.get("baseExecutionId"),
            )
        except UnknownExecution as exc:  # the only execution a submit names is its base
            raise UnknownExecution(exc.execution_id, field="base_execution_id") from None
        execution_id = answer.get("executionId") if isinstance(answer, dict) else None
        if not isinstance(execution_id, str):
            raise EngineError("the server's answer to POST /api/execute has no executionId")
        return execution_id

    async def status(self, execution_id: str) -> StatusReport:
        """``GET /api/execute/{id}/status``, as a :class:`~engine.StatusReport`."""
        answer = await self._request("GET", _path(execution_id, "/status"), missing=execution_id)
        try:
            return StatusReport.from_json(answer)
        except Exception as exc:
            raise EngineError(f"the server's status body is not understood: {exc!r}") from exc

    async def get(self, execution_id: str) -> dict[str, Any]:
        """``GET /api/execute/{id}``: the execution as JSON (jobs, attempts, timings)."""
        answer = await self._request("GET", _path(execution_id), missing=execution_id)
        if not isinstance(answer, dict):
            raise EngineError("the server's execution body is not an object")
        return answer

    async def cancel(self, execution_id: str) -> None:
        """``POST /api/execute/{id}/cancel``."""
        await self._request("POST", _path(execution_id, "/cancel"), missing=execution_id)

    async def resume(self, execution_id: str) -> None:
        """``POST /api/execute/{id}/resume``; :class:`~engine.InvalidState` unless it failed or
        was cancelled."""
        await self._request("POST", _path(execution_id, "/resume"), missing=execution_id)

    # --- what a PipelineExecution needs -----------------------------------------------------------

    def call_soon(self, callback: Callable[[Any], Any], argument: Any) -> None:
        """Run a user's callback (plain or async); its exceptions are logged, never raised.

        An async one runs in this client's task group; without ``async with`` it is awaited by
        the next ``wait()`` or ``refresh()`` of a handle of this client.
        """
        try:
            outcome = callback(argument)
        except Exception:
            log.exception("callback %r raised", callback)
            return
        if isinstance(outcome, Awaitable):
            if self._task_group is not None:
                self._task_group.start_soon(_await_logged, outcome, callback)
            else:
                self._pending.append((outcome, callback))

    def spawn(self, poll: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Run ``poll`` in this client's task group; ``False`` without ``async with``."""
        if self._task_group is None:
            return False
        self._task_group.start_soon(poll)
        return True

    async def settle(self) -> None:
        """Await the async callbacks queued while this client has no task group."""
        while self._pending:
            outcome, callback = self._pending.pop(0)
            await _await_logged(outcome, callback)

    async def poll_once(self, handle: PipelineExecution) -> StatusReport:
        """Fetch the status once and feed it to ``handle`` (progress, then the ending)."""
        report = await self.status(handle.id)
        progress = Progress(
            handle.id,
            report.completed_jobs,
            report.total_jobs,
            report.current_job,
            report.progress,
            report.status,
        )
        handle.progress(progress)  # told only if it changed since the last one told
        if report.status in TERMINAL:
            handle.finish(report.status, report.result, report.error)
        await self.settle()
        return report

    async def poll(self, handle: PipelineExecution) -> None:
        """Poll until ``handle`` is done, backing off while nothing changes. Transport failures
        are retried (``max_poll_failures`` in a row at most); other errors are raised."""
        interval = self.poll_interval
        failures = 0
        last = handle.last_progress
        while True:
            if handle.done:
                return
            try:
                await self.poll_once(handle)
            except TransportError as exc:
                failures += 1
                if failures >= self.max_poll_failures:
                    raise
                log.warning("polling %s failed (%s); trying again", handle.id, exc)
                interval = min(self.max_poll_interval, interval * 2)
                await anyio.sleep(interval)
                continue
            failures = 0
            if handle.last_progress != last:
                last = handle.last_progress
                interval = self.poll_interval
            else:
                interval = min(self.max_poll_interval, interval * 2)
            await anyio.sleep(interval)

    # --- HTTP -------------------------------------------------------------------------------------

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._http is not None:
            yield self._http
            return
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            yield client

    async def _request(
        self,
        method: str,
        path: str,
        *,
        missing: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one request (retrying 429s), return its JSON, or raise the engine's error."""
        url = self.api_url + path
        all_headers = {**self._auth, **(headers or {})}
        async with self._client() as client:
            for attempt in range(self.max_retries + 1):
                try:
                    response = await client.request(
                        method, url, content=content, headers=all_headers
                    )
                except httpx.HTTPError as exc:
                    raise TransportError(f"{method} {url} failed: {exc!r}") from exc
                problem = _problem(response)
                retryable = response.status_code == 429 or (
                    response.status_code == 409
                    and problem.get("type") == _PROBLEM + "idempotency-in-progress"
                )
                if retryable and attempt < self.max_retries:
                    await anyio.sleep(self._retry_after(response, attempt))
                    continue
                if response.is_success:
                    try:
                        return response.json()
                    except ValueError as exc:
                        raise EngineError(f"{method} {path}: the answer is not JSON") from exc
                raise _error(method, path, response, problem, missing)
        raise AssertionError("unreachable")  # pragma: no cover

    def _retry_after(self, response: httpx.Response, attempt: int) -> float:
        """``Retry-After`` if the answer has a usable one, else backoff from 0.5 s; both capped."""
        seconds = parse_retry_after(
            response.headers.get("retry-after"), now=time.time(), cap=self.max_retry_after
        )
        if seconds is None:
            seconds = exponential(attempt, base=0.5, cap=self.max_retry_after)
        return seconds


def _path(execution_id: str, suffix: str = "") -> str:
    return "/api/execute/" + quote(execution_id, safe="") + suffix


def _problem(response: httpx.Response) -> dict[str, Any]:
    if response.is_success:
        return {}
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error(
    method: str, path: str, response: httpx.Response, problem: dict[str, Any], missing: Any
) -> EngineError:
    status = response.status_code
    kind = str(problem.get("type", "")).removeprefix(_PROBLEM)
    detail = problem.get("detail") or response.reason_phrase or "no detail"
    where = f"{method} {path} answered {status}: {detail}"
    if status == 422 and kind == "idempotency-conflict":
        return IdempotencyConflict(str(detail))
    if status == 422 and isinstance(problem.get("errors"), list):
        return PlanError(_problems(problem["errors"]) or [Problem(None, "plan", str(detail))])
    if status == 404 and kind == "not-found":
        return UnknownExecution(str(missing) if missing is not None else path)
    if status == 401:
        return Unauthorized(f"unauthorized: the server refused the API key ({detail})")
    if status == 409 and kind == "invalid-state":
        return InvalidState(str(detail))
    if status == 409 and kind == "idempotency-in-progress":
        return IdempotencyConflict(str(detail))
    if status >= 500:
        return TransportError(where)
    return EngineError(where)


def _problems(items: list[Any]) -> list[Problem]:
    problems = []
    for item in items:
        if isinstance(item, dict):
            job_id = item.get("jobId")
            problems.append(
                Problem(
                    job_id if isinstance(job_id, str) else None,
                    str(item.get("field", "plan")),
                    str(item.get("message", "")),
                )
            )
    return problems


async def _await_logged(awaitable: Awaitable[Any], callback: object) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("callback %r raised", callback)

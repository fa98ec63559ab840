"""The JSON an execution is shown as: ``GET /api/execute/{id}``.

Built as view values (:class:`ExecutionView` and its parts) and written by the engine's one
wire converter (:mod:`engine.wire`). Times are ISO 8601 UTC strings. The webhook is shown as
``{"url", "deliveries"}``: its URL without any ``user:password@``, and its delivery log.
Its secret never leaves the engine.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from attrs import field, frozen

from engine import wire
from engine.models import DeliveryAttempt, ErrorInfo, Execution, JobInfo, Video
from engine.wire import OMIT_IF_DEFAULT

#: ``scheme://`` and the userinfo of the authority (up to its last ``@``, before any ``/?#``).
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)[^/?#]*@")
#: The same, for URLs anywhere in a text.
_USERINFO_IN_TEXT = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s]*@")


def timestamp(seconds: float | None) -> str | None:
    """Unix seconds as ``2024-05-01T12:00:00.250Z`` (milliseconds), or ``None``."""
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def without_userinfo(url: str) -> str:
    """``url`` with any ``user:password@`` (masked or not) removed from its authority."""
    return _USERINFO.sub(r"\1", url, count=1)


def _redact(text: str | None) -> str | None:
    """``text`` with the userinfo of every URL in it removed (by the URL's structure).

    Never a substring replacement of a secret: that garbles every other occurrence of its
    characters (a secret ``"s"`` masked every ``s``) and hints at what the secret is. A secret is
    kept out of error texts where they are made: the notifier never writes one into them."""
    if text is None:
        return None
    return _USERINFO_IN_TEXT.sub(r"\1", text)


@frozen
class JobView:
    id: str
    type: str
    params: Mapping[str, Any]
    depends_on: tuple[str, ...]
    status: str
    attempts: int
    started_at: str | None
    finished_at: str | None
    result: Video | None
    error: ErrorInfo | None


@frozen
class DeliveryView:
    event_id: str
    attempt: int
    at: str | None
    status_code: int | None
    error: str | None
    latency: float
    outcome: str
    retry_at: str | None
    url: str


@frozen
class WebhookView:
    url: str
    deliveries: tuple[DeliveryView, ...] | None = field(
        default=None, metadata={OMIT_IF_DEFAULT: True}
    )


@frozen
class ExecutionView:
    id: str
    status: str
    base_execution_id: str | None
    created_at: str | None
    started_at: str | None
    completed_at: str | None
    progress: float
    total_jobs: int
    completed_jobs: int
    current_job: str | None
    result: Video | None
    error: ErrorInfo | None
    webhook: WebhookView | None
    jobs: tuple[JobView, ...]


def job_view(job: JobInfo) -> JobView:
    return JobView(
        id=job.id,
        type=job.type,
        params=job.params,
        depends_on=job.depends_on,
        status=job.status,
        attempts=job.attempts,
        started_at=timestamp(job.started_at),
        finished_at=timestamp(job.finished_at),
        result=job.result,
        error=job.error,
    )


def job_to_json(job: JobInfo) -> dict[str, Any]:
    return wire.to_json(job_view(job))  # type: ignore[no-any-return]


def delivery_view(attempt: DeliveryAttempt) -> DeliveryView:
    """One attempt of the delivery log. ``at`` and ``retryAt`` are times, ``latency`` seconds.

    The URL, and any URL in ``error``, loses its userinfo (the notifier records none; this is a
    second guard, not the first).
    """
    return DeliveryView(
        event_id=attempt.event_id,
        attempt=attempt.attempt,
        at=timestamp(attempt.at),
        status_code=attempt.status_code,
        error=_redact(attempt.error),
        latency=attempt.latency,
        outcome=attempt.outcome,
        retry_at=timestamp(attempt.retry_at),
        url=without_userinfo(attempt.url),
    )


def delivery_to_json(attempt: DeliveryAttempt) -> dict[str, Any]:
    return wire.to_json(delivery_view(attempt))  # type: ignore[no-any-return]


def execution_view(
    execution: Execution, *, deliveries: Sequence[DeliveryAttempt] | None = None
) -> ExecutionView:
    """The execution, its jobs with status, attempts and timings; never the webhook secret.

    ``deliveries`` is the webhook's delivery log (every attempt, oldest first), shown as
    ``webhook.deliveries``. With ``None`` the key is left out rather than shown as an empty list
    that would claim nothing was attempted.
    """
    webhook: WebhookView | None = None
    if execution.webhook is not None:
        log = None
        if deliveries is not None:
            log = tuple(delivery_view(attempt) for attempt in deliveries)
        webhook = WebhookView(without_userinfo(execution.webhook.url), log)
    return ExecutionView(
        id=execution.id,
        status=execution.status,
        base_execution_id=execution.base_execution_id,
        created_at=timestamp(execution.created_at),
        started_at=timestamp(execution.started_at),
        completed_at=timestamp(execution.completed_at),
        progress=execution.status_report().progress,
        total_jobs=len(execution.jobs),
        completed_jobs=execution.completed_jobs,
        current_job=execution.current_job,
        result=execution.result,
        error=execution.error,
        webhook=webhook,
        jobs=tuple(job_view(job) for job in execution.jobs),
    )


def execution_to_json(
    execution: Execution, *, deliveries: Sequence[DeliveryAttempt] | None = None
) -> dict[str, Any]:
    """:func:`execution_view` as JSON (``GET /api/execute/{id}``)."""
    return wire.to_json(execution_view(execution, deliveries=deliveries))  # type: ignore[no-any-return]


__all__ = [
    "delivery_to_json",
    "execution_to_json",
    "job_to_json",
    "timestamp",
    "without_userinfo",
]

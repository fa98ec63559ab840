"""The JSON an execution is shown as: ``GET /api/execute/{id}``.

Times are ISO 8601 UTC strings. The webhook is shown as ``{"url", "deliveries"}``: its URL without
any ``user:password@``, and its delivery log. Its secret never leaves the engine.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from engine import wire
from engine.models import DeliveryAttempt, ErrorInfo, Execution, JobInfo, Video, Webhook

#: ``scheme://`` and the userinfo of the authority (up to its last ``@``, before any ``/?#``).
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)[^/?#]*@")
#: The same, for URLs anywhere in a text.
_USERINFO_IN_TEXT = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s]*@")
_REDACTED = "***"


def timestamp(seconds: float | None) -> str | None:
    """Unix seconds as ``2024-05-01T12:00:00.250Z`` (milliseconds), or ``None``."""
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def without_userinfo(url: str) -> str:
    """``url`` with any ``user:password@`` (masked or not) removed from its authority."""
    return _USERINFO.sub(r"\1", url, count=1)


def _secrets_of(webhook: Webhook | None) -> list[str]:
    """What must never appear in an attempt's error: the secret, and the URL's userinfo and its
    password, as given and percent-decoded."""
    if webhook is None:
        return []
    found: list[str] = []
    if webhook.secret:
        found.append(webhook.secret)
    match = _USERINFO.match(webhook.url)
    if match is not None:
        userinfo = match[0][len(match[1]) : -1]
        for text in (userinfo, unquote(userinfo)):
            found.append(text)  # all of it: a token may stand where a user name goes
            found.append(text.partition(":")[2])
    # Longest first, so that a part never leaves the rest of a longer secret behind.
    return sorted({s for s in found if s and s != _REDACTED}, key=len, reverse=True)


def _redact(text: str | None, secrets: Sequence[str]) -> str | None:
    """``text`` without any of ``secrets`` and without the userinfo of any URL in it."""
    if text is None:
        return None
    for secret in secrets:
        text = text.replace(secret, _REDACTED)
    return _USERINFO_IN_TEXT.sub(r"\1", text)


def _video(video: Video | None) -> dict[str, Any] | None:
    return None if video is None else wire.to_json(video)


def _error(error: ErrorInfo | None) -> dict[str, Any] | None:
    return None if error is None else wire.to_json(error)


def job_to_json(job: JobInfo) -> dict[str, Any]:
    return {
        "id": job.id,
        "type": job.type,
        "params": dict(job.params),
        "dependsOn": list(job.depends_on),
        "status": job.status,
        "attempts": job.attempts,
        "startedAt": timestamp(job.started_at),
        "finishedAt": timestamp(job.finished_at),
        "result": _video(job.result),
        "error": _error(job.error),
    }


def delivery_to_json(attempt: DeliveryAttempt, *, secrets: Sequence[str] = ()) -> dict[str, Any]:
    """One attempt of the delivery log. ``at`` and ``retryAt`` are times, ``latency`` seconds.

    The URL loses any userinfo and ``error`` any of ``secrets`` (the notifier records neither;
    this is a second guard, not the first).
    """
    return {
        "eventId": attempt.event_id,
        "attempt": attempt.attempt,
        "at": timestamp(attempt.at),
        "statusCode": attempt.status_code,
        "error": _redact(attempt.error, secrets),
        "latency": attempt.latency,
        "outcome": attempt.outcome,
        "retryAt": timestamp(attempt.retry_at),
        "url": without_userinfo(attempt.url),
    }


def execution_to_json(
    execution: Execution, *, deliveries: Sequence[DeliveryAttempt] | None = None
) -> dict[str, Any]:
    """The execution, its jobs with status, attempts and timings; never the webhook secret.

    ``deliveries`` is the webhook's delivery log (every attempt, oldest first), shown as
    ``webhook.deliveries``. With ``None`` the key is left out rather than shown as an empty list
    that would claim nothing was attempted.
    """
    webhook: dict[str, Any] | None = None
    if execution.webhook is not None:
        webhook = {"url": without_userinfo(execution.webhook.url)}
        if deliveries is not None:
            secrets = _secrets_of(execution.webhook)
            webhook["deliveries"] = [
                delivery_to_json(attempt, secrets=secrets) for attempt in deliveries
            ]
    return {
        "id": execution.id,
        "status": execution.status,
        "baseExecutionId": execution.base_execution_id,
        "createdAt": timestamp(execution.created_at),
        "startedAt": timestamp(execution.started_at),
        "completedAt": timestamp(execution.completed_at),
        "progress": execution.status_report().progress,
        "totalJobs": len(execution.jobs),
        "completedJobs": execution.completed_jobs,
        "currentJob": execution.current_job,
        "result": _video(execution.result),
        "error": _error(execution.error),
        "webhook": webhook,
        "jobs": [job_to_json(job) for job in execution.jobs],
    }


__all__ = [
    "delivery_to_json",
    "execution_to_json",
    "job_to_json",
    "timestamp",
    "without_userinfo",
]

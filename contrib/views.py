"""The JSON an execution is shown as: ``GET /api/execute/{id}``.

Times are ISO 8601 UTC strings. The webhook is shown as ``{"url"}`` only: its secret never leaves
the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from engine.models import ErrorInfo, Execution, JobInfo, Video
from engine.wire import error_to_json, video_to_json


def timestamp(seconds: float | None) -> str | None:
    """Unix seconds as ``2024-05-01T12:00:00.250Z`` (milliseconds), or ``None``."""
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _video(video: Video | None) -> dict[str, Any] | None:
    return None if video is None else video_to_json(video)


def _error(error: ErrorInfo | None) -> dict[str, Any] | None:
    return None if error is None else error_to_json(error)


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


def execution_to_json(
    execution: Execution, *, deliveries: Sequence[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The execution, its jobs with status, attempts and timings; never the webhook secret.

    ``deliveries`` is the place for the webhook delivery log (each attempt: when, status code,
    outcome). The engine does not expose that log yet, so callers pass ``None`` and the key is
    left out rather than shown as an empty list that would claim nothing was attempted.
    """
    webhook: dict[str, Any] | None = None
    if execution.webhook is not None:
        webhook = {"url": execution.webhook.url}
        if deliveries is not None:
            webhook["deliveries"] = list(deliveries)
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


__all__ = ["execution_to_json", "job_to_json", "timestamp"]

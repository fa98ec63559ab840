"""``GET /metrics``: the engine's metrics in the Prometheus text format, version 0.0.4.

:func:`render` is the operator's view: the store's executions of every tenant, and this
process's attempts, queue, deliveries and HTTP responses. :func:`render_tenant` is a tenant's:
its own executions by status and its success ratio, each labelled ``tenant="..."``, and nothing
that counts other tenants' work.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

from engine.metrics import EngineMetrics

MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "videoflow_"
STATUSES = ("pending", "processing", "completed", "failed", "cancelled")
#: Outbox statuses of webhook events: waiting or retrying, delivered (a 2xx), given up, or taken
#: by a notifier that makes no HTTP attempts.
OUTBOX_STATUSES = ("pending", "delivered", "failed", "notified")


def _number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


def _family(name: str, kind: str, help_text: str) -> Iterator[str]:
    yield f"# HELP {PREFIX}{name} {help_text}"
    yield f"# TYPE {PREFIX}{name} {kind}"


def _escape(label: str) -> str:
    return label.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(metrics: EngineMetrics, responses: Mapping[int, int] | None = None) -> str:
    """The exposition text. ``responses`` counts HTTP responses by status code, if given."""
    lines: list[str] = []
    lines += _family("executions", "gauge", "Executions in the store, by status.")
    for status in sorted(set(STATUSES) | set(metrics.executions)):
        count = metrics.executions.get(status, 0)
        lines.append(f'{PREFIX}executions{{status="{_escape(status)}"}} {count}')
    lines += _family(
        "execution_duration_seconds",
        "gauge",
        "Quantiles of the duration of recently completed executions (NaN before the first).",
    )
    for quantile, value in (("0.5", metrics.duration_p50), ("0.95", metrics.duration_p95)):
        lines.append(
            f'{PREFIX}execution_duration_seconds{{quantile="{quantile}"}} {_number(value)}'
        )
    lines += _family(
        "execution_success_ratio",
        "gauge",
        "Completed executions over ended ones (NaN before the first ends).",
    )
    lines.append(f"{PREFIX}execution_success_ratio {_number(metrics.success_rate)}")
    counters = (
        ("job_attempts_total", metrics.attempts, "Job attempts started by this process."),
        ("job_retries_total", metrics.retries, "Job attempts that were retries."),
        ("jobs_completed_total", metrics.jobs_completed, "Jobs completed by this process."),
        ("jobs_failed_total", metrics.jobs_failed, "Jobs that ended failed in this process."),
    )
    for name, value, help_text in counters:
        lines += _family(name, "counter", help_text)
        lines.append(f"{PREFIX}{name} {value}")
    gauges = (
        ("queue_depth", metrics.queue_depth, "Jobs ready and waiting for a worker."),
        ("live_executions", metrics.live_executions, "Executions being run by this process."),
        ("live_jobs", metrics.live_jobs, "Unfinished jobs of live executions."),
    )
    for name, value, help_text in gauges:
        lines += _family(name, "gauge", help_text)
        lines.append(f"{PREFIX}{name} {value}")
    lines += _family(
        "webhook_deliveries",
        "gauge",
        "Webhook events in the store's outbox, by status (pending includes those retrying).",
    )
    for status in sorted(set(OUTBOX_STATUSES) | set(metrics.deliveries)):
        count = metrics.deliveries.get(status, 0)
        lines.append(f'{PREFIX}webhook_deliveries{{status="{_escape(status)}"}} {count}')
    lines += _family(
        "webhook_delivery_latency_seconds",
        "gauge",
        "Quantiles of the time from an execution's completion to its webhook's 2xx, for recent "
        "deliveries by this process (NaN before the first).",
    )
    for quantile, value in (
        ("0.5", metrics.delivery_latency_p50),
        ("0.99", metrics.delivery_latency_p99),
    ):
        lines.append(
            f'{PREFIX}webhook_delivery_latency_seconds{{quantile="{quantile}"}} {_number(value)}'
        )
    if responses is not None:
        lines += _family("http_responses_total", "counter", "HTTP responses, by status code.")
        for code in sorted(responses):
            lines.append(f'{PREFIX}http_responses_total{{code="{code}"}} {responses[code]}')
    return "\n".join(lines) + "\n"


def render_tenant(metrics: EngineMetrics, tenant: str) -> str:
    """One tenant's exposition text: ``metrics`` must be ``Engine.metrics(tenant=tenant)``."""
    label = f'tenant="{_escape(tenant)}"'
    lines: list[str] = []
    lines += _family("executions", "gauge", "This tenant's executions in the store, by status.")
    for status in sorted(set(STATUSES) | set(metrics.executions)):
        count = metrics.executions.get(status, 0)
        lines.append(f'{PREFIX}executions{{{label},status="{_escape(status)}"}} {count}')
    lines += _family(
        "execution_success_ratio",
        "gauge",
        "This tenant's completed executions over its ended ones (NaN before the first ends).",
    )
    lines.append(f"{PREFIX}execution_success_ratio{{{label}}} {_number(metrics.success_rate)}")
    return "\n".join(lines) + "\n"


__all__ = ["MEDIA_TYPE", "render", "render_tenant"]

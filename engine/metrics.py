"""What an engine reports about itself: :class:`EngineMetrics`."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from attrs import frozen

from engine import wire


@frozen
class EngineMetrics:
    """A snapshot of what the engine has done. Durations are seconds on the engine's clock."""

    executions: Mapping[str, int]
    success_rate: float | None
    duration_p50: float | None
    duration_p95: float | None
    attempts: int
    retries: int
    jobs_completed: int
    jobs_failed: int
    queue_depth: int
    live_executions: int
    live_jobs: int
    deliveries: Mapping[str, int]
    delivery_latency_p50: float | None
    delivery_latency_p99: float | None

    def to_json(self) -> dict[str, Any]:
        """The snapshot as camelCase JSON (``successRate``, ``durationP50``, ...)."""
        return wire.to_json(self)  # type: ignore[no-any-return]


def quantile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile of sorted ``values`` (``None`` when empty)."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]

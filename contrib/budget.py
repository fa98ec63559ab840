"""The bytes of live plans each tenant may hold on one server (``max_live_plan_bytes``).

A plan is held in memory while its execution is live here (the scheduler keeps its jobs and
params); once it ends, only the store holds it. :class:`LivePlans` counts, per tenant, the bytes
of the request bodies of its executions still live, and refuses a new plan that would pass the
limit with a 429 problem naming the limit and the bytes live (413 when the plan alone is over
it). Executions are forgotten when they end, checked lazily: when a submission would pass the
limit, and whenever a tenant's list has doubled since it was last checked (so the list stays
about as long as the tenant's live executions). An execution is live if this engine's scheduler
holds it; on a fleet (PostgreSQL, where the API node holds nothing once stored) the store is
asked, at most once a second per execution.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from contrib.problems import LIVE_PLANS_LIMIT, TOO_LARGE, HttpProblem
from engine.engine import Engine
from engine.errors import InvalidState, UnknownExecution
from engine.models import TERMINAL

#: 16 MiB: a live plan takes about 8 times its JSON size in memory (a 1 MB plan of 16,000
#: subtitle cues, ~8 MB), so about 130 MB per tenant at most.
DEFAULT_MAX_LIVE_PLAN_BYTES = 16 << 20
_FIRST_CHECK = 64
_RECHECK_SECONDS = 1.0


class _Tenant:
    __slots__ = ("check_at", "checked", "live", "reserved")

    def __init__(self) -> None:
        self.live: dict[str, int] = {}  # execution id -> bytes of its plan
        self.checked: dict[str, float] = {}  # execution id -> when the store said it is live
        self.reserved = 0  # bytes of plans being submitted now
        self.check_at = _FIRST_CHECK

    def total(self) -> int:
        return sum(self.live.values()) + self.reserved


class LivePlans:
    """Per-tenant bytes of live plans, under ``limit``. See the module docstring."""

    def __init__(
        self, engine: Engine, limit: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("max_live_plan_bytes must be a positive int")
        self.engine = engine
        self.limit = limit
        self._clock = clock
        self._tenants: dict[str, _Tenant] = {}

    def live_bytes(self, tenant: str) -> int:
        """The bytes counted for ``tenant`` now (executions that ended may still be counted
        until the next check)."""
        state = self._tenants.get(tenant)
        return 0 if state is None else state.total()

    async def reserve(self, tenant: str, size: int) -> None:
        """Count ``size`` bytes for a plan about to be submitted, or raise the problem."""
        if size > self.limit:
            raise HttpProblem(
                TOO_LARGE,
                f"a plan of {size:,} bytes is over the server's limit of {self.limit:,} bytes "
                "of live plans per tenant (max_live_plan_bytes)",
            )
        state = self._tenants.setdefault(tenant, _Tenant())
        if state.total() + size > self.limit or len(state.live) >= state.check_at:
            await self._forget_ended(tenant, state)
            state.check_at = max(_FIRST_CHECK, 2 * len(state.live))
        live = state.total()
        if live + size > self.limit:
            raise HttpProblem(
                LIVE_PLANS_LIMIT,
                f"this tenant's live executions hold {live:,} bytes of plans; this plan "
                f"({size:,} bytes) would pass the limit of {self.limit:,} bytes "
                "(max_live_plan_bytes); retry when some of them have ended",
                headers=[("Retry-After", "2")],
            )
        state.reserved += size

    def admitted(self, tenant: str, size: int, execution_id: str | None) -> None:
        """The reserved plan was stored as ``execution_id`` (``None``: it was refused)."""
        state = self._tenants[tenant]
        state.reserved -= size
        if execution_id is not None and self._is_live_here(execution_id, tenant) is not False:
            state.live[execution_id] = size

    def _is_live_here(self, execution_id: str, tenant: str) -> bool | None:
        """Whether the execution is live in this engine; ``None`` when only the store knows."""
        if self.engine.dispatch.live_status(execution_id, tenant) is not None:
            return True
        try:
            self.engine.scheduler  # noqa: B018 - raises on a fleet, where the store knows
        except InvalidState:
            return None
        return False

    async def _forget_ended(self, tenant: str, state: _Tenant) -> None:
        now = self._clock()
        for execution_id in list(state.live):
            live = self._is_live_here(execution_id, tenant)
            if live is None:
                if now - state.checked.get(execution_id, -math.inf) < _RECHECK_SECONDS:
                    continue
                try:
                    report = await self.engine.status(execution_id, tenant=tenant)
                except UnknownExecution:
                    live = False
                else:
                    live = report.status not in TERMINAL
                    state.checked[execution_id] = now
            if not live:
                state.live.pop(execution_id, None)
                state.checked.pop(execution_id, None)


__all__ = ["DEFAULT_MAX_LIVE_PLAN_BYTES", "LivePlans"]

"""Execution plans: the jobs of one execution, as values.

An :class:`ExecutionPlan` is what ``POST /api/execute`` carries and what
:meth:`engine.dsl.Pipeline.plan` builds. Its checks live in :mod:`engine.checks`, what each job
type may be in :mod:`engine.catalogue`, its JSON in :mod:`engine.wire`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from attrs import Factory, field, frozen

from engine import checks, wire
from engine.errors import PlanError, Problem


@frozen
class JobSpec:
    """One job of a plan. Its output on the wire is always ``"$" + id``."""

    id: str
    type: str
    params: Mapping[str, Any]
    depends_on: tuple[str, ...] = field(default=(), metadata={wire.OMIT_IF_DEFAULT: True})
    output: str = field(
        default=Factory(lambda self: "$" + self.id, takes_self=True),
        init=False,
        eq=False,
        repr=False,
    )

    def to_json(self) -> dict[str, Any]:
        """The job as the seed's request body writes it."""
        return wire.to_json(self)  # type: ignore[no-any-return]


@frozen
class ExecutionPlan:
    """The jobs of one execution, optionally continuing from a base execution's final video."""

    jobs: tuple[JobSpec, ...]
    base_execution_id: str | None = field(default=None, metadata={wire.OMIT_IF_DEFAULT: True})

    def to_json(self) -> dict[str, Any]:
        """The seed's request body: ``{"jobs": [...]}`` plus ``baseExecutionId`` when set."""
        return wire.to_json(self)  # type: ignore[no-any-return]

    @classmethod
    def from_json(cls, obj: Any, *, has_base: bool | None = None) -> ExecutionPlan:
        """Parse and validate a request body; raise :class:`PlanError` naming every problem.

        ``has_base`` (whether the plan continues from a base execution) defaults to whether
        ``baseExecutionId`` is present. Absent ``generate`` and ``merge`` params take their
        defaults in the returned plan.
        """
        jobs, base = checks.parse_plan(obj, has_base=has_base)
        return cls(tuple(JobSpec(*job) for job in jobs), base)

    def validate(self, *, has_base: bool) -> list[Problem]:
        """Every problem with this plan; empty when it is valid.

        ``has_base`` says whether it continues from a base execution, which lets root jobs be
        transforms of the base's final video.
        """
        return checks.check_jobs(
            [(job.id, job.type, job.params, job.depends_on) for job in self.jobs],
            has_base=has_base,
        )

    def check(self, *, has_base: bool) -> None:
        """Raise :class:`PlanError` listing every problem, if there is any."""
        problems = self.validate(has_base=has_base)
        if problems:
            raise PlanError(problems)

    @property
    def final_job(self) -> JobSpec:
        """The one job nothing depends on; its video is the execution's result."""
        needed = {dep for job in self.jobs for dep in job.depends_on}
        finals = [job for job in self.jobs if job.id not in needed]
        if len(finals) != 1:
            raise PlanError(checks.finals_problem([job.id for job in finals]))
        return finals[0]

    @property
    def roots(self) -> tuple[JobSpec, ...]:
        """The jobs that depend on no other job of this plan."""
        return tuple(job for job in self.jobs if not job.depends_on)

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the canonical JSON of :meth:`to_json`, to spot a repeated request."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


__all__ = ["ExecutionPlan", "JobSpec"]

"""Every error the engine raises derives from :class:`EngineError`.

The tree::

    EngineError
    ├── PlanError              a plan or request is invalid; ``.problems`` names each (job, field)
    │   └── OperationError     a DSL function (``merge(...)``) was given a bad value or argument
    │       └── ArgumentError  ... an argument it does not take, or none it needs (a TypeError)
    ├── UnknownExecution       no such execution (or not visible to this tenant)
    ├── ExecutionFailed        ``wait()`` on an execution that ended failed or cancelled
    ├── InvalidSignature       a webhook body or its signature headers do not verify
    ├── ProviderError          a video provider failed a job; ``retryable`` says whether to retry
    ├── IdempotencyConflict    an idempotency key was reused with a different request
    ├── InvalidState           the operation does not apply to the execution's current status
    ├── ConfigError            an engine or policy option is out of range (also a ``ValueError``)
    └── StorageError           a backend could not read or write its store (bad file, newer schema)
        └── LeaseLost          another engine now holds executions this one was writing

Adapters translate their drivers' errors (``sqlite3``, ``httpx``) into these at their boundary.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from attrs import frozen

from engine import wire


class EngineError(Exception):
    """The root of every error raised by the engine and its adapters."""


@frozen
class Problem:
    """One thing wrong with a plan: which job (or ``None`` for the plan), which field, and why."""

    job_id: str | None
    field: str
    message: str

    def __str__(self) -> str:
        if self.job_id is not None:
            return f"job {self.job_id!r}, {self.field}: {self.message}"
        if self.field == "plan":  # about the plan as a whole: the message says it all
            return self.message
        return f"plan, {self.field}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        """``{"jobId", "field", "message"}``, as problem bodies list it."""
        return wire.to_json(self)  # type: ignore[no-any-return]


class PlanError(EngineError):
    """A plan is invalid. ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: Iterable[Problem] | str) -> None:
        if isinstance(problems, str):
            problems = [Problem(None, "plan", problems)]
        self.problems: tuple[Problem, ...] = tuple(problems)
        lines = "; ".join(str(p) for p in self.problems)
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"invalid plan ({len(self.problems)} {noun}): {lines}")


class OperationError(PlanError):
    """A DSL function was called with a value its operation does not take, such as
    ``merge(transition="wipe-ish")``: raised when the operation is made, not when it is run.
    ``function`` is the DSL function; each problem's ``field`` is its Python parameter."""

    def __init__(self, function: str, problems: Iterable[Problem]) -> None:
        super().__init__(problems)
        self.function = function
        lines = "; ".join(f"{p.field}: {p.message}" for p in self.problems)
        self.args = (f"{function}(): {lines}",)


class ArgumentError(OperationError, TypeError):
    """A DSL function was called with an argument it does not take (``generate_video(promt=...)``,
    with a "did you mean") or without one it needs. A ``TypeError`` too, as Python's own is."""


class UnknownExecution(EngineError):
    """No such execution (or not this tenant's). ``field`` names the argument that gave the id
    when it is not the execution asked about itself (``base_execution_id``)."""

    def __init__(self, execution_id: str, *, field: str | None = None) -> None:
        self.execution_id = execution_id
        self.field = field
        given = f" (given as {field})" if field is not None else ""
        super().__init__(f"unknown execution {execution_id!r}{given}")


class ExecutionFailed(EngineError):
    """Raised by ``wait()`` when the execution ended ``failed`` or ``cancelled``."""

    def __init__(
        self,
        execution_id: str,
        status: str,
        code: str | None = None,
        message: str | None = None,
        job_id: str | None = None,
    ) -> None:
        self.execution_id = execution_id
        self.status = status
        self.code = code
        self.message = message
        self.job_id = job_id
        where = f" at job {job_id!r}" if job_id else ""
        super().__init__(f"execution {execution_id} {status}{where}: {code}: {message}")


class InvalidSignature(EngineError):
    pass


class ProviderError(EngineError):
    """A provider's failure. ``retryable=False`` fails the job at once; otherwise it is retried."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        self.message = message
        self.retryable = retryable
        super().__init__(message)


class IdempotencyConflict(EngineError):
    pass


class InvalidState(EngineError):
    pass


class ConfigError(EngineError, ValueError):
    pass


class StorageError(EngineError):
    pass


class LeaseLost(StorageError):
    """An ``apply`` named executions its engine no longer holds; nothing of it was applied."""

    def __init__(self, execution_ids: Iterable[str]) -> None:
        self.execution_ids: frozenset[str] = frozenset(execution_ids)
        listed = ", ".join(sorted(self.execution_ids))
        super().__init__(f"lease lost on executions: {listed}")

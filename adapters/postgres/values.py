"""What the PostgreSQL job board hands back: claims, outcomes, engines and wake-up events."""

from __future__ import annotations

from typing import Literal

from attrs import frozen

from engine.models import ErrorInfo, ExecutionStatus, JobRef, JobRequest, Video, Webhook


@frozen(eq=False)
class Claim:
    """One claimed attempt of one job: what to run, and the token that fences its outcome.

    ``complete`` and ``fail`` accept an outcome only while the job is still claimed with this
    token; once the job was rescued (its engine presumed dead), handed back, cancelled or
    claimed again, the token is stale and the outcome is refused.
    """

    request: JobRequest
    token: str

    @property
    def ref(self) -> JobRef:
        return (self.request.execution_id, self.request.job_id)


@frozen
class Ended:
    """An execution that reached a terminal status in a board transaction."""

    execution_id: str
    status: ExecutionStatus
    result: Video | None
    error: ErrorInfo | None
    tenant: str | None
    webhook: Webhook | None
    generation: int
    created_at: float
    started_at: float | None
    completed_at: float

    @property
    def event_id(self) -> str:
        """The id of this ending's webhook event (the ``webhook-id`` of every attempt)."""
        return f"evt_{self.execution_id}_{self.generation}"


@frozen
class CompleteOutcome:
    """What a batch of completions did: which were refused (stale claims: a zombie attempt,
    or a job cancelled meanwhile) and which executions ended, bases before their dependents."""

    refused: tuple[Claim, ...]
    ended: tuple[Ended, ...]


@frozen
class EndOutcome:
    """What ``fail`` or ``cancel`` did.

    ``refused``: the claim was stale and nothing was written (``fail`` only). ``ended``: the
    executions that ended, the one named first, then its dependents (``base_failed``).
    ``aborted``: jobs that were running and are now cancelled; their workers should stop them
    (every engine is also told through the ``cancel`` channel).
    """

    refused: bool
    ended: tuple[Ended, ...]
    aborted: tuple[JobRef, ...]


@frozen
class EngineInfo:
    """A live engine: its id, the job types it serves, its lease, how many jobs it runs."""

    id: str
    job_types: tuple[str, ...]
    started_at: float
    heartbeat_at: float
    lease_until: float
    running: int


EventKind = Literal["ready", "cancel", "ended"]


@frozen
class BoardEvent:
    """A wake-up from ``PostgresBoard.listen()``.

    ``ready``: jobs of type ``value`` became claimable. ``cancel``: execution ``value`` ended
    while some of its jobs were running: stop them. ``ended``: execution ``value`` reached a
    terminal status. Notifications may be lost (a dropped connection): they only shorten waits,
    and polling remains the backstop.
    """

    kind: EventKind
    value: str

"""Value classes shared by the engine, its ports and its adapters.

All are frozen attrs classes. Their JSON (camelCase) is made by :mod:`engine.wire`'s one
converter from their fields; the only wire detail here is which fields are left out while they
have their default (``metadata={OMIT_IF_DEFAULT: True}``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from attrs import field, frozen

from engine import wire
from engine.wire import OMIT_IF_DEFAULT

ExecutionStatus = Literal["pending", "processing", "completed", "failed", "cancelled"]
JobStatus = Literal["pending", "processing", "completed", "failed", "cancelled"]

TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

#: A job's address: ``(execution_id, job_id)``.
JobRef = tuple[str, str]


@frozen
class Video:
    """A finished clip, as a provider returns it and as webhooks and status bodies carry it."""

    url: str
    duration: float
    aspect_ratio: str
    width: int | None = None
    height: int | None = None
    status: str = "completed"


@frozen
class JobRequest:
    """What a :class:`~engine.ports.VideoProvider` is asked to do for one attempt of one job."""

    execution_id: str
    job_id: str
    type: str
    params: Mapping[str, Any]
    inputs: tuple[Video, ...]
    attempt: int
    idempotency_key: str


@frozen
class ErrorInfo:
    """Why an execution or job ended ``failed`` or ``cancelled``."""

    code: str
    message: str
    job_id: str | None = None


@frozen
class Progress:
    execution_id: str
    completed_jobs: int
    total_jobs: int
    current_job: str | None
    percent: float
    status: ExecutionStatus


@frozen
class StatusReport:
    """The seed's status body: ``GET /api/execute/{id}/status``."""

    status: ExecutionStatus
    progress: float
    total_jobs: int
    completed_jobs: int
    current_job: str | None
    result: Video | None = None
    error: ErrorInfo | None = field(default=None, metadata={OMIT_IF_DEFAULT: True})

    def to_json(self) -> dict[str, Any]:
        """The seed's status body, plus ``error`` when the execution failed or was cancelled."""
        return wire.to_json(self)  # type: ignore[no-any-return]

    @classmethod
    def from_json(cls, obj: Any) -> StatusReport:
        """Read a status body written by :meth:`to_json` (raises on a body of another shape)."""
        return wire.from_json(obj, cls)


@frozen
class Webhook:
    """Where to POST an execution's outcome. The secret never appears in ``repr`` or JSON."""

    url: str
    secret: str | None = field(default=None, repr=False)


@frozen
class JobInfo:
    """One job of an execution: its spec and where it stands."""

    id: str
    type: str
    params: Mapping[str, Any]
    depends_on: tuple[str, ...] = ()
    status: JobStatus = "pending"
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    result: Video | None = None
    error: ErrorInfo | None = None


@frozen
class Execution:
    """A snapshot of one execution as the store holds it."""

    id: str
    status: ExecutionStatus
    jobs: tuple[JobInfo, ...]
    created_at: float
    base_execution_id: str | None = None
    webhook: Webhook | None = None
    result: Video | None = None
    error: ErrorInfo | None = None
    started_at: float | None = None
    completed_at: float | None = None
    tenant: str | None = None
    idempotency_key: str | None = None
    #: Bumped by each ``resume()``; part of the webhook event id so each ending notifies once.
    generation: int = 0

    @property
    def final_job_id(self) -> str:
        """The one job no other job of this execution depends on (plans guarantee one)."""
        needed = {dep for job in self.jobs for dep in job.depends_on}
        return next(job.id for job in reversed(self.jobs) if job.id not in needed)

    @property
    def completed_jobs(self) -> int:
        return sum(1 for job in self.jobs if job.status == "completed")

    @property
    def current_job(self) -> str | None:
        return next((job.id for job in self.jobs if job.status == "processing"), None)

    def job(self, job_id: str) -> JobInfo:
        for job in self.jobs:
            if job.id == job_id:
                return job
        raise KeyError(job_id)

    def status_report(self) -> StatusReport:
        total = len(self.jobs)
        done = self.completed_jobs
        return StatusReport(
            status=self.status,
            progress=percent(done, total),
            total_jobs=total,
            completed_jobs=done,
            current_job=self.current_job,
            result=self.result,
            error=self.error,
        )

    def progress(self) -> Progress:
        total = len(self.jobs)
        done = self.completed_jobs
        return Progress(self.id, done, total, self.current_job, percent(done, total), self.status)


@frozen
class Ended:
    """An execution reached a terminal status: what listeners and the notifier are told."""

    execution_id: str
    status: ExecutionStatus
    result: Video | None
    error: ErrorInfo | None
    progress: Progress
    generation: int
    created_at: float
    completed_at: float
    webhook: Webhook | None
    tenant: str | None


def percent(done: int, total: int) -> float:
    return round(100.0 * done / total, 1) if total else 100.0


# --- changes a store applies atomically (one ``Storage.apply`` call is one transaction) ---------


@frozen
class JobUpdate:
    """Set a job's state. Every field is written, so applying an update twice is harmless."""

    execution_id: str
    job_id: str
    status: JobStatus
    attempts: int
    started_at: float | None
    finished_at: float | None
    result: Video | None = None
    error: ErrorInfo | None = None


@frozen
class ExecutionUpdate:
    """Set an execution's status (and outcome, once terminal)."""

    execution_id: str
    status: ExecutionStatus
    started_at: float | None = None
    completed_at: float | None = None
    result: Video | None = None
    error: ErrorInfo | None = None
    generation: int = 0


@frozen
class Notification:
    """An execution reached a terminal status: what the notifier port is handed, once per ending.

    ``event_id`` is stable for this ending (it becomes the ``webhook-id`` on every delivery
    attempt); ``payload`` is the webhook body as a JSON-ready dict.
    """

    event_id: str
    execution_id: str
    status: ExecutionStatus
    payload: Mapping[str, Any]
    webhook: Webhook | None = None
    tenant: str | None = None
    #: Delivery attempts already made for this event (by an engine that died, for instance), so
    #: a notifier can continue its numbering and its back-off schedule where they were.
    attempts_made: int = 0


DeliveryOutcome = Literal["delivered", "retry", "failed"]


@frozen
class DeliveryAttempt:
    """One try at delivering one webhook event.

    ``outcome`` is ``delivered`` (a 2xx), ``retry`` (failed, another attempt follows at
    ``retry_at``) or ``failed`` (failed, and the last one). ``at`` is when the attempt started
    and ``latency`` how long it took, in seconds on the notifier's clock.
    """

    event_id: str
    execution_id: str
    url: str
    attempt: int
    at: float
    status_code: int | None
    error: str | None
    latency: float
    outcome: DeliveryOutcome
    retry_at: float | None = None


OutboxStatus = Literal["pending", "delivered", "failed", "notified"]


@frozen
class OutboxAdd:
    """A webhook event to deliver, written in the same ``apply`` that ends its execution."""

    event_id: str
    execution_id: str
    status: ExecutionStatus
    payload: Mapping[str, Any]


@frozen
class DeliveryRecorded:
    """An attempt at delivering an outbox event, appended to its delivery log."""

    attempt: DeliveryAttempt

    @property
    def execution_id(self) -> str:
        return self.attempt.execution_id


@frozen
class OutboxDone:
    """The notifier is done with an event: ``delivered``, ``failed`` (gave up) or ``notified``
    (taken by a notifier that makes no HTTP attempts)."""

    event_id: str
    execution_id: str
    status: OutboxStatus


@frozen
class OutboxReset:
    """Deliver an event again (``Engine.redeliver``): back to ``pending``, same event id."""

    event_id: str
    execution_id: str


Change = JobUpdate | ExecutionUpdate | OutboxAdd | DeliveryRecorded | OutboxDone | OutboxReset


def frame_size(aspect_ratio: str, short_side: int = 720) -> tuple[int, int]:
    """Width and height for an aspect ratio ``"W:H"``: the short side is ``short_side`` pixels,
    the long one rounded to an even number (H.264 wants even sizes). ``16:9`` is 1280x720."""
    w_text, _, h_text = aspect_ratio.partition(":")
    w, h = int(w_text), int(h_text)
    if w >= h:
        return 2 * round(short_side * w / h / 2), short_side
    return short_side, 2 * round(short_side * h / w / 2)


# --- values of the job-board port (job-level dispatch by the database: PostgreSQL) ----------------


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
class Ending:
    """An execution that reached a terminal status in one job-board transaction."""

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
    ended: tuple[Ending, ...]


@frozen
class EndOutcome:
    """What ``fail`` or ``cancel`` did.

    ``refused``: the claim was stale and nothing was written (``fail`` only). ``ended``: the
    executions that ended, the one named first, then its dependents (``base_failed``).
    ``aborted``: jobs that were running and are now cancelled; their workers should stop them
    (every engine is also told through the ``cancel`` wake-up).
    """

    refused: bool
    ended: tuple[Ending, ...]
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


BoardEventKind = Literal["ready", "cancel", "ended"]


@frozen
class BoardEvent:
    """A wake-up from the job board.

    ``ready``: jobs of type ``value`` became claimable. ``cancel``: execution ``value`` ended
    while some of its jobs were running: stop them. ``ended``: execution ``value`` reached a
    terminal status. Wake-ups may be lost (a dropped connection): they only shorten waits, and
    polling remains the backstop.
    """

    kind: BoardEventKind
    value: str

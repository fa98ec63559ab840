"""A deterministic, inspectable stand-in for a video provider."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from attrs import define, field, frozen

from engine.errors import ProviderError
from engine.models import JobRequest, Video, frame_size


@frozen
class FakeCall:
    """One call the fake received; times are ``time.monotonic()`` seconds."""

    execution_id: str
    job_id: str
    type: str
    attempt: int
    idempotency_key: str
    started_at: float
    finished_at: float | None
    params: Any = None
    inputs: tuple[Video, ...] = ()
    outcome: str = "completed"


@define
class _Failure:
    job_id: str
    execution_id: str | None
    times: int
    retryable: bool
    message: str


Hook = Callable[[JobRequest], Awaitable[None] | None]


@define
class FakeVideoProvider:
    """Returns made-up videos after ``latency`` seconds, recording every call in ``calls``.

    Output: ``generate`` keeps ``duration`` and ``aspectRatio``; ``merge`` sums its inputs'
    durations less one ``transitionDuration`` per join when the transition is not ``none``;
    ``reframe`` changes the aspect ratio; ``lipSync`` and ``addSubtitles`` keep both.
    URLs are ``fake://videos/<idempotency key>.mp4``, so every attempt of a job gives the same.

    ``fail_next(job_id, times=..., retryable=...)`` scripts failures; ``on_call`` (plain or async)
    runs at the start of every call and may raise or wait, for tests that need to hold a job.

    ``keep_calls`` bounds ``calls`` to the latest calls (each holds its job's params and inputs,
    which can be large: a long-running server must not keep them all); ``None`` keeps every
    call, ``0`` none (``contrib.serve``'s ``--provider fake`` records nothing).
    """

    latency: float = 0.0
    on_call: Hook | None = None
    keep_calls: int | None = 10_000
    calls: list[FakeCall] = field(factory=list, init=False)
    _failures: list[_Failure] = field(factory=list, init=False)
    #: Calls dropped from the front of ``calls`` so far (``calls[0]`` is call number _dropped).
    _dropped: int = field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        keep = self.keep_calls
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
            raise ValueError("keep_calls must be a whole number >= 0, or None")

    def fail_next(
        self,
        job_id: str,
        *,
        times: int = 1,
        retryable: bool = True,
        execution_id: str | None = None,
        message: str = "scripted failure",
    ) -> None:
        self._failures.append(_Failure(job_id, execution_id, times, retryable, message))

    def reset(self) -> None:
        self._dropped += len(self.calls)
        self.calls.clear()
        self._failures.clear()

    def calls_for(self, execution_id: str) -> list[FakeCall]:
        return [c for c in self.calls if c.execution_id == execution_id]

    async def run(self, request: JobRequest) -> Video:
        started = time.monotonic()
        number = self._remember(self._record(request, started, None, "running"))
        outcome = "failed"
        try:
            if self.on_call is not None:
                maybe = self.on_call(request)
                if maybe is not None:
                    await maybe
            if self.latency > 0:
                await anyio.sleep(self.latency)
            self._raise_scripted(request)
            video = _output(request)
            outcome = "completed"
            return video
        except anyio.get_cancelled_exc_class():
            outcome = "cancelled"
            raise
        finally:
            index = number - self._dropped
            if 0 <= index < len(self.calls):  # else dropped since (keep_calls) or reset
                self.calls[index] = self._record(request, started, time.monotonic(), outcome)

    def _remember(self, call: FakeCall) -> int:
        """Append ``call`` (dropping the oldest over ``keep_calls``); its number."""
        number = self._dropped + len(self.calls)
        keep = self.keep_calls
        if keep == 0:
            self._dropped += 1
            return number
        self.calls.append(call)
        if keep is not None and len(self.calls) > keep:
            excess = len(self.calls) - keep
            del self.calls[:excess]
            self._dropped += excess
        return number

    def _raise_scripted(self, request: JobRequest) -> None:
        for failure in self._failures:
            if failure.job_id != request.job_id or failure.times <= 0:
                continue
            if failure.execution_id not in (None, request.execution_id):
                continue
            failure.times -= 1
            raise ProviderError(failure.message, retryable=failure.retryable)

    @staticmethod
    def _record(
        request: JobRequest, started: float, finished: float | None, outcome: str
    ) -> FakeCall:
        return FakeCall(
            execution_id=request.execution_id,
            job_id=request.job_id,
            type=request.type,
            attempt=request.attempt,
            idempotency_key=request.idempotency_key,
            started_at=started,
            finished_at=finished,
            params=request.params,
            inputs=request.inputs,
            outcome=outcome,
        )


def _output(request: JobRequest) -> Video:
    params = request.params
    inputs = request.inputs
    needed = {"merge": 2, "reframe": 1, "lipSync": 1, "addSubtitles": 1}.get(request.type, 0)
    if len(inputs) < needed:
        raise ProviderError(
            f"{request.type} needs at least {needed} input video(s), got {len(inputs)}",
            retryable=False,
        )
    if request.type == "generate":
        duration = float(params.get("duration", 5))
        aspect = str(params.get("aspectRatio", "16:9"))
    elif request.type == "merge":
        duration = sum(v.duration for v in inputs)
        if params.get("transition", "none") != "none" and len(inputs) > 1:
            overlap = float(params.get("transitionDuration", 1.0))
            shortest = min(v.duration for v in inputs)
            duration -= (len(inputs) - 1) * min(overlap, shortest)
        aspect = inputs[0].aspect_ratio
    elif request.type == "reframe":
        duration = inputs[0].duration
        aspect = str(params["aspectRatio"])
    elif request.type in ("lipSync", "addSubtitles"):
        duration = inputs[0].duration
        aspect = inputs[0].aspect_ratio
    else:
        raise ProviderError(f"FakeVideoProvider cannot run {request.type!r}", retryable=False)
    width, height = frame_size(aspect)
    return Video(
        url=f"fake://videos/{request.idempotency_key}.mp4",
        duration=round(duration, 6),
        aspect_ratio=aspect,
        width=width,
        height=height,
    )

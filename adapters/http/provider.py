"""A video provider that calls a hosted generative-video API over its "queue" protocol.

The protocol is the one hosted model APIs share (fal.ai's queue API has this shape):

- submit: ``POST {base_url}/{path}`` with the model's JSON input and an ``Idempotency-Key``
  header; the answer is ``{"request_id", "status_url"?, "response_url"?, "cancel_url"?}``;
- status: ``GET .../requests/{request_id}/status`` until ``{"status": "COMPLETED"}``
  (``IN_QUEUE`` and ``IN_PROGRESS`` mean wait; ``FAILED``, ``ERROR``, ``CANCELLED`` or an
  ``error`` field mean the request failed, retryable only if the body says ``"retryable": true``);
- result: ``GET .../requests/{request_id}``: the model's output, such as
  ``{"video": {"url", "content_type", "duration"?, "width"?, "height"?}}``;
- cancel: ``PUT .../requests/{request_id}/cancel``, sent when the engine cancels the job.

The URLs a submit answer returns are used when they are on the same origin (scheme, host, port)
as ``base_url``; otherwise, or when absent, they are built from the route's ``queue_path``
(default: its ``path``). So the API key is never sent to another host.

Every HTTP call is retried on transport errors, 408, 429 and 5xx, up to ``max_retries`` times,
after ``Retry-After`` (seconds or an HTTP date, at most an hour) when the answer has one, else
with backoff; other 4xx fail the job at once. Waits go through the injected clock, and the whole
attempt is bounded by ``timeout`` seconds on that clock.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import quote

import anyio
import httpx
from attrs import define, frozen

from adapters.net import exponential, parse_retry_after
from engine.clock import Clock, SystemClock
from engine.errors import ConfigError, ProviderError
from engine.models import JobRequest, Video

__all__ = [
    "DEFAULT_INPUT_BUILDERS",
    "HttpVideoProvider",
    "InputBuilder",
    "ModelRoute",
    "OutputParser",
    "default_input",
    "default_output",
]

logger = logging.getLogger(__name__)

InputBuilder = Callable[[JobRequest], dict[str, Any]]
OutputParser = Callable[[Mapping[str, Any], JobRequest], Video]

#: Status values that mean "not done yet"; anything in ``_FAILED`` (or an ``error``) is a failure.
_PENDING = frozenset({"IN_QUEUE", "IN_PROGRESS"})
_FAILED = frozenset({"FAILED", "ERROR", "CANCELLED", "CANCELED"})
#: Seconds the cancel request may take once the engine has cancelled the job.
_CANCEL_GRACE = 5.0
#: A ``Retry-After`` longer than this (seconds) is capped (the overall timeout still applies).
_MAX_RETRY_AFTER = 3600.0
_MAX_DETAIL = 500


@frozen
class ModelRoute:
    """Which model endpoint runs one operation type, and how to talk to it.

    - ``path``: the model's path under ``base_url``, such as ``"fal-ai/kling-video/v2/master"``.
    - ``build_input``: the JSON input for a job (default: :func:`default_input`).
    - ``parse_output``: the :class:`~engine.Video` from the model's output
      (default: :func:`default_output`).
    - ``queue_path``: where the request's status, result and cancel URLs live when the API does
      not return them and they differ from ``path`` (fal.ai drops a model's sub-path there).
    """

    path: str
    build_input: InputBuilder | None = None
    parse_output: OutputParser | None = None
    queue_path: str | None = None


@define
class _Call:
    """Where one attempt stands, so a cancel or a timeout knows what to say."""

    request: JobRequest
    route: ModelRoute
    request_id: str | None = None
    status_url: str | None = None
    response_url: str | None = None
    cancel_url: str | None = None
    last_status: str | None = None
    timed_out: bool = False


class HttpVideoProvider:
    """The :class:`~engine.ports.VideoProvider` port over a remote queue API.

    ``models`` maps each wire type the provider serves (``generate``, ``merge``, ``lipSync``,
    ``addSubtitles``, ``reframe``, or your own) to a :class:`ModelRoute` (or just its path).
    ``api_key`` is sent as ``{auth_header}: {auth_scheme} {api_key}`` (the scheme left out when
    empty) and never appears in an error message or a log line.

    A job's ``idempotency_key`` goes with its submission (``Idempotency-Key``), so an attempt run
    again after a crash, or after a timeout, finds the request already made instead of paying
    twice. Once the API has failed a request, later attempts of the same job in this process
    send a derived key (``<key>#2``, ...) so a retry is a new request, not the failed one again.

    ``client``: an ``httpx.AsyncClient`` to send with (reused, not closed). Without one, each
    attempt uses its own short-lived client with ``request_timeout``.

    Polls start at ``poll_interval`` seconds and grow by half each time up to
    ``max_poll_interval``; failed calls back off from ``poll_interval`` doubling to the same cap.
    On timeout the remote request is left running (a retry picks it up by its key); on an engine
    cancel it is cancelled (best effort, within 5 s).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        auth_scheme: str | None = "Key",
        auth_header: str = "Authorization",
        models: Mapping[str, ModelRoute | str],
        client: httpx.AsyncClient | None = None,
        clock: Clock | None = None,
        poll_interval: float = 1.0,
        max_poll_interval: float = 10.0,
        timeout: float = 600.0,
        max_retries: int = 5,
        request_timeout: float = 30.0,
    ) -> None:
        try:
            parsed = httpx.URL(base_url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ConfigError(f"base_url is not a valid URL: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError("base_url must be an http(s) URL with a host")
        if not models:
            raise ConfigError("models needs at least one route (operation type -> ModelRoute)")
        if not poll_interval > 0:
            raise ConfigError("poll_interval must be > 0 seconds")
        if not max_poll_interval >= poll_interval:
            raise ConfigError("max_poll_interval must be >= poll_interval")
        if not timeout > 0:
            raise ConfigError("timeout must be > 0 seconds")
        if not request_timeout > 0:
            raise ConfigError("request_timeout must be > 0 seconds")
        if max_retries < 0:
            raise ConfigError("max_retries must be >= 0")
        self._base_url = str(parsed).rstrip("/")
        self._origin = _origin(parsed)
        self._api_key = api_key
        self._auth_scheme = auth_scheme
        self._auth_header = auth_header
        self._routes: dict[str, ModelRoute] = {
            kind: route if isinstance(route, ModelRoute) else ModelRoute(route)
            for kind, route in models.items()
        }
        self._client = client
        self._clock: Clock = SystemClock() if clock is None else clock
        self._poll_interval = float(poll_interval)
        self._max_poll_interval = float(max_poll_interval)
        self._timeout = float(timeout)
        self._max_retries = max_retries
        self._request_timeout = float(request_timeout)
        # idempotency key -> how many remote requests made under it have failed
        self._failed_requests: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"HttpVideoProvider({self._base_url!r}, models={sorted(self._routes)!r})"

    @property
    def routes(self) -> Mapping[str, ModelRoute]:
        return dict(self._routes)

    async def run(self, request: JobRequest) -> Video:
        route = self._route_for(request.type)
        payload = _build(route, request)
        call = _Call(request, route)
        deadline = self._clock.now() + self._timeout
        video: Video | None = None
        failure: Exception | None = None
        async with self._client_scope() as client, anyio.create_task_group() as task_group:
            task_group.start_soon(self._expire, deadline, call, task_group.cancel_scope)
            try:
                video = await self._run_call(client, call, payload)
            except anyio.get_cancelled_exc_class():
                if not call.timed_out:
                    await self._cancel_remote(client, call)
                raise
            except Exception as exc:  # raised below, outside the task group (no ExceptionGroup)
                failure = exc
            task_group.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if video is None:  # only the deadline cancels the task group's own scope
            raise ProviderError(self._redact(self._timeout_message(call)), retryable=True)
        return video

    # --- one attempt ---------------------------------------------------------------------------

    async def _run_call(
        self, client: httpx.AsyncClient, call: _Call, payload: dict[str, Any]
    ) -> Video:
        request = call.request
        await self._submit(client, call, payload)
        await self._wait_until_done(client, call)
        assert call.response_url is not None  # set by _submit
        output = await self._send(client, "GET", call.response_url, self._what(call, "result"))
        try:
            parse = call.route.parse_output or default_output
            return parse(output, request)
        except ProviderError as exc:
            if not exc.retryable:
                self._count_failure(request)
            raise
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            self._count_failure(request)
            raise ProviderError(
                self._redact(f"{self._what(call, 'result')} cannot be read: {exc!r}"),
                retryable=False,
            ) from exc

    async def _submit(
        self, client: httpx.AsyncClient, call: _Call, payload: dict[str, Any]
    ) -> None:
        url = self._join(self._base_url, call.route.path)
        headers = {"Idempotency-Key": self._idempotency_key(call.request)}
        answer = await self._send(client, "POST", url, self._what(call, "submit"), payload, headers)
        request_id = answer.get("request_id")
        if (
            not isinstance(request_id, str | int)
            or isinstance(request_id, bool)
            or request_id == ""
        ):
            raise ProviderError(
                self._redact(f"{self._what(call, 'submit')} answered no request_id"),
                retryable=True,
            )
        call.request_id = str(request_id)
        queue = self._join(self._base_url, call.route.queue_path or call.route.path)
        base = f"{queue}/requests/{quote(call.request_id, safe='')}"
        call.status_url = self._same_origin(answer.get("status_url")) or f"{base}/status"
        call.response_url = self._same_origin(answer.get("response_url")) or base
        call.cancel_url = self._same_origin(answer.get("cancel_url")) or f"{base}/cancel"
        logger.info(
            "%s job %s/%s submitted to %s as request %s",
            call.request.type,
            call.request.execution_id,
            call.request.job_id,
            call.route.path,
            call.request_id,
        )

    async def _wait_until_done(self, client: httpx.AsyncClient, call: _Call) -> None:
        assert call.status_url is not None
        interval = self._poll_interval
        while True:
            body = await self._send(client, "GET", call.status_url, self._what(call, "status"))
            status = str(body.get("status", "")).upper()
            call.last_status = status or None
            if status in _FAILED or body.get("error"):
                self._count_failure(call.request)
                retryable = body.get("retryable") is True
                raise ProviderError(
                    self._redact(
                        f"{self._what(call, 'the API')} ended it {status or 'with an error'}: "
                        f"{_describe_error(body)}"
                    ),
                    retryable=retryable,
                )
            if status == "COMPLETED":
                response_url = self._same_origin(body.get("response_url"))
                if response_url is not None:
                    call.response_url = response_url
                return
            if status not in _PENDING:
                logger.debug(
                    "request %s: unknown status %r, still waiting", call.request_id, status
                )
            else:
                logger.debug(
                    "request %s: %s (queue position %s)",
                    call.request_id,
                    status,
                    body.get("queue_position"),
                )
            await self._clock.sleep_until(self._clock.now() + interval)
            interval = min(interval * 1.5, self._max_poll_interval)

    async def _cancel_remote(self, client: httpx.AsyncClient, call: _Call) -> None:
        """Ask the API to cancel ``call``'s request; best effort, shielded, bounded."""
        if call.cancel_url is None:
            logger.info(
                "%s job %s/%s cancelled before the API gave it a request id",
                call.request.type,
                call.request.execution_id,
                call.request.job_id,
            )
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CANCEL_GRACE):
            try:
                response = await client.put(
                    call.cancel_url, headers=self._headers(), timeout=_CANCEL_GRACE
                )
            except httpx.HTTPError as exc:
                logger.warning(
                    "cancel of request %s failed: %s", call.request_id, type(exc).__name__
                )
                return
            logger.info("cancel of request %s: HTTP %d", call.request_id, response.status_code)

    async def _expire(self, deadline: float, call: _Call, scope: anyio.CancelScope) -> None:
        await self._clock.sleep_until(deadline)
        call.timed_out = True
        scope.cancel()

    # --- HTTP ----------------------------------------------------------------------------------

    async def _send(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        what: str,
        payload: dict[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """One API call, retried on transport errors, 408, 429 and 5xx; its JSON object."""
        headers = self._headers()
        if extra_headers:
            headers.update(extra_headers)
        tries = 0
        while True:
            tries += 1
            retry_after: float | None = None
            cause: Exception | None = None
            try:
                response = await client.request(
                    method, url, json=payload, headers=headers, timeout=self._request_timeout
                )
            except httpx.HTTPError as exc:
                cause = exc
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return self._json_object(response, what)
                problem = f"HTTP {status}: {_detail(response)}"
                if not _retryable_status(status):
                    raise ProviderError(self._redact(f"{what} failed: {problem}"), retryable=False)
                retry_after = parse_retry_after(
                    response.headers.get("Retry-After"), now=self._clock.now(), cap=_MAX_RETRY_AFTER
                )
            if tries > self._max_retries:
                message = f"{what} failed after {tries} tries: {problem}"
                raise ProviderError(self._redact(message), retryable=True) from cause
            delay = retry_after if retry_after is not None else self._backoff(tries)
            logger.warning(
                "%s: %s; try %d of %d again in %.3gs",
                what,
                self._redact(problem),
                tries + 1,
                self._max_retries + 1,
                delay,
            )
            await self._clock.sleep_until(self._clock.now() + delay)

    def _json_object(self, response: httpx.Response, what: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError as exc:
            raise ProviderError(
                self._redact(f"{what}: HTTP {response.status_code} with a body that is not JSON"),
                retryable=True,
            ) from exc
        if not isinstance(body, dict):
            raise ProviderError(
                self._redact(f"{what}: expected a JSON object, got {type(body).__name__}"),
                retryable=True,
            )
        return body

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._api_key is not None:
            value = f"{self._auth_scheme} {self._api_key}" if self._auth_scheme else self._api_key
            headers[self._auth_header] = value
        return headers

    def _backoff(self, tries: int) -> float:
        return exponential(tries - 1, base=self._poll_interval, cap=self._max_poll_interval)

    @contextlib.asynccontextmanager
    async def _client_scope(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._client is not None:
            yield self._client
            return
        async with httpx.AsyncClient(
            timeout=self._request_timeout, follow_redirects=False
        ) as client:
            yield client

    # --- helpers -------------------------------------------------------------------------------

    def _route_for(self, kind: str) -> ModelRoute:
        route = self._routes.get(kind)
        if route is None:
            configured = ", ".join(sorted(self._routes))
            raise ProviderError(
                f"HttpVideoProvider has no model route for job type {kind!r} "
                f"(configured: {configured})",
                retryable=False,
            )
        return route

    def _idempotency_key(self, request: JobRequest) -> str:
        failed = self._failed_requests.get(request.idempotency_key, 0)
        return request.idempotency_key if failed == 0 else f"{request.idempotency_key}#{failed + 1}"

    def _count_failure(self, request: JobRequest) -> None:
        key = request.idempotency_key
        self._failed_requests[key] = self._failed_requests.get(key, 0) + 1

    def _same_origin(self, url: object) -> str | None:
        """``url`` if it is a URL on ``base_url``'s origin, else ``None`` (build our own)."""
        if not isinstance(url, str) or not url:
            return None
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError):
            return None
        if _origin(parsed) != self._origin:
            logger.warning("ignoring a queue URL on another origin than base_url: %s", parsed.host)
            return None
        return url

    def _what(self, call: _Call, step: str) -> str:
        request = call.request
        where = call.route.path
        if call.request_id is not None:
            where += f", request {call.request_id}"
        return f"{request.type} job {request.job_id} ({where}): {step}"

    def _timeout_message(self, call: _Call) -> str:
        state = f", last status {call.last_status}" if call.last_status else ""
        return f"{self._what(call, 'timed out')} after {self._timeout:g}s{state}"

    def _redact(self, text: str) -> str:
        key = self._api_key
        return text.replace(key, "***") if key else text

    @staticmethod
    def _join(base: str, path: str) -> str:
        return f"{base}/{path.strip('/')}"


# --- default inputs and outputs ----------------------------------------------------------------


def _first_input(request: JobRequest) -> Video:
    if not request.inputs:
        raise ProviderError(f"{request.type} job {request.job_id} has no input video", False)
    return request.inputs[0]


def _generate_input(request: JobRequest) -> dict[str, Any]:
    params = request.params
    return {
        "prompt": params["prompt"],
        "duration": params.get("duration", 5),
        "aspect_ratio": params.get("aspectRatio", "16:9"),
    }


def _lip_sync_input(request: JobRequest) -> dict[str, Any]:
    return {"video_url": _first_input(request).url, "audio_url": request.params["audioUrl"]}


def _reframe_input(request: JobRequest) -> dict[str, Any]:
    return {
        "video_url": _first_input(request).url,
        "aspect_ratio": request.params["aspectRatio"],
    }


def _subtitles_input(request: JobRequest) -> dict[str, Any]:
    params = request.params
    body: dict[str, Any] = {"video_url": _first_input(request).url}
    if params.get("language") is not None:
        body["language"] = params["language"]
    if params.get("cues") is not None:
        body["cues"] = [dict(cue) for cue in params["cues"]]
    if params.get("srtUrl") is not None:
        body["srt_url"] = params["srtUrl"]
    return body


def _merge_input(request: JobRequest) -> dict[str, Any]:
    if not request.inputs:
        raise ProviderError(f"merge job {request.job_id} has no input videos", False)
    params = request.params
    body: dict[str, Any] = {
        "video_urls": [video.url for video in request.inputs],
        "transition": params.get("transition", "none"),
    }
    if params.get("transitionDuration") is not None:
        body["transition_duration"] = params["transitionDuration"]
    return body


#: The default input of each wire type (snake_case, as hosted model APIs take it).
DEFAULT_INPUT_BUILDERS: Mapping[str, InputBuilder] = {
    "generate": _generate_input,
    "lipSync": _lip_sync_input,
    "reframe": _reframe_input,
    "addSubtitles": _subtitles_input,
    "merge": _merge_input,
}


def default_input(request: JobRequest) -> dict[str, Any]:
    """The model input for a job of a known wire type.

    ``generate``: ``prompt``, ``duration``, ``aspect_ratio``; ``lipSync``: ``video_url`` (the
    input video), ``audio_url``; ``reframe``: ``video_url``, ``aspect_ratio``; ``addSubtitles``:
    ``video_url`` and ``language``, ``cues``, ``srt_url`` when given; ``merge``: ``video_urls``,
    ``transition``, ``transition_duration`` when given.
    """
    builder = DEFAULT_INPUT_BUILDERS.get(request.type)
    if builder is None:
        raise ProviderError(
            f"no default input for job type {request.type!r}: give its ModelRoute a build_input",
            retryable=False,
        )
    return builder(request)


def _build(route: ModelRoute, request: JobRequest) -> dict[str, Any]:
    build = route.build_input or default_input
    try:
        return build(request)
    except ProviderError:
        raise
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ProviderError(
            f"cannot build the {request.type} input of job {request.job_id}: {exc!r}",
            retryable=False,
        ) from exc


def default_output(output: Mapping[str, Any], request: JobRequest) -> Video:
    """A :class:`~engine.Video` from ``{"video": {"url", "duration"?, "width"?, "height"?}}``
    (``"video"`` may also be just the URL).

    What the output does not give is taken from the job: the duration from ``duration``
    (``generate``) or the inputs (a ``merge`` sums them less its transitions); the aspect ratio
    from ``aspectRatio``, else the first input, else the frame size.
    """
    video = output.get("video")
    meta: Mapping[str, Any] = video if isinstance(video, Mapping) else {}
    url = video if isinstance(video, str) else meta.get("url")
    if not isinstance(url, str) or not url:
        raise ProviderError(
            f"{request.type} job {request.job_id}: the output has no video.url "
            f"(keys: {', '.join(sorted(map(str, output))) or 'none'})",
            retryable=False,
        )
    width = _positive_int(meta.get("width", output.get("width")))
    height = _positive_int(meta.get("height", output.get("height")))
    duration = _number(meta.get("duration", output.get("duration")))
    if duration is None:
        duration = _expected_duration(request)
    aspect = meta.get("aspect_ratio", output.get("aspect_ratio"))
    if not isinstance(aspect, str) or not aspect:
        aspect = _expected_aspect(request, width, height)
    return Video(url=url, duration=duration, aspect_ratio=aspect, width=width, height=height)


def _expected_duration(request: JobRequest) -> float:
    params, inputs = request.params, request.inputs
    if request.type == "generate":
        return float(params.get("duration", 5))
    if request.type == "merge" and inputs:
        total = sum(video.duration for video in inputs)
        if params.get("transition", "none") != "none" and len(inputs) > 1:
            overlap = min(
                float(params.get("transitionDuration", 1.0)), *(v.duration for v in inputs)
            )
            total -= (len(inputs) - 1) * overlap
        return round(total, 6)
    return inputs[0].duration if inputs else 0.0


def _expected_aspect(request: JobRequest, width: int | None, height: int | None) -> str:
    aspect = request.params.get("aspectRatio")
    if isinstance(aspect, str) and aspect:
        return aspect
    if request.inputs:
        return request.inputs[0].aspect_ratio
    if width and height:
        divisor = math.gcd(width, height)
        return f"{width // divisor}:{height // divisor}"
    return "16:9"


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _positive_int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if math.isfinite(value) and value > 0 else None


# --- the API's answers --------------------------------------------------------------------------


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host.lower(), url.port or default


def _retryable_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _detail(response: httpx.Response) -> str:
    """The API's own words for an error: ``detail``/``error``/``message``, else the body."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return _clip(text) if text else response.reason_phrase or "no detail"
    if isinstance(body, dict):
        return _clip(_describe_error(body))
    return _clip(str(body))


def _describe_error(body: Mapping[str, Any]) -> str:
    for name in ("detail", "error", "message", "title"):
        value = body.get(name)
        if value in (None, "", [], {}):
            continue
        if isinstance(value, Mapping):
            inner = value.get("message") or value.get("detail")
            return str(inner) if inner else str(dict(value))
        if isinstance(value, list):  # FastAPI-style validation errors: [{"loc", "msg"}, ...]
            return "; ".join(_describe_item(item) for item in value)
        return str(value)
    return "no detail given"


def _describe_item(item: object) -> str:
    if isinstance(item, Mapping):
        where = ".".join(str(part) for part in item.get("loc", ()) or ())
        message = item.get("msg") or item.get("message") or str(dict(item))
        return f"{where}: {message}" if where else str(message)
    return str(item)


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."

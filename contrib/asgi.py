"""A plain ASGI 3 application over an :class:`~engine.Engine`: the HTTP API of CONTRACT section 4.

``create_app(engine, api_keys={"key": "tenant"})`` returns the app. The caller runs the engine
(``async with engine:``) around the server; the app answers the ``lifespan`` scope but starts
nothing. Routes (all under ``Authorization: Bearer <key>`` except ``/healthz`` and
``/openapi.json``):

- ``POST /api/execute``: submit a plan; ``202 {"executionId"}``.
- ``GET /api/execute/{id}/status``: the seed's status body.
- ``GET /api/execute/{id}``: the execution, jobs with status, attempts and timings, and the
  webhook's delivery log (``webhook.deliveries``).
- ``POST /api/execute/{id}/cancel``, ``.../resume`` and ``.../redeliver`` (send an ended
  execution's webhook again, same ``webhook-id``): ``202 {"executionId", "status"}``.
- ``GET /healthz``, ``GET /openapi.json``.
- ``GET /metrics`` (Prometheus text): with an operator key (``operator_keys``), the fleet's and
  this process's numbers; with a tenant's key, only that tenant's executions, labelled
  ``tenant="..."``.
- ``GET /results/...``: a result video, by a signed expiring link and no key
  (:mod:`contrib.results`); every ``video.url`` the API shows is made fetchable there.

Checks run in this order: route (404), method (405 with ``Allow``), the client address's
failed-key budget (429 with ``Retry-After``, :class:`contrib.auth.FailureLimiter`), key (401),
rate (429), content type (415), size (413), the body's arrival time (408), JSON (400), plan
(422), the tenant's bytes of live plans (429, :mod:`contrib.budget`). Every error is a problem
(:mod:`contrib.problems`); a request can cause nothing else, and an internal failure is logged and
answered 500 without a traceback.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

from contrib import metrics as prometheus
from contrib.auth import FailureLimiter, KeyRing, RateLimiter, address_key
from contrib.body import ClientDisconnected, parse_json, read_body
from contrib.budget import DEFAULT_MAX_LIVE_PLAN_BYTES, LivePlans
from contrib.inputs import allowed_dirs, url_problems
from contrib.openapi import IDEMPOTENCY_KEY_PATTERN, openapi_document
from contrib.problems import (
    IDEMPOTENCY_CONFLICT,
    IDEMPOTENCY_IN_PROGRESS,
    INTERNAL,
    INVALID_PLAN,
    INVALID_STATE,
    MALFORMED,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    RATE_LIMITED,
    UNAUTHORIZED,
    UNSUPPORTED_MEDIA_TYPE,
    HttpProblem,
    dump_json,
)
from contrib.results import ResultLinks, link_path
from contrib.types import Headers, Receive, Scope, Send
from contrib.views import execution_to_json
from engine.engine import Engine
from engine.errors import (
    IdempotencyConflict,
    InvalidState,
    PlanError,
    Problem,
    UnknownExecution,
)
from engine.models import Webhook
from engine.requests import webhook_problems

log = logging.getLogger("contrib.asgi")

#: 1 MiB.
DEFAULT_MAX_BODY_BYTES = 1 << 20
#: A burst of 100 requests per key, refilled at 50 a second.
DEFAULT_RATE_LIMIT: tuple[float, float] = (100, 2.0)
#: 20 failed keys per client address, refilled over a minute (one every 3 s after a burst).
DEFAULT_AUTH_FAILURES: tuple[float, float] = (20, 60.0)
#: 1,000 failed keys a minute over all addresses.
DEFAULT_AUTH_FAILURE_CEILING: tuple[float, float] = (1000, 60.0)
#: Seconds a request body may take to arrive.
DEFAULT_BODY_TIMEOUT = 30.0

_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")
#: Status bodies of completed executions kept, by (tenant, id).
_COMPLETED_CACHE = 10_000
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN.strip("^$"))
_JSON_TYPE = b"application/json"
_NO_SUCH_EXECUTION = "no such execution"
_NO_SUCH_BASE = "baseExecutionId names no such execution"
#: The tenant name operator keys map to inside their own key ring (never a tenant's).
_OPERATOR = "operator"

Response = tuple[int, Headers, bytes]
_Handler = Callable[["_Request"], Awaitable[Response]]


class _Request:
    """What a handler needs of one request; headers are read once, lazily."""

    __slots__ = ("execution_id", "headers", "receive", "scope", "tenant")

    def __init__(self, scope: Scope, receive: Receive, execution_id: str | None) -> None:
        self.headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            self.headers.setdefault(name.lower(), value)
        self.receive = receive
        self.scope = scope
        self.execution_id = execution_id
        self.tenant: str | None = None


def _json_response(status: int, value: Any) -> Response:
    body = dump_json(value)
    return (
        status,
        [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        body,
    )


class App:
    """The ASGI application :func:`create_app` builds. See the module docstring."""

    def __init__(
        self,
        engine: Engine,
        *,
        api_keys: Mapping[str, str],
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        rate_limit: tuple[float, float] | None = DEFAULT_RATE_LIMIT,
        title: str = "videoflow engine",
        results: ResultLinks | None = None,
        auth_failures: tuple[float, float] | None = DEFAULT_AUTH_FAILURES,
        auth_failure_ceiling: tuple[float, float] | None = DEFAULT_AUTH_FAILURE_CEILING,
        body_timeout: float | None = DEFAULT_BODY_TIMEOUT,
        max_live_plan_bytes: int | None = DEFAULT_MAX_LIVE_PLAN_BYTES,
        input_dirs: Sequence[str | os.PathLike[str]] = (),
        operator_keys: Iterable[str] = (),
    ) -> None:
        if body_timeout is not None and not (math.isfinite(body_timeout) and body_timeout > 0):
            raise ValueError("body_timeout must be a positive number of seconds, or None")
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
            raise TypeError("max_body_bytes must be an int")
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be positive")
        self.engine = engine
        self.max_body_bytes = max_body_bytes
        self._keys = KeyRing(api_keys)
        #: Keys that see the fleet-wide ``/metrics`` (and nothing else: they name no tenant).
        self._operators = KeyRing({key: _OPERATOR for key in operator_keys})
        #: Where tenants' ``file://`` URLs may point (:mod:`contrib.inputs`); none by default.
        self.input_dirs = allowed_dirs(input_dirs)
        self._limiter = None if rate_limit is None else RateLimiter(*rate_limit)
        self._failures = (
            None
            if auth_failures is None
            else FailureLimiter(*auth_failures, ceiling=auth_failure_ceiling)
        )
        self.body_timeout = body_timeout
        self._live_plans = (
            None if max_live_plan_bytes is None else LivePlans(engine, max_live_plan_bytes)
        )
        self._in_flight: set[tuple[str, str]] = set()
        self._completed: dict[tuple[str, str], dict[str, Any]] = {}
        #: Makes ``video.url`` fetchable and serves ``/results/...``; by default the links of a
        #: random per-process secret, over the provider's ``output_dir`` if it has one.
        self.results = ResultLinks.for_provider(engine.provider) if results is None else results
        #: Responses sent, by status code (shown by ``/metrics``).
        self.responses: Counter[int] = Counter()
        self._openapi = dump_json(openapi_document(title=title))
        # route name -> {method: (handler, needs a key)}
        self._routes: dict[str, dict[str, tuple[_Handler, bool]]] = {
            "execute": {"POST": (self._execute, True)},
            "execution": {"GET": (self._execution, True)},
            "status": {"GET": (self._status, True)},
            "cancel": {"POST": (self._cancel, True)},
            "resume": {"POST": (self._resume, True)},
            "redeliver": {"POST": (self._redeliver, True)},
            "healthz": {"GET": (self._healthz, False)},
            "metrics": {"GET": (self._metrics, False)},
            "openapi": {"GET": (self._openapi_json, False)},
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "websocket":
            await receive()
            await send({"type": "websocket.close", "code": 1003})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        result_path = link_path(scope)
        if result_path is not None:
            self.responses[await self.results.serve(scope, send, result_path)] += 1
            return
        try:
            status, headers, body = await self._dispatch(scope, receive)
        except ClientDisconnected:
            return
        except HttpProblem as problem:
            status, headers, body = problem.render()
        except Exception:
            log.exception("internal error answering %s %s", scope.get("method"), scope.get("path"))
            status, headers, body = HttpProblem(
                INTERNAL, "the server failed to answer this request; the failure is logged"
            ).render()
        self.responses[status] += 1
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _dispatch(self, scope: Scope, receive: Receive) -> Response:
        route, execution_id = _route(scope)
        methods = self._routes.get(route) if route is not None else None
        if methods is None:
            raise HttpProblem(NOT_FOUND, "no such route")
        entry = methods.get(scope["method"])
        if entry is None:
            allow = ", ".join(methods)
            raise HttpProblem(
                METHOD_NOT_ALLOWED,
                f"{scope['method']} is not allowed here; allowed: {allow}",
                headers=[("Allow", allow)],
            )
        handler, needs_key = entry
        request = _Request(scope, receive, execution_id)
        if needs_key:
            self._authenticate(request)
        return await handler(request)

    def _authenticate(self, request: _Request) -> None:
        address = self._check_failure_budget(request)
        found = self._keys.identify(request.headers.get(b"authorization"))
        if found is None:
            if self._failures is not None:
                self._failures.failed(address)
            raise HttpProblem(
                UNAUTHORIZED,
                "send a valid API key as 'Authorization: Bearer <key>'",
                headers=[("WWW-Authenticate", "Bearer")],
            )
        digest, request.tenant = found
        if self._limiter is not None:
            wait = self._limiter.acquire(digest)
            if wait > 0:
                seconds = max(1, math.ceil(wait))
                raise HttpProblem(
                    RATE_LIMITED,
                    f"too many requests with this key; retry in {seconds} s",
                    headers=[("Retry-After", str(seconds))],
                )

    def _check_failure_budget(self, request: _Request) -> str:
        """429 when the client's address spent its budget of failed keys; its address key."""
        failures = self._failures
        if failures is None:
            return ""
        client = request.scope.get("client")
        address = address_key(client[0] if client else None)
        wait = failures.refused(address)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise HttpProblem(
                RATE_LIMITED,
                f"too many failed API keys from this address; retry in {seconds} s",
                headers=[("Retry-After", str(seconds))],
            )
        return address

    # --- handlers ---------------------------------------------------------------------------------

    async def _execute(self, request: _Request) -> Response:
        headers = request.headers
        _check_json_content_type(headers.get(b"content-type"))
        key = _idempotency_key(headers.get(b"idempotency-key"))
        body = await read_body(
            request.receive,
            headers.get(b"content-length"),
            self.max_body_bytes,
            time_limit=self.body_timeout,
        )
        obj = parse_json(body)
        plan, webhook = _plan_and_webhook(obj)
        refused = url_problems(plan, self.input_dirs)
        if refused:
            raise _plan_problem(refused)
        tenant = request.tenant
        assert tenant is not None
        live_plans = self._live_plans
        if live_plans is None:
            return (await self._submit(tenant, key, plan, webhook))[0]
        await live_plans.reserve(tenant, len(body))
        execution_id = None
        try:
            response, execution_id = await self._submit(tenant, key, plan, webhook)
        finally:
            live_plans.admitted(tenant, len(body), execution_id)
        return response

    async def _submit(
        self,
        tenant: str,
        key: str | None,
        plan: Mapping[str, Any],
        webhook: Webhook | None,
    ) -> tuple[Response, str]:
        slot = None if key is None else (tenant, key)
        if slot is not None:
            if slot in self._in_flight:
                raise HttpProblem(
                    IDEMPOTENCY_IN_PROGRESS,
                    "a request with this Idempotency-Key is still being created; retry shortly",
                    headers=[("Retry-After", "1")],
                )
            self._in_flight.add(slot)
        try:
            execution_id = await self.engine.submit(
                plan, webhook=webhook, idempotency_key=key, tenant=tenant
            )
        except UnknownExecution:
            raise HttpProblem(NOT_FOUND, _NO_SUCH_BASE) from None
        except PlanError as exc:
            raise _plan_problem(exc.problems) from None
        except IdempotencyConflict:
            raise HttpProblem(
                IDEMPOTENCY_CONFLICT,
                "this Idempotency-Key was already used with a different request",
            ) from None
        except InvalidState as exc:
            raise HttpProblem(INVALID_STATE, str(exc)) from None
        finally:
            if slot is not None:
                self._in_flight.discard(slot)
        return _json_response(202, {"executionId": execution_id}), execution_id

    async def _status(self, request: _Request) -> Response:
        execution_id = _known_id(request.execution_id)
        slot = (request.tenant or "", execution_id)
        body = self._completed.get(slot)
        if body is None:
            try:
                report = await self.engine.status(execution_id, tenant=request.tenant)
            except UnknownExecution:
                raise HttpProblem(NOT_FOUND, _NO_SUCH_EXECUTION) from None
            body = report.to_json()
            if report.status == "completed":
                # Final: nothing changes a completed execution (only failed or cancelled ones
                # can be resumed), so its status body is kept for the clients that poll it again.
                self._completed[slot] = body
                if len(self._completed) > _COMPLETED_CACHE:
                    del self._completed[next(iter(self._completed))]
        base_url = self.results.base_url_of(request.scope, request.headers)
        return _json_response(
            200, await self.results.status_body(body, execution_id, base_url=base_url)
        )

    async def _execution(self, request: _Request) -> Response:
        execution_id = _known_id(request.execution_id)
        try:
            execution = await self.engine.get(execution_id, tenant=request.tenant)
        except UnknownExecution:
            raise HttpProblem(NOT_FOUND, _NO_SUCH_EXECUTION) from None
        deliveries = None
        if execution.webhook is not None:
            try:
                deliveries = await self.engine.deliveries(execution_id, tenant=request.tenant)
            except UnknownExecution:
                raise HttpProblem(NOT_FOUND, _NO_SUCH_EXECUTION) from None
        body = execution_to_json(execution, deliveries=deliveries)
        base_url = self.results.base_url_of(request.scope, request.headers)
        return _json_response(200, await self.results.execution_body(body, base_url=base_url))

    async def _cancel(self, request: _Request) -> Response:
        return await self._act(request, self.engine.cancel)

    async def _resume(self, request: _Request) -> Response:
        return await self._act(request, self.engine.resume)

    async def _redeliver(self, request: _Request) -> Response:
        return await self._act(request, self.engine.redeliver)

    async def _act(self, request: _Request, action: Callable[..., Awaitable[None]]) -> Response:
        """Run an engine action on one execution: ``202 {"executionId", "status"}``."""
        execution_id = _known_id(request.execution_id)
        try:
            await action(execution_id, tenant=request.tenant)
            execution = await self.engine.get(execution_id, tenant=request.tenant)
        except UnknownExecution:
            raise HttpProblem(NOT_FOUND, _NO_SUCH_EXECUTION) from None
        except InvalidState as exc:
            raise HttpProblem(INVALID_STATE, str(exc)) from None
        return _json_response(202, {"executionId": execution_id, "status": execution.status})

    async def _healthz(self, request: _Request) -> Response:
        return _json_response(200, {"status": "ok"})

    async def _metrics(self, request: _Request) -> Response:
        """An operator key: every number of the fleet and this process. A tenant's key: that
        tenant's executions only, labelled ``tenant="..."`` (``metrics.render_tenant``)."""
        # Over its failure budget an address is refused before any key is looked at, so a
        # guessed operator key is not told apart from a wrong one either.
        self._check_failure_budget(request)
        operator = self._operators.identify(request.headers.get(b"authorization"))
        if operator is not None:
            text = prometheus.render(await self.engine.metrics(), self.responses)
        else:
            self._authenticate(request)
            assert request.tenant is not None
            tenant = request.tenant
            text = prometheus.render_tenant(await self.engine.metrics(tenant=tenant), tenant)
        body = text.encode()
        return (
            200,
            [
                (b"content-type", prometheus.MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
            body,
        )

    async def _openapi_json(self, request: _Request) -> Response:
        body = self._openapi
        return (
            200,
            [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            body,
        )


def create_app(
    engine: Engine,
    *,
    api_keys: Mapping[str, str],
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    rate_limit: tuple[float, float] | None = DEFAULT_RATE_LIMIT,
    title: str = "videoflow engine",
    results: ResultLinks | None = None,
    auth_failures: tuple[float, float] | None = DEFAULT_AUTH_FAILURES,
    auth_failure_ceiling: tuple[float, float] | None = DEFAULT_AUTH_FAILURE_CEILING,
    body_timeout: float | None = DEFAULT_BODY_TIMEOUT,
    max_live_plan_bytes: int | None = DEFAULT_MAX_LIVE_PLAN_BYTES,
    input_dirs: Sequence[str | os.PathLike[str]] = (),
    operator_keys: Iterable[str] = (),
) -> App:
    """The HTTP API over ``engine`` (which the caller runs, ``async with engine:``).

    ``api_keys`` maps each API key to its tenant; keys are kept only as SHA-256 digests.
    ``max_body_bytes`` bounds a ``POST /api/execute`` body (413 over it). ``rate_limit`` is
    ``(requests, per_seconds)`` per key, a token bucket (429 with ``Retry-After`` over it), or
    ``None`` for no limit. ``results`` signs and serves the links every ``video.url`` is shown
    as (:class:`contrib.results.ResultLinks`; default: a random secret, the provider's
    ``output_dir``, 24 h links).

    ``auth_failures`` is ``(failures, per_seconds)`` per client address: requests answered 401
    spend its budget, and an address that spent it gets 429 with ``Retry-After`` for every keyed
    request until the budget refills, whatever key it sends; ``auth_failure_ceiling`` is the same
    over all addresses, and once spent it refuses the addresses that failed recently, never the
    others (:class:`contrib.auth.FailureLimiter`; ``None``: no limit). ``body_timeout``: seconds
    a request body may take to arrive (408 after). ``max_live_plan_bytes``: the bytes of request
    bodies of one tenant's executions live on this server at once (429 over it, naming the
    limit and the bytes live; :mod:`contrib.budget`); ``None``: no limit.
    ``input_dirs``: the local directories a plan's ``file://`` URLs
    may point into (none by default: tenants send ``http(s)`` URLs; :mod:`contrib.inputs`).
    ``operator_keys``: the keys that read the fleet-wide ``/metrics``; a tenant's key reads only
    its own numbers there.
    """
    return App(
        engine,
        api_keys=api_keys,
        max_body_bytes=max_body_bytes,
        rate_limit=rate_limit,
        title=title,
        results=results,
        auth_failures=auth_failures,
        auth_failure_ceiling=auth_failure_ceiling,
        body_timeout=body_timeout,
        max_live_plan_bytes=max_live_plan_bytes,
        input_dirs=input_dirs,
        operator_keys=operator_keys,
    )


# --- helpers -------------------------------------------------------------------------------------


async def _lifespan(receive: Receive, send: Send) -> None:
    """Nothing to start or stop: the engine belongs to the caller."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


_STATIC = {"/healthz": "healthz", "/metrics": "metrics", "/openapi.json": "openapi"}
_ACTIONS = {"status", "cancel", "resume", "redeliver"}


def _route(scope: Scope) -> tuple[str | None, str | None]:
    """``(route name, execution id)``; the id is ``""`` when it cannot be a valid segment.

    Routing reads the raw path, so an id holding ``%2F`` stays one segment.
    """
    raw = scope.get("raw_path")
    path: bytes = raw if raw else scope["path"].encode("utf-8", "surrogateescape")
    root = scope.get("root_path", "")
    if root and path.startswith(root.encode()):
        path = path[len(root.encode()) :]
    static = _STATIC.get(path.decode("latin-1"))
    if static is not None:
        return static, None
    if not path.startswith(b"/api/execute"):
        return None, None
    parts = path.split(b"/")  # ["", "api", "execute", ...]
    if len(parts) == 3:
        return ("execute", None) if parts[2] == b"execute" else (None, None)
    if parts[2] != b"execute" or len(parts) > 5:
        return None, None
    execution_id = _segment(parts[3])
    if len(parts) == 4:
        return "execution", execution_id
    action = parts[4].decode("latin-1")
    return (action, execution_id) if action in _ACTIONS else (None, None)


def _segment(raw: bytes) -> str:
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return ""


def _known_id(execution_id: str | None) -> str:
    """An id worth looking up; anything that cannot be one is answered like a missing one."""
    if execution_id is None or not _ID.fullmatch(execution_id):
        raise HttpProblem(NOT_FOUND, _NO_SUCH_EXECUTION)
    return execution_id


def _check_json_content_type(value: bytes | None) -> None:
    if value is None:
        raise HttpProblem(
            UNSUPPORTED_MEDIA_TYPE, "send the plan as 'Content-Type: application/json'"
        )
    media_type, _, params = value.partition(b";")
    if media_type.strip().lower() != _JSON_TYPE:
        raise HttpProblem(
            UNSUPPORTED_MEDIA_TYPE,
            f"expected 'application/json', got {value.decode('latin-1')[:100]!r}",
        )
    for param in params.split(b";"):
        name, _, charset = param.partition(b"=")
        if name.strip().lower() == b"charset" and charset.strip().strip(b'"').lower() not in (
            b"utf-8",
            b"utf8",
        ):
            raise HttpProblem(UNSUPPORTED_MEDIA_TYPE, "the body must be UTF-8 JSON")


def _idempotency_key(value: bytes | None) -> str | None:
    if value is None:
        return None
    key = value.decode("latin-1")
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise HttpProblem(MALFORMED, "Idempotency-Key must be 1 to 255 visible ASCII characters")
    return key


def _plan_problem(problems: tuple[Problem, ...] | list[Problem]) -> HttpProblem:
    count = len(problems)
    first = str(problems[0]) if problems else "invalid"
    more = f" (and {count - 1} more)" if count > 1 else ""
    return HttpProblem(INVALID_PLAN, f"the plan is invalid: {first}{more}", errors=problems)


_MISSING: Any = object()


def _plan_and_webhook(obj: Any) -> tuple[Mapping[str, Any], Webhook | None]:
    """Split the webhook off the request body and check it; the engine checks the plan.

    When the webhook is wrong, the plan is checked here too, so that one answer lists every
    problem. The seed SDK's options given as body fields (``webhookUrl``, ``webhookSecret``) are
    refused with a hint to the ``webhook`` object: the body has one way to say it.
    """
    if not isinstance(obj, dict):
        raise _plan_problem([Problem(None, "plan", "the request body must be a JSON object")])
    seed_fields = [key for key in obj if key in _SEED_WEBHOOK_FIELDS]
    problems = [
        Problem(
            None,
            key,
            'unknown field; give the webhook as "webhook": {"url": ..., "secret": ...} '
            f"({_SEED_WEBHOOK_FIELDS[key]} is an option of the SDK's execute(), not a field)",
        )
        for key in seed_fields
    ]
    for key in seed_fields:  # told here, not again as unknown plan fields
        del obj[key]
    raw = obj.pop("webhook", _MISSING)
    webhook = None
    if raw is not _MISSING:
        webhook, more = webhook_problems(raw)
        problems.extend(more)
    if problems:
        from engine.plan import ExecutionPlan

        try:
            ExecutionPlan.from_json(obj)
        except PlanError as exc:
            problems.extend(exc.problems)
        raise _plan_problem(problems)
    return obj, webhook


#: Body fields a seed-style client may send for the webhook, and the SDK option each one is.
_SEED_WEBHOOK_FIELDS = {
    "webhookUrl": "webhook_url",
    "webhookSecret": "webhook_secret",
    "webhook_url": "webhook_url",
    "webhook_secret": "webhook_secret",
}


__all__ = [
    "DEFAULT_AUTH_FAILURES",
    "DEFAULT_AUTH_FAILURE_CEILING",
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_RATE_LIMIT",
    "App",
    "create_app",
]

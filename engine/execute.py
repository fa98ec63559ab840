"""``Pipeline.execute``: submit a pipeline to an engine, here or remote, and return its handle."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

from engine import wiring
from engine.engine import Engine
from engine.errors import EngineError
from engine.handle import PipelineExecution, ProgressCallback, RemoteEngine
from engine.models import TERMINAL, Webhook
from engine.plan import ExecutionPlan

#: Where ``execute()`` with no target finds its server, as the ``videoflow`` command does.
API_URL_VARIABLE = "VIDEOFLOW_API_URL"
API_KEY_VARIABLE = "VIDEOFLOW_API_KEY"


class Submittable(Protocol):
    """What :func:`execute_pipeline` needs of a pipeline (``engine.dsl.Pipeline``)."""

    @property
    def progress_callbacks(self) -> Sequence[ProgressCallback]: ...

    def plan(self, *, base_execution_id: str | None = None) -> ExecutionPlan: ...


async def execute_pipeline(
    pipeline: Submittable,
    target: Any = None,
    *,
    base_execution_id: str | None = None,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    api_url: str | None = None,
    api_key: str | None = None,
    idempotency_key: str | None = None,
) -> PipelineExecution:
    """Submit ``pipeline`` to ``target`` and return its handle.

    ``target`` is an :class:`~engine.Engine` (embedded) or a remote engine such as
    ``adapters.http.EngineClient``; with no target, ``api_url`` and ``api_key`` build an
    ``EngineClient``, and with neither, ``VIDEOFLOW_API_URL`` and ``VIDEOFLOW_API_KEY`` do when
    both are set (the seed's ``productDemo.execute()``). A remote handle polls the status
    endpoint once callbacks are registered (``pipeline.on_progress`` or
    ``handle.on_complete``/``on_error``); with none, it returns at once and never polls by itself
    (a webhook tells the receiver instead).
    """
    if webhook_secret is not None and webhook_url is None:
        raise EngineError("webhook_secret was given without webhook_url")
    if target is None:
        api_url, api_key = _from_environment(api_url, api_key)
        target = wiring.remote_engine(api_url, api_key)
    elif api_url is not None or api_key is not None:
        raise EngineError("give execute() either a target or api_url= and api_key=, not both")
    if isinstance(target, RemoteEngine) and not isinstance(target, Engine):
        return await _execute_remote(
            pipeline,
            target,
            base_execution_id=base_execution_id,
            webhook=Webhook(webhook_url, webhook_secret) if webhook_url is not None else None,
            idempotency_key=idempotency_key,
        )
    if not isinstance(target, Engine):
        raise TypeError(
            f"execute() target must be an Engine or an EngineClient, not {type(target).__name__}"
        )
    plan = pipeline.plan(base_execution_id=base_execution_id)
    webhook = Webhook(webhook_url, webhook_secret) if webhook_url is not None else None
    execution_id = await target.submit(
        plan,
        base_execution_id=base_execution_id,
        webhook=webhook,
        idempotency_key=idempotency_key,
    )
    handle = PipelineExecution(execution_id, target)
    for callback in pipeline.progress_callbacks:
        handle.on_progress(callback)
    snapshot = await target.subscribe(execution_id, handle)
    if snapshot.status in TERMINAL:
        handle.finish(snapshot.status, snapshot.result, snapshot.error)
    return handle


def _from_environment(api_url: str | None, api_key: str | None) -> tuple[str, str]:
    """``api_url``/``api_key`` as given, or else both from the environment; an
    :class:`EngineError` naming both ways when neither is complete."""
    if api_url is not None:
        if api_key is None:
            raise EngineError("api_url= needs api_key= (the server's API key)")
        return api_url, api_key
    if api_key is not None:
        raise EngineError("api_key= needs api_url= (the server's base URL)")
    env_url = os.environ.get(API_URL_VARIABLE) or None
    env_key = os.environ.get(API_KEY_VARIABLE) or None
    if env_url is not None and env_key is not None:
        return env_url, env_key
    missing = " and ".join(
        name
        for name, value in ((API_URL_VARIABLE, env_url), (API_KEY_VARIABLE, env_key))
        if value is None
    )
    raise EngineError(
        "execute() needs a target: pass an Engine or an adapters.http.EngineClient, or run "
        f"against a server by setting both {API_URL_VARIABLE} and {API_KEY_VARIABLE} "
        f"({missing} not set) or passing api_url= and api_key="
    )


async def _execute_remote(
    pipeline: Submittable,
    client: RemoteEngine,
    *,
    base_execution_id: str | None,
    webhook: Webhook | None,
    idempotency_key: str | None,
) -> PipelineExecution:
    plan = pipeline.plan(base_execution_id=base_execution_id)
    execution_id = await client.submit(
        plan,
        base_execution_id=base_execution_id,
        webhook=webhook,
        idempotency_key=idempotency_key,
    )
    handle = PipelineExecution(execution_id, client, poller=client)
    for callback in pipeline.progress_callbacks:
        handle.on_progress(callback)
    return handle

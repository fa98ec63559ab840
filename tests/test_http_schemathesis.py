"""Schemathesis against the live server: every route of ``/openapi.json``, every check.

Locally a few cases per operation; with ``HYPOTHESIS_PROFILE=ci`` at least 1,000 in all.
Positive cases may be answered 422: a schema cannot say that ``dependsOn`` names jobs of the plan
or that the plan ends in one final job, so a schema-valid plan can still be an invalid one.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from anyio.from_thread import start_blocking_portal
from http_support import live_api, loopback_notifier, webhook_receiver
from hypothesis import strategies as st

from contrib.openapi import openapi_document

CI = os.environ.get("HYPOTHESIS_PROFILE") == "ci"
#: Cases per operation; 6 operations have rich inputs, 3 (healthz, metrics, openapi) few.
MAX_EXAMPLES = 260 if CI else 25
MIN_CASES = 1000 if CI else 100

calls: Counter[str] = Counter()


#: Executions that exist (alpha's completed, failed and cancelled ones, and one of beta's), so
#: that the routes taking an id are also tried on real ids, not only on ids that are missing.
real_ids: list[str] = []
#: Alpha's completed executions with a webhook and a delivery log: one delivered, one given up
#: after three 500s, one refused (a private address, no attempt to connect).
hooked_ids: list[str] = []
PLAN = {"jobs": [{"id": "job1", "type": "generate", "params": {"prompt": "x"}}]}


def _submit(client: httpx.Client, key: str, webhook: str | None = None) -> str:
    body: dict[str, Any] = dict(PLAN)
    if webhook is not None:
        body["webhook"] = {"url": webhook, "secret": "never-shown-to-anyone"}
    response = client.post("/api/execute", json=body, headers={"Authorization": f"Bearer {key}"})
    response.raise_for_status()
    execution_id: str = response.json()["executionId"]
    return execution_id


def _delivered(client: httpx.Client, execution_id: str, outcome: str) -> None:
    for _ in range(500):
        execution = client.get(
            f"/api/execute/{execution_id}", headers={"Authorization": "Bearer key-alpha"}
        ).json()
        deliveries = execution["webhook"]["deliveries"]
        if deliveries and deliveries[-1]["outcome"] == outcome:
            return
        time.sleep(0.01)
    raise AssertionError(f"{execution_id}'s webhook was not {outcome}")


def _ended(client: httpx.Client, execution_id: str) -> None:
    for _ in range(500):
        status = client.get(
            f"/api/execute/{execution_id}/status", headers={"Authorization": "Bearer key-alpha"}
        ).json()["status"]
        if status in ("completed", "failed", "cancelled"):
            return
        time.sleep(0.01)
    raise AssertionError(f"{execution_id} did not end")


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app under uvicorn in a thread of its own (Schemathesis calls are blocking)."""
    db = tmp_path_factory.mktemp("schemathesis") / "engine.db"
    with (
        start_blocking_portal(backend="asyncio") as portal,
        portal.wrap_async_context_manager(webhook_receiver([200])) as accepting,
        portal.wrap_async_context_manager(webhook_receiver([500])) as refusing,
        portal.wrap_async_context_manager(
            live_api(
                db, rate_limit=None, auth_failures=None, http_notifier=loopback_notifier((0, 0, 0))
            )
        ) as live,
        httpx.Client(base_url=live.url) as client,
    ):
        completed = _submit(client, "key-alpha")
        _ended(client, completed)
        live.provider.fail_next("job1", retryable=False)
        failed = _submit(client, "key-alpha")
        _ended(client, failed)
        cancelled = _submit(client, "key-alpha")
        client.post(
            f"/api/execute/{cancelled}/cancel", headers={"Authorization": "Bearer key-alpha"}
        )
        _ended(client, cancelled)
        real_ids[:] = [completed, failed, cancelled, _submit(client, "key-beta")]
        hooked: list[str] = []
        for url, outcome in (
            (accepting.url, "delivered"),
            (refusing.url, "failed"),
            ("http://10.255.255.1/hook", "failed"),
        ):
            hooked.append(_submit(client, "key-alpha", webhook=url))
            _ended(client, hooked[-1])
            _delivered(client, hooked[-1], outcome)
        hooked_ids[:] = hooked
        yield live.url


CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES},
        "auth": {"openapi": {"bearerAuth": {"bearer": "key-alpha"}}},
        "checks": {
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "404", "409", "422", "429"]
            }
        },
        "phases": {"stateful": {"enabled": False}},
        "request-timeout": 10,
    }
)
# The document the app serves (a test below checks that it is this one); the server's address is
# known only once the fixture has started it, so each call names it.
schema = schemathesis.openapi.from_dict(openapi_document(), config=CONFIG)


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
    """Half the time, swap a generated id for a real one."""
    if not path_parameters or "id" not in path_parameters or not real_ids:
        return st.just(path_parameters)
    ids = real_ids + hooked_ids
    return st.one_of(
        st.just(path_parameters),
        st.sampled_from(ids).map(lambda real: {**path_parameters, "id": real}),
    )


@schema.parametrize()
def test_the_api_conforms_to_its_openapi_document(case: Any, live_url: str) -> None:
    response = case.call_and_validate(base_url=live_url)
    calls[f"{case.method} {case.path} {response.status_code}"] += 1


def test_the_app_serves_this_document(live_url: str) -> None:
    served = httpx.get(live_url + "/openapi.json")
    assert served.json() == openapi_document()


def test_enough_cases_ran() -> None:
    if not calls:
        pytest.skip("the Schemathesis test did not run in this session")
    assert sum(calls.values()) >= MIN_CASES, calls
    if CI:  # enough cases that each route was also answered on a real execution
        for route in (
            "POST /api/execute 202",
            "GET /api/execute/{id}/status 200",
            "GET /api/execute/{id} 200",
            "POST /api/execute/{id}/cancel 202",
            "POST /api/execute/{id}/resume 409",
            "POST /api/execute/{id}/redeliver 409",
            "GET /metrics 200",
        ):
            assert calls[route] > 0, (route, calls)

"""The HTTP API (contrib.asgi) against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import anyio
import attrs
import httpx
import pytest
from http_support import (
    ALPHA,
    BETA,
    OPERATOR,
    OPERATOR_KEYS,
    live_api,
    loopback_notifier,
    webhook_receiver,
)

from adapters.memory import FakeVideoProvider, MemoryQueue, MemoryStorage, RecordingNotifier
from contrib.views import execution_to_json
from engine import Engine, Execution, JobRequest, Storage
from engine.models import DeliveryAttempt, Webhook
from engine.webhooks import verify_webhook

pytestmark = pytest.mark.anyio

PLAN: dict[str, Any] = {
    "jobs": [
        {"id": "job1", "type": "generate", "params": {"prompt": "A beautiful landscape"}},
        {
            "id": "job2",
            "type": "reframe",
            "params": {"aspectRatio": "9:16"},
            "dependsOn": ["job1"],
            "output": "$job2",
        },
    ]
}
JSON = {"Content-Type": "application/json"}
MISSING_ID = "exec_00000000000000000000"


def assert_problem(
    response: httpx.Response, status: int, kind: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert isinstance(body, dict)
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["type"].startswith("urn:videoflow:problem:")
    if kind is not None:
        assert body["type"] == "urn:videoflow:problem:" + kind
    assert "Traceback" not in response.text
    return body


async def submit(client: httpx.AsyncClient, body: Any = PLAN, **headers: str) -> str:
    response = await client.post("/api/execute", json=body, headers={**ALPHA, **headers})
    assert response.status_code == 202, response.text
    execution_id = response.json()["executionId"]
    assert isinstance(execution_id, str) and execution_id.startswith("exec_")
    return execution_id


async def wait_status(
    client: httpx.AsyncClient,
    execution_id: str,
    statuses: Sequence[str],
    headers: Mapping[str, str] = ALPHA,
) -> dict[str, Any]:
    with anyio.fail_after(10):
        while True:
            response = await client.get(f"/api/execute/{execution_id}/status", headers=headers)
            body = response.json()
            if body["status"] in statuses:
                return cast(dict[str, Any], body)
            await anyio.sleep(0.01)


async def redeliver_when_idle(client: httpx.AsyncClient, execution_id: str) -> httpx.Response:
    """POST redeliver, again while the previous delivery of the event is still finishing (the
    engine refuses two deliveries of one event at once, with 409)."""
    response = await client.post(f"/api/execute/{execution_id}/redeliver", headers=ALPHA)
    for _ in range(200):
        if response.status_code != 409 or "being delivered" not in response.text:
            break
        await anyio.sleep(0.01)
        response = await client.post(f"/api/execute/{execution_id}/redeliver", headers=ALPHA)
    return response


async def test_health_openapi_and_the_happy_path(tmp_path: Path) -> None:
    async with live_api(tmp_path / "e.db") as live, httpx.AsyncClient(base_url=live.url) as client:
        health = await client.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        document = (await client.get("/openapi.json")).json()
        assert document["openapi"] == "3.1.0"
        assert set(document["paths"]) == {
            "/api/execute",
            "/api/execute/{id}/status",
            "/api/execute/{id}",
            "/api/execute/{id}/cancel",
            "/api/execute/{id}/resume",
            "/api/execute/{id}/redeliver",
            "/healthz",
            "/metrics",
            "/openapi.json",
        }
        execution_id = await submit(client)
        status = await wait_status(client, execution_id, ["completed"])
        assert status == {
            "status": "completed",
            "progress": 100.0,
            "totalJobs": 2,
            "completedJobs": 2,
            "currentJob": None,
            "result": status["result"],
        }
        assert status["result"]["aspectRatio"] == "9:16"


async def test_execution_shows_jobs_and_never_the_webhook_secret(tmp_path: Path) -> None:
    secret = "s3cr3t-never-shown"
    body = {**PLAN, "webhook": {"url": "https://example.com/hook", "secret": secret}}
    async with live_api(tmp_path / "e.db") as live, httpx.AsyncClient(base_url=live.url) as client:
        execution_id = await submit(client, body)
        await wait_status(client, execution_id, ["completed"])
        response = await client.get(f"/api/execute/{execution_id}", headers=ALPHA)
        assert response.status_code == 200
        assert secret not in response.text
        execution = response.json()
        # The RecordingNotifier makes no HTTP attempt: the log is there, and empty.
        assert execution["webhook"] == {"url": "https://example.com/hook", "deliveries": []}
        assert execution["id"] == execution_id
        assert execution["status"] == "completed"
        assert execution["baseExecutionId"] is None
        assert execution["error"] is None
        for name in ("createdAt", "startedAt", "completedAt"):
            assert datetime.fromisoformat(execution[name].replace("Z", "+00:00"))
        assert [job["id"] for job in execution["jobs"]] == ["job1", "job2"]
        job2 = execution["jobs"][1]
        assert set(job2) == {
            "id",
            "type",
            "params",
            "dependsOn",
            "status",
            "attempts",
            "startedAt",
            "finishedAt",
            "result",
            "error",
        }
        assert job2["dependsOn"] == ["job1"] and job2["attempts"] == 1
        assert job2["status"] == "completed" and job2["result"]["aspectRatio"] == "9:16"
        assert job2["startedAt"] <= job2["finishedAt"]
        assert live.notifier.deliveries[0].webhook is not None


# --- tenants -------------------------------------------------------------------------------------


async def test_another_tenants_execution_is_answered_like_a_missing_one(tmp_path: Path) -> None:
    async with live_api(tmp_path / "e.db") as live, httpx.AsyncClient(base_url=live.url) as client:
        theirs = await submit(client)
        await wait_status(client, theirs, ["completed"])
        await client.post("/api/execute/" + theirs + "/cancel", headers=ALPHA)
        for method, suffix in (
            ("GET", "/status"),
            ("GET", ""),
            ("POST", "/cancel"),
            ("POST", "/resume"),
            ("POST", "/redeliver"),
        ):
            stranger = await client.request(method, f"/api/execute/{theirs}{suffix}", headers=BETA)
            missing = await client.request(
                method, f"/api/execute/{MISSING_ID}{suffix}", headers=BETA
            )
            assert_problem(stranger, 404, "not-found")
            assert stranger.content == missing.content
            assert _without_date(stranger.headers) == _without_date(missing.headers)
        as_base = await client.post(
            "/api/execute",
            json={
                "jobs": [{"id": "a", "type": "lipSync", "params": {"audioUrl": "https://x/a"}}],
                "baseExecutionId": theirs,
            },
            headers=BETA,
        )
        missing_base = await client.post(
            "/api/execute",
            json={
                "jobs": [{"id": "a", "type": "lipSync", "params": {"audioUrl": "https://x/a"}}],
                "baseExecutionId": MISSING_ID,
            },
            headers=BETA,
        )
        assert_problem(as_base, 404, "not-found")
        assert as_base.content == missing_base.content
        # The owner still sees it, and its status did not change.
        mine = await client.get(f"/api/execute/{theirs}/status", headers=ALPHA)
        assert mine.status_code == 200 and mine.json()["status"] == "completed"


def _without_date(headers: httpx.Headers) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name != "date"}


# --- authentication ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer  key-alpha-x",
        "Bearer nope",
        "Basic a2V5LWFscGhhOg==",
        "key-alpha",
        "Bearer key-alpha2",
        "Bearer key-alph",
    ],
)
async def test_missing_or_unknown_keys_are_401(tmp_path: Path, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with live_api(None) as live, httpx.AsyncClient(base_url=live.url) as client:
        for method, path in (
            ("POST", "/api/execute"),
            ("GET", f"/api/execute/{MISSING_ID}/status"),
            ("GET", f"/api/execute/{MISSING_ID}"),
            ("POST", f"/api/execute/{MISSING_ID}/cancel"),
            ("POST", f"/api/execute/{MISSING_ID}/resume"),
            ("POST", f"/api/execute/{MISSING_ID}/redeliver"),
            ("GET", "/metrics"),
        ):
            response = await client.request(method, path, headers=headers, json=PLAN)
            assert_problem(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"


async def test_the_scheme_is_case_insensitive(tmp_path: Path) -> None:
    async with live_api(None) as live, httpx.AsyncClient(base_url=live.url) as client:
        response = await client.get("/metrics", headers={"Authorization": "bearer key-alpha"})
        assert response.status_code == 200


# --- malformed requests -------------------------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_IN_PLAN = (
    b'{"jobs": [{"id": "a", "type": "generate", "params": {"prompt": '
    + b"[" * 100_000
    + b"]" * 100_000
    + b"}}]}"
)


def _plan_with(**params: Any) -> bytes:
    job = {"id": "job1", "type": "generate", "params": {"prompt": "x", **params}}
    return json.dumps({"jobs": [job]}).encode()


CORPUS: list[tuple[str, bytes, Mapping[str, str], int, str]] = [
    ("truncated", b'{"jobs": [{"id": "job1", "type": "gen', JSON, 400, "malformed-request"),
    ("truncated-object", b"{", JSON, 400, "malformed-request"),
    ("empty", b"", JSON, 400, "malformed-request"),
    ("whitespace", b"   ", JSON, 400, "malformed-request"),
    ("trailing-garbage", json.dumps(PLAN).encode() + b"x", JSON, 400, "malformed-request"),
    (
        "nan",
        b'{"jobs": [{"id": "a", "type": "generate", "params": {"prompt": "x", "duration": NaN}}]}',
        JSON,
        400,
        "malformed-request",
    ),
    ("infinity", b'{"jobs": [], "x": Infinity}', JSON, 400, "malformed-request"),
    ("not-utf8", b'{"jobs": "\xff\xfe"}', JSON, 400, "malformed-request"),
    ("latin1", '{"jobs": [{"id": "é"}]}'.encode("latin-1"), JSON, 400, "malformed-request"),
    ("utf16", json.dumps(PLAN).encode("utf-16"), JSON, 400, "malformed-request"),
    ("utf8-bom", b"\xef\xbb\xbf" + json.dumps(PLAN).encode(), JSON, 400, "malformed-request"),
    ("lone-surrogate", _plan_with().replace(b'"x"', b'"\\ud800"'), JSON, 400, "malformed-request"),
    ("deep-nesting", DEEP, JSON, 400, "malformed-request"),
    ("deep-nesting-in-plan", DEEP_IN_PLAN, JSON, 400, "malformed-request"),
    ("int-too-long", b'{"jobs": ' + b"9" * 5000 + b"}", JSON, 400, "malformed-request"),
    (
        "huge-float",
        _plan_with().replace(b'"x"}', b'"x", "duration": 1e400}'),
        JSON,
        422,
        "invalid-plan",
    ),
    ("huge-int", _plan_with(duration=10**400), JSON, 422, "invalid-plan"),
    ("negative-duration", _plan_with(duration=-1), JSON, 422, "invalid-plan"),
    ("bool-duration", _plan_with(duration=True), JSON, 422, "invalid-plan"),
    ("top-level-array", b"[]", JSON, 422, "invalid-plan"),
    ("top-level-string", b'"jobs"', JSON, 422, "invalid-plan"),
    ("top-level-null", b"null", JSON, 422, "invalid-plan"),
    ("top-level-number", b"5", JSON, 422, "invalid-plan"),
    ("no-jobs", b"{}", JSON, 422, "invalid-plan"),
    ("jobs-not-list", b'{"jobs": "x"}', JSON, 422, "invalid-plan"),
    ("job-not-object", b'{"jobs": [1, null, "x"]}', JSON, 422, "invalid-plan"),
    ("empty-jobs", b'{"jobs": []}', JSON, 422, "invalid-plan"),
    ("unknown-top-field", json.dumps({**PLAN, "extra": 1}).encode(), JSON, 422, "invalid-plan"),
    (
        "unknown-job-field",
        b'{"jobs": [{"id": "a", "type": "generate", "params": {"prompt": "x"}, "colour": 1}]}',
        JSON,
        422,
        "invalid-plan",
    ),
    ("unknown-param", _plan_with(colour="red"), JSON, 422, "invalid-plan"),
    (
        "wrong-types",
        b'{"jobs": [{"id": 5, "type": [], "params": "x", "dependsOn": {}}]}',
        JSON,
        422,
        "invalid-plan",
    ),
    (
        "null-base",
        json.dumps({**PLAN, "baseExecutionId": None}).encode(),
        JSON,
        422,
        "invalid-plan",
    ),
    (
        "cycle",
        b'{"jobs": [{"id": "a", "type": "reframe", "params": {"aspectRatio": "1:1"}, '
        b'"dependsOn": ["b"]}, {"id": "b", "type": "reframe", "params": {"aspectRatio": "1:1"}, '
        b'"dependsOn": ["a"]}]}',
        JSON,
        422,
        "invalid-plan",
    ),
    (
        "webhook-not-object",
        json.dumps({**PLAN, "webhook": "https://x.com"}).encode(),
        JSON,
        422,
        "invalid-plan",
    ),
    ("webhook-null", json.dumps({**PLAN, "webhook": None}).encode(), JSON, 422, "invalid-plan"),
    (
        "webhook-ftp",
        json.dumps({**PLAN, "webhook": {"url": "ftp://x.com/a"}}).encode(),
        JSON,
        422,
        "invalid-plan",
    ),
    (
        "webhook-bad-port",
        json.dumps({**PLAN, "webhook": {"url": "http://x.com:99999/"}}).encode(),
        JSON,
        422,
        "invalid-plan",
    ),
    (
        "webhook-bad-ipv6",
        json.dumps({**PLAN, "webhook": {"url": "http://[::1/"}}).encode(),
        JSON,
        422,
        "invalid-plan",
    ),
    (
        "webhook-no-host",
        json.dumps({**PLAN, "webhook": {"url": "http:///path"}}).encode(),
        JSON,
        422,
        "invalid-plan",
    ),
    (
        "webhook-space",
        json.dumps({**PLAN, "webhook": {"url": " http://x.com"}}).encode(),
        JSON,
        422,
        "invalid-plan",
    ),
    (
        "webhook-empty-secret",
        json.dumps({**PLAN, "webhook": {"url": "https://x.com", "secret": ""}}).encode(),
        JSON,
        422,
        "invalid-plan",
    ),
    (
        "webhook-unknown-field",
        json.dumps({**PLAN, "webhook": {"url": "https://x.com", "token": "a"}}).encode(),
        JSON,
        422,
        "invalid-plan",
    ),
    (
        "unknown-base",
        json.dumps({**PLAN, "baseExecutionId": MISSING_ID}).encode(),
        JSON,
        404,
        "not-found",
    ),
    (
        "weird-base",
        json.dumps({**PLAN, "baseExecutionId": "\u0000/../x"}).encode(),
        JSON,
        404,
        "not-found",
    ),
    (
        "text-plain",
        json.dumps(PLAN).encode(),
        {"Content-Type": "text/plain"},
        415,
        "unsupported-media-type",
    ),
    ("no-content-type", json.dumps(PLAN).encode(), {}, 415, "unsupported-media-type"),
    (
        "form",
        b"jobs=1",
        {"Content-Type": "application/x-www-form-urlencoded"},
        415,
        "unsupported-media-type",
    ),
    (
        "latin1-charset",
        json.dumps(PLAN).encode(),
        {"Content-Type": "application/json; charset=latin-1"},
        415,
        "unsupported-media-type",
    ),
    (
        "bad-idempotency-key",
        json.dumps(PLAN).encode(),
        {**JSON, "Idempotency-Key": "a b"},
        400,
        "malformed-request",
    ),
    (
        "long-idempotency-key",
        json.dumps(PLAN).encode(),
        {**JSON, "Idempotency-Key": "k" * 256},
        400,
        "malformed-request",
    ),
    (
        "empty-idempotency-key",
        json.dumps(PLAN).encode(),
        {**JSON, "Idempotency-Key": ""},
        400,
        "malformed-request",
    ),
]


async def test_a_corpus_of_malformed_requests_is_answered_4xx_problems(tmp_path: Path) -> None:
    async with (
        live_api(tmp_path / "e.db", rate_limit=None) as live,
        httpx.AsyncClient(base_url=live.url) as client,
    ):
        for name, body, headers, status, kind in CORPUS:
            response = await client.post("/api/execute", content=body, headers={**ALPHA, **headers})
            problem = assert_problem(response, status, kind)
            if kind == "invalid-plan":
                assert problem["errors"], name
                for error in problem["errors"]:
                    assert set(error) == {"jobId", "field", "message"}
        assert live.app.responses.keys() <= {400, 404, 415, 422}, live.app.responses


async def test_plan_errors_name_the_job_and_field(tmp_path: Path) -> None:
    body = {
        "jobs": [
            {"id": "job1", "type": "generate", "params": {"prompt": "x", "duration": 0}},
            {"id": "job2", "type": "merge", "dependsOn": ["job1", "nope"]},
        ],
        "webhook": {"url": "gopher://x"},
        "extra": True,
    }
    async with live_api(None) as live, httpx.AsyncClient(base_url=live.url) as client:
        response = await client.post("/api/execute", json=body, headers=ALPHA)
        problem = assert_problem(response, 422, "invalid-plan")
        where = {(e["jobId"], e["field"]) for e in problem["errors"]}
        assert {
            (None, "webhook.url"),
            (None, "extra"),
            ("job1", "params.duration"),
            ("job2", "dependsOn"),
        } <= where


async def test_seed_style_webhook_fields_get_a_hint_to_the_webhook_object() -> None:
    body = {**PLAN, "webhookUrl": "https://example.com/hook", "webhookSecret": "s"}
    async with live_api(None) as live, httpx.AsyncClient(base_url=live.url) as client:
        response = await client.post("/api/execute", json=body, headers=ALPHA)
        problem = assert_problem(response, 422, "invalid-plan")
        assert [(e["jobId"], e["field"]) for e in problem["errors"]] == [
            (None, "webhookUrl"),
            (None, "webhookSecret"),
        ]
        first = problem["errors"][0]["message"]
        assert first.startswith('unknown field; give the webhook as "webhook": {"url": ')
        assert "webhook_url is an option of the SDK's execute()" in first
        # With other problems, one answer lists them all, each once.
        bad = {"jobs": [{"id": "a", "type": "generate", "params": {}}], "webhook_url": "x"}
        response = await client.post("/api/execute", json=bad, headers=ALPHA)
        problem = assert_problem(response, 422, "invalid-plan")
        assert [(e["jobId"], e["field"]) for e in problem["errors"]] == [
            (None, "webhook_url"),
            ("a", "params.prompt"),
        ]
        assert live.notifier.deliveries == []


async def test_accepted_oddities(tmp_path: Path) -> None:
    """Valid JSON with odd but legal content is accepted, not a 5xx."""
    async with live_api(tmp_path / "e.db") as live, httpx.AsyncClient(base_url=live.url) as client:
        for prompt in ("nul \u0000 inside", "emoji \U0001f600", "\\ud83d\\ude00 escaped"):
            await submit(
                client, {"jobs": [{"id": "j", "type": "generate", "params": {"prompt": prompt}}]}
            )
        pair = _plan_with().replace(b'"x"', b'"\\ud83d\\ude00"')
        response = await client.post(
            "/api/execute",
            content=pair,
            headers={**ALPHA, "Content-Type": "application/JSON; charset=UTF-8"},
        )
        assert response.status_code == 202
        # A body on cancel is ignored, whatever it is.
        execution_id = response.json()["executionId"]
        cancel = await client.post(
            f"/api/execute/{execution_id}/cancel", content=b"\xff" * 10, headers=ALPHA
        )
        assert cancel.status_code == 202


async def test_routes_and_methods(tmp_path: Path) -> None:
    async with live_api(None) as live, httpx.AsyncClient(base_url=live.url) as client:
        for method, path, allow in (
            ("GET", "/api/execute", "POST"),
            ("PUT", "/api/execute", "POST"),
            ("DELETE", f"/api/execute/{MISSING_ID}", "GET"),
            ("POST", f"/api/execute/{MISSING_ID}", "GET"),
            ("GET", f"/api/execute/{MISSING_ID}/cancel", "POST"),
            ("PATCH", f"/api/execute/{MISSING_ID}/status", "GET"),
            ("GET", f"/api/execute/{MISSING_ID}/redeliver", "POST"),
            ("HEAD", "/healthz", "GET"),
            ("POST", "/metrics", "GET"),
            ("DELETE", "/openapi.json", "GET"),
        ):
            response = await client.request(method, path)
            assert response.status_code == 405, (method, path)
            assert response.headers["allow"] == allow
            if method != "HEAD":
                assert_problem(response, 405, "method-not-allowed")
        for path in (
            "/",
            "/api",
            "/api/",
            "/api/executes",
            "/api/execute/x/y/z",
            f"/api/execute/{MISSING_ID}/pause",
            "/healthz/",
            "/HEALTHZ",
            "/api/execute/%2e%2e/status",
            "/api/execute/a%2Fb/status",
            "/api/execute/%ff/status",
            "/api/execute/" + "x" * 5000,
        ):
            response = await client.get(path, headers=ALPHA)
            assert_problem(response, 404, "not-found")


# --- body size ----------------------------------------------------------------------------------


async def _raw(url: str, request: bytes, *, then: Sequence[bytes] = ()) -> bytes:
    """Send ``request`` (and then each of ``then``) on a raw connection; read the whole answer."""
    host, port = url.removeprefix("http://").split(":")
    async with await anyio.connect_tcp(host, int(port)) as stream:
        await stream.send(request)
        for chunk in then:
            try:
                await stream.send(chunk)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                break
        answer = b""
        with anyio.fail_after(5):
            while True:
                try:
                    data = await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    break
                answer += data
                if _complete(answer):
                    break
        return answer


def _complete(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    match = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
    return match is not None and len(body) >= int(match[1])


def _status_of(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/problem+json" in head.lower()
    return status, json.loads(body)


async def test_an_oversized_content_length_is_413_before_the_body_is_sent(tmp_path: Path) -> None:
    async with live_api(None, max_body_bytes=1000) as live:
        head = (
            b"POST /api/execute HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer key-alpha\r\n"
            b"Content-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n"
        )
        status, problem = _status_of(await _raw(live.url, head))  # no body sent at all
        assert status == 413 and problem["type"].endswith("payload-too-large")


async def test_an_oversized_chunked_body_is_413_while_streaming(tmp_path: Path) -> None:
    async with live_api(None, max_body_bytes=1000) as live:
        head = (
            b"POST /api/execute HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer key-alpha\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"190\r\n" + b" " * 400 + b"\r\n"  # 400 bytes each; the body never ends
        status, problem = _status_of(await _raw(live.url, head, then=[chunk] * 3))
        assert status == 413 and problem["type"].endswith("payload-too-large")


async def test_an_oversized_body_sent_whole_is_413(tmp_path: Path) -> None:
    async with live_api(None) as live, httpx.AsyncClient(base_url=live.url) as client:
        big = {"jobs": [{"id": "a", "type": "generate", "params": {"prompt": "x" * (1 << 21)}}]}
        response = await client.post("/api/execute", json=big, headers=ALPHA)
        assert_problem(response, 413, "payload-too-large")
        at_limit = b" " * ((1 << 20) - len(json.dumps(PLAN))) + json.dumps(PLAN).encode()
        response = await client.post("/api/execute", content=at_limit, headers={**ALPHA, **JSON})
        assert response.status_code == 202


# --- idempotency ---------------------------------------------------------------------------------


class _SlowCreate:
    """Storage whose ``create`` waits until released: the first request stays in flight."""

    def __init__(self, inner: MemoryStorage) -> None:
        self.inner = inner
        self.entered = anyio.Event()
        self.unblock = anyio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def create(self, *args: Any, **kwargs: Any) -> Execution:
        self.entered.set()
        await self.unblock.wait()
        return await self.inner.create(*args, **kwargs)


async def test_idempotency_keys(tmp_path: Path) -> None:
    async with live_api(tmp_path / "e.db") as live, httpx.AsyncClient(base_url=live.url) as client:
        first = await submit(client, PLAN, **{"Idempotency-Key": "order-1"})
        again = await submit(client, PLAN, **{"Idempotency-Key": "order-1"})
        assert again == first
        other = {"jobs": [{"id": "job1", "type": "generate", "params": {"prompt": "other"}}]}
        conflict = await client.post(
            "/api/execute", json=other, headers={**ALPHA, "Idempotency-Key": "order-1"}
        )
        assert_problem(conflict, 422, "idempotency-conflict")
        # Keys are scoped per tenant: the same key elsewhere is another execution.
        theirs = await client.post(
            "/api/execute", json=PLAN, headers={**BETA, "Idempotency-Key": "order-1"}
        )
        assert theirs.status_code == 202 and theirs.json()["executionId"] != first
        fresh = await submit(client, PLAN, **{"Idempotency-Key": "order-2"})
        assert fresh != first


async def test_a_key_still_being_created_is_409(tmp_path: Path) -> None:
    storage = _SlowCreate(MemoryStorage())
    engine = Engine(
        storage=cast(Storage, storage),
        queue=MemoryQueue(),
        provider=FakeVideoProvider(),
        notifier=RecordingNotifier(),
    )
    async with (
        live_api(None, engine=engine) as live,
        httpx.AsyncClient(base_url=live.url) as client,
        anyio.create_task_group() as task_group,
    ):
        answers: list[httpx.Response] = []

        async def first() -> None:
            answers.append(
                await client.post(
                    "/api/execute", json=PLAN, headers={**ALPHA, "Idempotency-Key": "k1"}
                )
            )

        task_group.start_soon(first)
        with anyio.fail_after(5):
            await storage.entered.wait()
        second = await client.post(
            "/api/execute", json=PLAN, headers={**ALPHA, "Idempotency-Key": "k1"}
        )
        assert_problem(second, 409, "idempotency-in-progress")
        assert second.headers["retry-after"] == "1"
        storage.unblock.set()
    assert answers[0].status_code == 202


# --- rate limit ----------------------------------------------------------------------------------


async def test_rate_limit_is_per_key_with_retry_after(tmp_path: Path) -> None:
    async with (
        live_api(None, rate_limit=(3, 60.0)) as live,
        httpx.AsyncClient(base_url=live.url) as client,
    ):
        path = f"/api/execute/{MISSING_ID}/status"
        for _ in range(3):
            assert (await client.get(path, headers=ALPHA)).status_code == 404
        limited = await client.get(path, headers=ALPHA)
        assert_problem(limited, 429, "rate-limited")
        retry_after = int(limited.headers["retry-after"])
        assert 1 <= retry_after <= 20
        assert (await client.get(path, headers=BETA)).status_code == 404
        assert (await client.get("/healthz")).status_code == 200
        submit_limited = await client.post("/api/execute", json=PLAN, headers=ALPHA)
        assert_problem(submit_limited, 429, "rate-limited")


# --- cancel, resume, metrics ---------------------------------------------------------------------


async def test_cancel_and_resume(tmp_path: Path) -> None:
    gate = anyio.Event()

    async def hold(request: JobRequest) -> None:
        await gate.wait()

    provider = FakeVideoProvider(on_call=hold)
    async with (
        live_api(tmp_path / "e.db", provider=provider) as live,
        httpx.AsyncClient(base_url=live.url) as client,
    ):
        execution_id = await submit(client)
        cancelled = await client.post(f"/api/execute/{execution_id}/cancel", headers=ALPHA)
        assert cancelled.status_code == 202
        assert cancelled.json() == {"executionId": execution_id, "status": "cancelled"}
        again = await client.post(f"/api/execute/{execution_id}/cancel", headers=ALPHA)
        assert again.status_code == 202 and again.json()["status"] == "cancelled"
        status = await wait_status(client, execution_id, ["cancelled"])
        assert status["error"]["code"]
        gate.set()
        resumed = await client.post(f"/api/execute/{execution_id}/resume", headers=ALPHA)
        assert resumed.status_code == 202 and resumed.json()["executionId"] == execution_id
        await wait_status(client, execution_id, ["completed"])
        not_again = await client.post(f"/api/execute/{execution_id}/resume", headers=ALPHA)
        assert_problem(not_again, 409, "invalid-state")


_SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? '
    r"(NaN|[+-]Inf|-?[0-9.eE+-]+)$"
)


def parse_prometheus(text: str) -> dict[str, list[tuple[str, float]]]:
    """Check the text format 0.0.4 line by line; return samples by metric name.

    Every family has one HELP and one TYPE line before its samples, its samples come together,
    no metric name is used twice and no sample (name and labels) is repeated.
    """
    assert text.endswith("\n")
    helps: set[str] = set()
    types: dict[str, str] = {}
    samples: dict[str, list[tuple[str, float]]] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert help_text and name not in helps and name not in samples, line
            helps.add(name)
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("counter", "gauge", "summary", "histogram", "untyped")
            assert name not in types and name not in samples, line
            types[name] = kind
            current = name
        else:
            match = _SAMPLE.match(line)
            assert match is not None, line
            name = match[1]
            assert name in types, f"{name} has no TYPE line before it"
            assert name == current, f"{name}: its samples are not together"
            value = float(match[4].replace("Inf", "inf"))
            if types[name] == "counter":
                assert name.endswith("_total") and value >= 0
            labels = match[2] or ""
            assert labels not in dict(samples.get(name, [])), f"{name}{labels} twice"
            samples.setdefault(name, []).append((labels, value))
    assert helps == set(types), "every family has both HELP and TYPE"
    return samples


async def wait_metric(
    client: httpx.AsyncClient,
    name: str,
    labels: str,
    value: float,
    headers: Mapping[str, str] = OPERATOR,
) -> dict[str, list[tuple[str, float]]]:
    """Poll ``/metrics`` until ``name{labels}`` is ``value``; return the samples then."""
    with anyio.fail_after(10):
        while True:
            response = await client.get("/metrics", headers=headers)
            samples = parse_prometheus(response.text)
            if dict(samples.get(name, [])).get(labels) == value:
                return samples
            await anyio.sleep(0.01)


async def test_metrics_are_prometheus_text(tmp_path: Path) -> None:
    async with (
        live_api(tmp_path / "e.db", operator_keys=OPERATOR_KEYS) as live,
        httpx.AsyncClient(base_url=live.url) as client,
    ):
        assert_problem(await client.get("/metrics"), 401, "unauthorized")
        empty = await client.get("/metrics", headers=OPERATOR)
        assert empty.status_code == 200
        assert empty.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        before = parse_prometheus(empty.text)
        assert math.isnan(before["videoflow_execution_success_ratio"][0][1])
        outbox = {f'{{status="{s}"}}': 0.0 for s in ("delivered", "failed", "notified", "pending")}
        assert dict(before["videoflow_webhook_deliveries"]) == outbox
        latency = dict(before["videoflow_webhook_delivery_latency_seconds"])
        assert set(latency) == {'{quantile="0.5"}', '{quantile="0.99"}'}
        assert all(math.isnan(v) for v in latency.values())
        # The recording notifier takes the event without an HTTP attempt: "notified".
        execution_id = await submit(client, {**PLAN, "webhook": {"url": "https://example.com/h"}})
        await wait_status(client, execution_id, ["completed"])
        samples = await wait_metric(
            client, "videoflow_webhook_deliveries", '{status="notified"}', 1
        )
        assert dict(samples["videoflow_webhook_deliveries"]) == {
            **outbox,
            '{status="notified"}': 1.0,
        }
        latency = dict(samples["videoflow_webhook_delivery_latency_seconds"])
        assert all(math.isnan(v) for v in latency.values())
        executions = dict(samples["videoflow_executions"])
        assert executions['{status="completed"}'] == 1
        assert executions['{status="failed"}'] == 0
        assert dict(samples["videoflow_execution_success_ratio"])[""] == 1.0
        quantiles = dict(samples["videoflow_execution_duration_seconds"])
        assert 0 <= quantiles['{quantile="0.5"}'] <= quantiles['{quantile="0.95"}']
        assert dict(samples["videoflow_job_attempts_total"])[""] == 2
        assert dict(samples["videoflow_job_retries_total"])[""] == 0
        for name in ("videoflow_queue_depth", "videoflow_live_executions"):
            assert name in samples
        assert dict(samples["videoflow_http_responses_total"])['{code="202"}'] == 1


async def test_a_tenant_sees_only_its_own_metrics_and_an_operator_all(tmp_path: Path) -> None:
    async with (
        live_api(tmp_path / "e.db", operator_keys=OPERATOR_KEYS) as live,
        httpx.AsyncClient(base_url=live.url) as client,
    ):
        for _ in range(2):
            await wait_status(client, await submit(client, PLAN), ["completed"])
        await wait_status(client, await submit(client, PLAN, **BETA), ["completed"], BETA)
        alpha = parse_prometheus((await client.get("/metrics", headers=ALPHA)).text)
        beta = parse_prometheus((await client.get("/metrics", headers=BETA)).text)
        fleet = parse_prometheus((await client.get("/metrics", headers=OPERATOR)).text)
        done = 'status="completed"'
        assert dict(alpha["videoflow_executions"])[f'{{tenant="alpha",{done}}}'] == 2
        assert dict(beta["videoflow_executions"])[f'{{tenant="beta",{done}}}'] == 1
        assert dict(fleet["videoflow_executions"])[f"{{{done}}}"] == 3
        assert dict(alpha["videoflow_execution_success_ratio"]) == {'{tenant="alpha"}': 1.0}
        # A tenant's view holds only its own, labelled numbers: nothing of the process's
        # counters (which count every tenant's work), nothing unlabelled.
        assert set(alpha) == {"videoflow_executions", "videoflow_execution_success_ratio"}
        for samples in alpha.values():
            assert all(labels.startswith('{tenant="alpha"') for labels, _ in samples)
        assert "beta" not in (await client.get("/metrics", headers=ALPHA)).text
        assert "videoflow_job_attempts_total" in fleet
        # An operator key is no tenant's key: it opens nothing else.
        assert_problem(await client.get("/api/execute/x/status", headers=OPERATOR), 401)


# --- webhook deliveries --------------------------------------------------------------------------


async def wait_deliveries(
    client: httpx.AsyncClient, execution_id: str, count: int
) -> list[dict[str, Any]]:
    """Poll ``GET /api/execute/{id}`` until its delivery log has ``count`` attempts."""
    with anyio.fail_after(10):
        while True:
            response = await client.get(f"/api/execute/{execution_id}", headers=ALPHA)
            assert response.status_code == 200, response.text
            deliveries = response.json()["webhook"]["deliveries"]
            if len(deliveries) >= count:
                assert len(deliveries) == count, deliveries
                return cast(list[dict[str, Any]], deliveries)
            await anyio.sleep(0.01)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "sqlite"])
async def test_the_delivery_log_is_shown_and_redeliver_sends_the_same_event(
    tmp_path: Path, durable: bool
) -> None:
    secret = "hook-secret-never-shown"
    async with (
        webhook_receiver() as receiver,
        live_api(tmp_path / "e.db" if durable else None, http_notifier=loopback_notifier()) as live,
        httpx.AsyncClient(base_url=live.url) as client,
    ):
        # Credentials in the URL are used to deliver, and never shown.
        url = receiver.url.replace("http://", "http://hook-user:hook-pass@")
        execution_id = await submit(client, {**PLAN, "webhook": {"url": url, "secret": secret}})
        await wait_status(client, execution_id, ["completed"])
        (first,) = await receiver.wait_for(1)
        payload = verify_webhook(first.body, first.headers, secret)
        assert payload["executionId"] == execution_id and payload["status"] == "completed"
        assert first.webhook_id.startswith("evt_")

        (attempt,) = await wait_deliveries(client, execution_id, 1)
        assert attempt == {
            "eventId": first.webhook_id,
            "attempt": 1,
            "at": attempt["at"],
            "statusCode": 200,
            "error": None,
            "latency": attempt["latency"],
            "outcome": "delivered",
            "retryAt": None,
            "url": receiver.url,
        }
        assert 0 <= attempt["latency"] < 10
        assert _time(attempt["at"]).timestamp() <= first.at + 1
        shown = await client.get(f"/api/execute/{execution_id}", headers=ALPHA)
        assert shown.json()["webhook"]["url"] == receiver.url
        for hidden in (secret, "hook-pass", "hook-user", "***"):
            assert hidden not in shown.text

        samples = await wait_metric(
            client, "videoflow_webhook_deliveries", '{status="delivered"}', 1
        )
        assert dict(samples["videoflow_webhook_deliveries"])['{status="pending"}'] == 0
        latency = dict(samples["videoflow_webhook_delivery_latency_seconds"])
        assert 0 <= latency['{quantile="0.5"}'] <= latency['{quantile="0.99"}'] < 10

        redeliver = await redeliver_when_idle(client, execution_id)
        assert redeliver.status_code == 202, redeliver.text
        assert redeliver.json()["executionId"] == execution_id
        second = (await receiver.wait_for(2))[1]
        assert second.webhook_id == first.webhook_id
        assert verify_webhook(second.body, second.headers, secret) == payload
        log = await wait_deliveries(client, execution_id, 2)
        assert log[0] == attempt
        assert log[1]["eventId"] == first.webhook_id
        assert (log[1]["attempt"], log[1]["outcome"], log[1]["statusCode"]) == (2, "delivered", 200)
        assert log[0]["at"] <= log[1]["at"]
        samples = await wait_metric(
            client, "videoflow_webhook_deliveries", '{status="delivered"}', 1
        )
        assert dict(samples["videoflow_webhook_deliveries"])['{status="pending"}'] == 0


async def test_a_failed_attempt_then_a_delivered_one(tmp_path: Path) -> None:
    async with (
        webhook_receiver([500, 200]) as receiver,
        live_api(tmp_path / "e.db", http_notifier=loopback_notifier((0, 0, 0))) as live,
        httpx.AsyncClient(base_url=live.url) as client,
    ):
        execution_id = await submit(client, {**PLAN, "webhook": {"url": receiver.url}})
        received = await receiver.wait_for(2)
        assert [r.status for r in received] == [500, 200]
        assert received[0].webhook_id == received[1].webhook_id
        retry, delivered = await wait_deliveries(client, execution_id, 2)
        assert retry["eventId"] == delivered["eventId"] == received[0].webhook_id
        assert (retry["attempt"], retry["outcome"], retry["statusCode"]) == (1, "retry", 500)
        assert retry["error"] == "HTTP 500"
        assert retry["retryAt"] is not None and retry["at"] <= retry["retryAt"]
        assert (delivered["attempt"], delivered["outcome"]) == (2, "delivered")
        assert delivered["statusCode"] == 200 and delivered["error"] is None
        assert delivered["retryAt"] is None
        assert retry["retryAt"] <= delivered["at"]
        await wait_metric(client, "videoflow_webhook_deliveries", '{status="delivered"}', 1)


async def test_redeliver_needs_an_ended_execution_with_a_webhook(tmp_path: Path) -> None:
    gate = anyio.Event()

    async def hold(request: JobRequest) -> None:
        await gate.wait()

    provider = FakeVideoProvider(on_call=hold)
    async with (
        live_api(tmp_path / "e.db", provider=provider) as live,
        httpx.AsyncClient(base_url=live.url) as client,
    ):
        hooked = await submit(client, {**PLAN, "webhook": {"url": "https://example.com/h"}})
        running = await client.post(f"/api/execute/{hooked}/redeliver", headers=ALPHA)
        assert_problem(running, 409, "invalid-state")
        gate.set()
        await wait_status(client, hooked, ["completed"])
        (first,) = await live.notifier.wait_for(1)
        again = await redeliver_when_idle(client, hooked)
        assert again.status_code == 202 and again.json()["executionId"] == hooked
        second = (await live.notifier.wait_for(2))[1]
        assert second.event_id == first.event_id and second.payload == first.payload

        bare = await submit(client)
        await wait_status(client, bare, ["completed"])
        no_hook = await client.post(f"/api/execute/{bare}/redeliver", headers=ALPHA)
        assert_problem(no_hook, 409, "invalid-state")
        assert (await client.get(f"/api/execute/{bare}", headers=ALPHA)).json()["webhook"] is None


async def test_redeliver_leaves_a_completed_execution_as_it_was(tmp_path: Path) -> None:
    async with (
        webhook_receiver() as receiver,
        live_api(tmp_path / "e.db", http_notifier=loopback_notifier()) as live,
        httpx.AsyncClient(base_url=live.url) as client,
    ):
        execution_id = await submit(client, {**PLAN, "webhook": {"url": receiver.url}})
        await wait_status(client, execution_id, ["completed"])
        await wait_deliveries(client, execution_id, 1)
        before = (await client.get(f"/api/execute/{execution_id}", headers=ALPHA)).json()
        redeliver = await redeliver_when_idle(client, execution_id)
        assert redeliver.json() == {"executionId": execution_id, "status": "completed"}
        await wait_deliveries(client, execution_id, 2)
        after = (await client.get(f"/api/execute/{execution_id}", headers=ALPHA)).json()
        del before["webhook"], after["webhook"]
        assert after == before


async def test_redeliver_does_not_run_a_failed_execution_again(tmp_path: Path) -> None:
    async with (
        webhook_receiver() as receiver,
        live_api(tmp_path / "e.db", http_notifier=loopback_notifier()) as live,
        httpx.AsyncClient(base_url=live.url) as client,
    ):
        live.provider.fail_next("job1", retryable=False)
        execution_id = await submit(client, {**PLAN, "webhook": {"url": receiver.url}})
        await wait_status(client, execution_id, ["failed"])
        calls = len(live.provider.calls)
        redeliver = await redeliver_when_idle(client, execution_id)
        assert redeliver.json() == {"executionId": execution_id, "status": "failed"}
        first, second = await receiver.wait_for(2)
        assert first.webhook_id == second.webhook_id
        await wait_deliveries(client, execution_id, 2)
        assert (await wait_status(client, execution_id, ["failed"]))["status"] == "failed"
        assert len(live.provider.calls) == calls
        # The engine still runs.
        await wait_status(client, await submit(client), ["completed"])


async def test_the_delivery_log_never_shows_credentials_and_is_not_garbled() -> None:
    """A second guard behind the notifier's: userinfo left in an attempt's URL, or in a URL in its
    error text, is removed by the URL's structure; the text is otherwise shown as it is (no
    substring replacement of the secret, which garbled every ``s`` for a secret ``"s"``)."""
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    engine = Engine.in_memory(notifier=RecordingNotifier())
    async with engine:
        execution_id = await engine.submit(
            PLAN, webhook={"url": "https://us%65r:p%40ss@example.com/h", "secret": secret}
        )
        execution = await engine.get(execution_id)
    error = "connection reset; receiver said: status s at https://user:p@ss@example.com/x"
    attempt = DeliveryAttempt(
        event_id="evt_1",
        execution_id=execution_id,
        url="https://user:p@ss@example.com/h?x=1",
        attempt=1,
        at=1_700_000_000.0,
        status_code=None,
        error=error,
        latency=0.5,
        outcome="failed",
    )
    # An execution stored before short secrets were refused, with the secret "s".
    old = attrs.evolve(execution, webhook=Webhook(execution.webhook.url, "s"))  # type: ignore[union-attr]
    for shown in (
        execution_to_json(execution, deliveries=[attempt]),
        execution_to_json(old, deliveries=[attempt]),
    ):
        text = json.dumps(shown)
        for hidden in (secret, "p@ss", "p%40ss", "us%65r", "user:p"):
            assert hidden not in text, hidden
        webhook = shown["webhook"]
        assert webhook["url"] == "https://example.com/h"
        delivery = webhook["deliveries"][0]
        assert delivery["url"] == "https://example.com/h?x=1"
        assert (
            delivery["error"]
            == "connection reset; receiver said: status s at https://example.com/x"
        )
        assert delivery["at"] == "2023-11-14T22:13:20.000Z"


# --- internal failures ---------------------------------------------------------------------------


class _BrokenGet:
    def __init__(self, inner: MemoryStorage) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def get(self, execution_id: str) -> Execution | None:
        raise RuntimeError("disk on fire")


async def test_an_internal_failure_is_a_500_problem_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = Engine(
        storage=cast(Storage, _BrokenGet(MemoryStorage())),
        queue=MemoryQueue(),
        provider=FakeVideoProvider(),
        notifier=RecordingNotifier(),
    )
    async with (
        live_api(None, engine=engine) as live,
        httpx.AsyncClient(base_url=live.url) as client,
    ):
        with caplog.at_level(logging.ERROR, logger="contrib.asgi"):
            response = await client.get(f"/api/execute/{MISSING_ID}/status", headers=ALPHA)
        problem = assert_problem(response, 500, "internal-error")
        assert "disk on fire" not in response.text and "disk" not in problem["detail"]
        assert any("disk on fire" in (r.exc_text or "") for r in caplog.records)

"""The OpenAPI 3.1 document of the app, built to match exactly what :mod:`contrib.asgi` does.

Every route, every status code it can answer, the request and response bodies (problems
included) and the bearer-key security scheme. The request schemas are never stricter than the
app: a body the schema rejects, the app rejects too (the app also checks what a schema cannot say,
such as that ``dependsOn`` names jobs of the plan; those answer 422).
"""

from __future__ import annotations

from typing import Any, get_args

from contrib.problems import KINDS, MEDIA_TYPE
from engine.catalogue import CUE_SCHEMA, MAX_ID_LENGTH, MAX_JOBS, OPERATIONS, OperationSpec
from engine.models import ExecutionStatus
from engine.requests import (
    MAX_WEBHOOK_SECRET,
    MAX_WEBHOOK_URL,
    MIN_WEBHOOK_SECRET,
    WEBHOOK_URL_PATTERN,
)

#: What the app puts on what the engine itself does not bound.
IDEMPOTENCY_KEY_PATTERN = "^[!-~]{1,255}$"
STATUSES = list(get_args(ExecutionStatus))

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [schema, {"type": "null"}]}


def _job(kind: str, params: dict[str, Any], *, params_required: bool) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["id", "type", "params"] if params_required else ["id", "type"],
        "additionalProperties": False,
        "properties": {
            "id": _ref("JobId"),
            "type": {"const": kind},
            "params": params,
            "dependsOn": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "output": {"type": "string", "description": "'$' followed by the job's id."},
        },
    }


def _schema_name(spec: OperationSpec) -> str:
    """``lipSync`` -> ``LipSyncJob``."""
    return spec.type[0].upper() + spec.type[1:] + "Job"


def _operation(spec: OperationSpec) -> dict[str, Any]:
    """The schema of one job type, read from the catalogue of operations."""
    params: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {p.name: dict(p.schema) for p in spec.params},
    }
    required = [p.name for p in spec.params if p.required]
    if required:
        params["required"] = required
    return _job(spec.type, params, params_required=bool(required))


SCHEMAS: dict[str, Any] = {
    "JobId": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_ID_LENGTH,
        "pattern": "^[A-Za-z0-9_.-]+$",
    },
    **{_schema_name(spec): _operation(spec) for spec in OPERATIONS.values()},
    "Cue": dict(CUE_SCHEMA),
    "Job": {"oneOf": [_ref(_schema_name(spec)) for spec in OPERATIONS.values()]},
    "Webhook": {
        "type": "object",
        "required": ["url"],
        "additionalProperties": False,
        "properties": {
            "url": {"type": "string", "maxLength": MAX_WEBHOOK_URL, "pattern": WEBHOOK_URL_PATTERN},
            "secret": {
                "type": "string",
                "minLength": MIN_WEBHOOK_SECRET,
                "maxLength": MAX_WEBHOOK_SECRET,
            },
        },
    },
    "ExecuteRequest": {
        "type": "object",
        "required": ["jobs"],
        "additionalProperties": False,
        "properties": {
            "jobs": {"type": "array", "minItems": 1, "maxItems": MAX_JOBS, "items": _ref("Job")},
            "baseExecutionId": {"type": "string", "minLength": 1},
            "webhook": _ref("Webhook"),
        },
        "example": {
            "jobs": [
                {"id": "job1", "type": "generate", "params": {"prompt": "Scene 1"}},
                {
                    "id": "job2",
                    "type": "reframe",
                    "params": {"aspectRatio": "9:16"},
                    "dependsOn": ["job1"],
                    "output": "$job2",
                },
            ]
        },
    },
    "ExecutionAccepted": {
        "type": "object",
        "required": ["executionId"],
        "properties": {"executionId": {"type": "string"}},
    },
    "ExecutionStatusAccepted": {
        "type": "object",
        "required": ["executionId", "status"],
        "properties": {
            "executionId": {"type": "string"},
            "status": {"enum": STATUSES},
        },
    },
    "Video": {
        "type": "object",
        "required": ["url", "duration", "aspectRatio", "width", "height", "status"],
        "properties": {
            "url": {"type": "string"},
            "duration": {"type": "number"},
            "aspectRatio": {"type": "string"},
            "width": {"type": ["integer", "null"]},
            "height": {"type": ["integer", "null"]},
            "status": {"type": "string"},
        },
    },
    "ErrorInfo": {
        "type": "object",
        "required": ["code", "message", "jobId"],
        "properties": {
            "code": {"type": "string"},
            "message": {"type": "string"},
            "jobId": {"type": ["string", "null"]},
        },
    },
    "StatusReport": {
        "type": "object",
        "required": ["status", "progress", "totalJobs", "completedJobs", "currentJob", "result"],
        "properties": {
            "status": {"enum": STATUSES},
            "progress": {"type": "number", "minimum": 0, "maximum": 100},
            "totalJobs": {"type": "integer", "minimum": 0},
            "completedJobs": {"type": "integer", "minimum": 0},
            "currentJob": {"type": ["string", "null"]},
            "result": _nullable(_ref("Video")),
            "error": _ref("ErrorInfo"),
        },
    },
    "ExecutionJob": {
        "type": "object",
        "required": [
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
        ],
        "properties": {
            "id": {"type": "string"},
            "type": {"type": "string"},
            "params": {"type": "object"},
            "dependsOn": {"type": "array", "items": {"type": "string"}},
            "status": {"enum": STATUSES},
            "attempts": {"type": "integer", "minimum": 0},
            "startedAt": {"type": ["string", "null"], "format": "date-time"},
            "finishedAt": {"type": ["string", "null"], "format": "date-time"},
            "result": _nullable(_ref("Video")),
            "error": _nullable(_ref("ErrorInfo")),
        },
    },
    "Execution": {
        "type": "object",
        "required": [
            "id",
            "status",
            "baseExecutionId",
            "createdAt",
            "startedAt",
            "completedAt",
            "progress",
            "totalJobs",
            "completedJobs",
            "currentJob",
            "result",
            "error",
            "webhook",
            "jobs",
        ],
        "properties": {
            "id": {"type": "string"},
            "status": {"enum": STATUSES},
            "baseExecutionId": {"type": ["string", "null"]},
            "createdAt": {"type": "string", "format": "date-time"},
            "startedAt": {"type": ["string", "null"], "format": "date-time"},
            "completedAt": {"type": ["string", "null"], "format": "date-time"},
            "progress": {"type": "number", "minimum": 0, "maximum": 100},
            "totalJobs": {"type": "integer", "minimum": 0},
            "completedJobs": {"type": "integer", "minimum": 0},
            "currentJob": {"type": ["string", "null"]},
            "result": _nullable(_ref("Video")),
            "error": _nullable(_ref("ErrorInfo")),
            "webhook": _nullable(_ref("ExecutionWebhook")),
            "jobs": {"type": "array", "items": _ref("ExecutionJob")},
        },
    },
    "ExecutionWebhook": {
        "type": "object",
        "required": ["url", "deliveries"],
        "properties": {
            "url": {"type": "string", "description": "Without any `user:password@`."},
            "deliveries": {
                "type": "array",
                "description": "Every attempt at delivering the webhook, oldest first.",
                "items": _ref("DeliveryAttempt"),
            },
        },
        "description": "Where the outcome is POSTed. The secret is never shown.",
    },
    "DeliveryAttempt": {
        "type": "object",
        "description": (
            "One attempt at delivering one webhook event. `outcome` is `delivered` (a 2xx), "
            "`retry` (failed; the next attempt is due at `retryAt`) or `failed` (failed, and the "
            "last attempt of this delivery)."
        ),
        "required": [
            "eventId",
            "attempt",
            "at",
            "statusCode",
            "error",
            "latency",
            "outcome",
            "retryAt",
            "url",
        ],
        "additionalProperties": False,
        "properties": {
            "eventId": {
                "type": "string",
                "description": "The `webhook-id` header: the same on every attempt of one event.",
            },
            "attempt": {"type": "integer", "minimum": 1},
            "at": {"type": "string", "format": "date-time", "description": "When it started."},
            "statusCode": {
                "type": ["integer", "null"],
                "description": "The receiver's HTTP status; null when no answer came.",
            },
            "error": {"type": ["string", "null"]},
            "latency": {"type": "number", "minimum": 0, "description": "Seconds it took."},
            "outcome": {"enum": ["delivered", "retry", "failed"]},
            "retryAt": {"type": ["string", "null"], "format": "date-time"},
            "url": {"type": "string", "description": "Without any `user:password@`."},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "ok"}},
    },
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details.",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"enum": [kind.type for kind in KINDS.values()]},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "errors": {
                "type": "array",
                "description": "For invalid plans: every problem, naming its job and field.",
                "items": _ref("PlanProblem"),
            },
        },
    },
    "PlanProblem": {
        "type": "object",
        "required": ["jobId", "field", "message"],
        "properties": {
            "jobId": {"type": ["string", "null"]},
            "field": {"type": "string"},
            "message": {"type": "string"},
        },
    },
}


def _problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {MEDIA_TYPE: {"schema": _ref("Problem")}},
    }
    if headers:
        response["headers"] = headers
    return response


_HEADER = {"schema": {"type": "string"}, "required": True}

RESPONSES: dict[str, Any] = {
    "Malformed": _problem(
        "The body is not JSON (empty, not UTF-8, bad syntax, NaN, nested too deeply), or a header "
        "is malformed."
    ),
    "Unauthorized": _problem(
        "No `Authorization: Bearer <key>` header, or an unknown key.",
        {"WWW-Authenticate": {**_HEADER, "description": "`Bearer`"}},
    ),
    "NotFound": _problem(
        "No such execution, or one another tenant owns (the same answer for both)."
    ),
    "InvalidState": _problem("The execution's status does not allow this (type invalid-state)."),
    "TooLarge": _problem("The body is over the app's limit (1 MiB unless configured)."),
    "UnsupportedMediaType": _problem("The body is not `application/json` (UTF-8)."),
    "RateLimited": _problem(
        "Over this key's request rate; retry after `Retry-After` seconds.",
        {"Retry-After": {**_HEADER, "description": "Seconds to wait."}},
    ),
    "Internal": _problem("An internal failure (logged by the server); never caused by input."),
}


def _responses(**codes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for code, response in codes.items():
        out[code.removeprefix("r")] = (
            {"$ref": "#/components/responses/" + response}
            if isinstance(response, str)
            else response
        )
    return out


_ID_PARAMETER = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "An execution id, as `POST /api/execute` returned it.",
    "schema": {"type": "string"},
}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def openapi_document(*, title: str = "videoflow engine", version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI 3.1 document served at ``GET /openapi.json``."""
    authed = {"r401": "Unauthorized", "r429": "RateLimited", "r500": "Internal"}
    execution_paths = {
        "/api/execute/{id}/status": {
            "get": {
                "operationId": "getStatus",
                "summary": "The seed's status body, for polling.",
                "parameters": [_ID_PARAMETER],
                "responses": _responses(
                    r200=_json("StatusReport", "Where the execution stands."),
                    r404="NotFound",
                    **authed,
                ),
            }
        },
        "/api/execute/{id}": {
            "get": {
                "operationId": "getExecution",
                "summary": "The execution: its jobs with status, attempts and timings.",
                "parameters": [_ID_PARAMETER],
                "responses": _responses(
                    r200=_json("Execution", "The execution. Secrets are never shown."),
                    r404="NotFound",
                    **authed,
                ),
            }
        },
        "/api/execute/{id}/cancel": {
            "post": {
                "operationId": "cancelExecution",
                "summary": "Cancel an unfinished execution (an ended one is left as it is).",
                "description": (
                    "409 when another engine sharing the store runs the execution. A request "
                    "body, if any, is ignored."
                ),
                "parameters": [_ID_PARAMETER],
                "responses": _responses(
                    r202=_json("ExecutionStatusAccepted", "Cancelled, or already ended."),
                    r404="NotFound",
                    r409="InvalidState",
                    **authed,
                ),
            }
        },
        "/api/execute/{id}/resume": {
            "post": {
                "operationId": "resumeExecution",
                "summary": "Run a failed or cancelled execution again from where it stopped.",
                "description": "A request body, if any, is ignored.",
                "parameters": [_ID_PARAMETER],
                "responses": _responses(
                    r202=_json("ExecutionStatusAccepted", "Resumed."),
                    r404="NotFound",
                    r409="InvalidState",
                    **authed,
                ),
            }
        },
        "/api/execute/{id}/redeliver": {
            "post": {
                "operationId": "redeliverWebhook",
                "summary": "Send an ended execution's webhook again, with the same `webhook-id`.",
                "description": (
                    "For a receiver that was down or has been fixed. The delivery runs in the "
                    "background with the usual retries; its attempts are added to the execution's "
                    "`webhook.deliveries`. 409 when the execution has no webhook or has not "
                    "ended. A request body, if any, is ignored."
                ),
                "parameters": [_ID_PARAMETER],
                "responses": _responses(
                    r202=_json("ExecutionStatusAccepted", "The delivery is started."),
                    r404="NotFound",
                    r409="InvalidState",
                    **authed,
                ),
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": (
                "Submit execution plans of AI-video jobs and follow them. Every error is "
                "`application/problem+json` (RFC 9457). A method a path does not support is "
                "answered 405 with `Allow`, and an unknown path 404, before authentication."
            ),
        },
        "security": [{"bearerAuth": []}],
        "paths": {
            "/api/execute": {
                "post": {
                    "operationId": "execute",
                    "summary": "Submit an execution plan.",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "description": (
                                "Scoped to the tenant: the same key and body return the same "
                                "execution; another body is 422; while the first is being "
                                "created, 409."
                            ),
                            "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("ExecuteRequest")}},
                    },
                    "responses": _responses(
                        r202=_json("ExecutionAccepted", "Stored and started."),
                        r400="Malformed",
                        r404=_problem("`baseExecutionId` names no execution of this tenant."),
                        r409=_problem(
                            "The first request with this Idempotency-Key is still being created "
                            "(type idempotency-in-progress; retry shortly), or the base execution "
                            "is run by another engine (type invalid-state)."
                        ),
                        r413="TooLarge",
                        r415="UnsupportedMediaType",
                        r422=_problem(
                            "The plan is invalid (type invalid-plan, with `errors`), or the "
                            "Idempotency-Key was used with another body (type "
                            "idempotency-conflict)."
                        ),
                        **authed,
                    ),
                }
            },
            **execution_paths,
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness; needs no key.",
                    "security": [],
                    "responses": _responses(r200=_json("Health", "The app is serving.")),
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "The engine's metrics, Prometheus text format 0.0.4; needs a key.",
                    "responses": _responses(
                        r200={
                            "description": "Prometheus exposition text.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **authed,
                    ),
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document; needs no key.",
                    "security": [],
                    "responses": _responses(
                        r200={
                            "description": "The OpenAPI 3.1 document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    ),
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key; each key belongs to one tenant.",
                }
            },
            "schemas": SCHEMAS,
            "responses": RESPONSES,
        },
    }


__all__ = ["openapi_document"]

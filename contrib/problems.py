"""RFC 9457 problem details: every error the HTTP API answers is one of these kinds.

Each kind has a fixed ``type`` URI (``urn:videoflow:problem:<kind>``), ``title`` and status; the
``detail`` says what went wrong with this request. Plan errors add ``errors``: one
``{"jobId", "field", "message"}`` per problem found.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from attrs import frozen

from contrib.types import Headers
from engine.errors import Problem

TYPE_PREFIX = "urn:videoflow:problem:"
MEDIA_TYPE = "application/problem+json"


@frozen
class Kind:
    name: str
    status: int
    title: str

    @property
    def type(self) -> str:
        return TYPE_PREFIX + self.name


MALFORMED = Kind("malformed-request", 400, "Malformed request")
UNAUTHORIZED = Kind("unauthorized", 401, "Unauthorized")
NOT_FOUND = Kind("not-found", 404, "Not found")
METHOD_NOT_ALLOWED = Kind("method-not-allowed", 405, "Method not allowed")
IDEMPOTENCY_IN_PROGRESS = Kind(
    "idempotency-in-progress", 409, "A request with this idempotency key is in progress"
)
INVALID_STATE = Kind("invalid-state", 409, "Not possible in the execution's current state")
REQUEST_TIMEOUT = Kind("request-timeout", 408, "The request did not arrive in time")
TOO_LARGE = Kind("payload-too-large", 413, "Request body too large")
UNSUPPORTED_MEDIA_TYPE = Kind("unsupported-media-type", 415, "Unsupported media type")
INVALID_PLAN = Kind("invalid-plan", 422, "Invalid execution plan")
IDEMPOTENCY_CONFLICT = Kind(
    "idempotency-conflict", 422, "Idempotency key reused with a different request"
)
RATE_LIMITED = Kind("rate-limited", 429, "Too many requests")
LIVE_PLANS_LIMIT = Kind("live-plans-limit", 429, "Too many bytes of live plans")
LINK_REFUSED = Kind("link-refused", 403, "Invalid result link")
LINK_EXPIRED = Kind("link-expired", 410, "Result link expired")
RANGE_NOT_SATISFIABLE = Kind("range-not-satisfiable", 416, "Range not satisfiable")
INTERNAL = Kind("internal-error", 500, "Internal server error")

#: Every kind the API can answer, by name (the OpenAPI document lists their types).
KINDS: Mapping[str, Kind] = {
    kind.name: kind
    for kind in (
        MALFORMED,
        UNAUTHORIZED,
        NOT_FOUND,
        METHOD_NOT_ALLOWED,
        IDEMPOTENCY_IN_PROGRESS,
        INVALID_STATE,
        REQUEST_TIMEOUT,
        TOO_LARGE,
        UNSUPPORTED_MEDIA_TYPE,
        INVALID_PLAN,
        IDEMPOTENCY_CONFLICT,
        RATE_LIMITED,
        LIVE_PLANS_LIMIT,
        LINK_REFUSED,
        LINK_EXPIRED,
        RANGE_NOT_SATISFIABLE,
        INTERNAL,
    )
}


class HttpProblem(Exception):
    """Raised inside a handler to answer with a problem; the app renders it."""

    def __init__(
        self,
        kind: Kind,
        detail: str,
        *,
        headers: Iterable[tuple[str, str]] = (),
        errors: Iterable[Problem] | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.headers = tuple(headers)
        self.errors = None if errors is None else tuple(errors)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.kind.type,
            "title": self.kind.title,
            "status": self.kind.status,
            "detail": self.detail,
        }
        if self.errors is not None:
            body["errors"] = [problem.to_json() for problem in self.errors]
        return body

    def render(self) -> tuple[int, Headers, bytes]:
        """Status, headers and body of the response."""
        body = dump_json(self.to_json())
        headers: Headers = [
            (b"content-type", MEDIA_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        headers.extend((name.lower().encode(), value.encode()) for name, value in self.headers)
        return self.kind.status, headers, body


def dump_json(value: Any) -> bytes:
    """Compact JSON, ASCII only (so it never fails to encode), NaN refused."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


__all__ = ["KINDS", "MEDIA_TYPE", "TYPE_PREFIX", "HttpProblem", "Kind", "dump_json"]

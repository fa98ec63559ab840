"""Webhook bodies and their signatures: build, encode, sign, verify. Pure functions, no I/O.

Every delivery carries two signatures over the exact body bytes:

- ``X-Webhook-Signature``: lowercase hex HMAC-SHA256(key, body), the seed's scheme. It has no
  timestamp, so a captured request can be replayed forever; it is kept for compatibility.
- ``webhook-signature: v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}.{body}")>`` with
  ``webhook-id`` and ``webhook-timestamp``: the `Standard Webhooks`_ scheme. Prefer it: the
  timestamp bounds replays to ``tolerance`` seconds and the id lets a receiver drop duplicates.

The HMAC key is the UTF-8 bytes of the secret, except that ``whsec_<base64>`` means the decoded
bytes, as in Standard Webhooks; so a ``whsec_`` secret works unchanged with stock verifiers.

.. _Standard Webhooks: https://www.standardwebhooks.com/
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from attrs import field, frozen

from engine import wire
from engine.errors import InvalidSignature
from engine.models import ErrorInfo, Execution, Video
from engine.wire import OMIT_IF_DEFAULT

__all__ = [
    "HEX_SIGNATURE",
    "WebhookBody",
    "WEBHOOK_ID",
    "WEBHOOK_SIGNATURE",
    "WEBHOOK_TIMESTAMP",
    "build_payload",
    "encode_payload",
    "headers_for",
    "payload_for",
    "secret_key",
    "sign",
    "verify_webhook",
]

HEX_SIGNATURE = "X-Webhook-Signature"
WEBHOOK_ID = "webhook-id"
WEBHOOK_TIMESTAMP = "webhook-timestamp"
WEBHOOK_SIGNATURE = "webhook-signature"

_WHSEC = "whsec_"
_TIMESTAMP = re.compile(r"[0-9]{1,15}")

#: What :func:`verify_webhook` takes as headers: a mapping (any case of names, ``httpx.Headers``
#: too) or ``(name, value)`` pairs, as ``str`` or ``bytes`` (ASGI's ``scope["headers"]``).
HeadersLike = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]


@frozen
class WebhookBody:
    """The webhook body: ``{"executionId", "status", "video"}`` or ``{..., "error"}``."""

    execution_id: str
    status: str
    video: Video | None = field(default=None, metadata={OMIT_IF_DEFAULT: True})
    error: ErrorInfo | None = field(default=None, metadata={OMIT_IF_DEFAULT: True})


def build_payload(execution: Execution) -> dict[str, Any]:
    """The webhook body for an execution that ended, as a JSON-ready dict."""
    return payload_for(execution.id, execution.status, execution.result, execution.error)


def payload_for(
    execution_id: str, status: str, result: Video | None, error: ErrorInfo | None
) -> dict[str, Any]:
    """The webhook body from an execution's id and outcome (see :func:`build_payload`).

    ``completed`` needs ``result``; ``failed`` and ``cancelled`` carry ``error``, or a generic one
    when it is ``None``; any other status is a ``ValueError``.
    """
    if status == "completed":
        if result is None:
            raise ValueError(f"execution {execution_id} is completed but has no result")
        body = WebhookBody(execution_id, "completed", video=result)
        return wire.to_json(body)  # type: ignore[no-any-return]
    if status in ("failed", "cancelled"):
        error = error or ErrorInfo(status, f"execution {status}")
        return wire.to_json(WebhookBody(execution_id, status, error=error))  # type: ignore[no-any-return]
    raise ValueError(
        f"execution {execution_id} is {status}: only a terminal execution has a payload"
    )


def encode_payload(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON: the exact bytes that are sent and signed."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def secret_key(secret: str) -> bytes:
    """The HMAC key for ``secret``: its UTF-8 bytes, or the decoded bytes of ``whsec_<base64>``."""
    if not secret.startswith(_WHSEC):
        return secret.encode("utf-8")
    encoded = secret[len(_WHSEC) :].strip()
    encoded += "=" * (-len(encoded) % 4)  # stock verifiers accept unpadded base64 too
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "webhook secret starts with 'whsec_' but the rest is not valid base64"
        ) from None
    if not key:
        raise ValueError("webhook secret starts with 'whsec_' but holds no key bytes")
    return key


def _hex_signature(key: bytes, body: bytes) -> str:
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def _v1_signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    return hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def sign(body: bytes, secret: str, *, msg_id: str, timestamp: int) -> dict[str, str]:
    """Both signatures' headers for ``body``: the seed's hex one and the Standard Webhooks one."""
    key = secret_key(secret)
    stamp = str(int(timestamp))
    v1 = base64.b64encode(_v1_signature(key, msg_id, stamp, body)).decode("ascii")
    return {
        HEX_SIGNATURE: _hex_signature(key, body),
        WEBHOOK_ID: msg_id,
        WEBHOOK_TIMESTAMP: stamp,
        WEBHOOK_SIGNATURE: f"v1,{v1}",
    }


def headers_for(body: bytes, secret: str | None, *, msg_id: str, timestamp: int) -> dict[str, str]:
    """Every header of one delivery attempt.

    Without a secret there is no signature, but ``webhook-id`` and ``webhook-timestamp`` are still
    sent so that receivers can drop duplicates.
    """
    headers = {"Content-Type": "application/json"}
    if secret is None:
        headers[WEBHOOK_ID] = msg_id
        headers[WEBHOOK_TIMESTAMP] = str(int(timestamp))
    else:
        headers.update(sign(body, secret, msg_id=msg_id, timestamp=timestamp))
    return headers


def verify_webhook(
    body: bytes | str,
    headers: HeadersLike,
    secret: str | Sequence[str],
    *,
    tolerance: int = 300,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a delivery's signature and return its JSON payload, or raise ``InvalidSignature``.

    When ``webhook-signature`` is present the Standard Webhooks scheme decides alone (it needs
    ``webhook-id`` and a ``webhook-timestamp`` within ``tolerance`` seconds of ``now``); it may hold
    several space-separated ``v1,<base64>`` signatures and ``secret`` may be several secrets
    (rotation): any match passes. Otherwise ``X-Webhook-Signature`` (hex, no timestamp, so
    replayable) is checked. A bad ``whsec_`` secret is a ``ValueError``: it is the caller's error.
    """
    data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise ValueError("verify_webhook needs at least one secret")
    keys = [secret_key(s) for s in secrets]
    found = _collect_headers(headers)

    signatures = found.get(WEBHOOK_SIGNATURE)
    if signatures is not None:
        _verify_standard(data, found, signatures, keys, tolerance, now)
    elif HEX_SIGNATURE.lower() in found:
        _verify_hex(data, found[HEX_SIGNATURE.lower()], keys)
    else:
        raise InvalidSignature(
            "missing signature headers: expected webhook-signature (with webhook-id and "
            "webhook-timestamp) or X-Webhook-Signature"
        )

    try:
        payload = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise InvalidSignature("signature matched but the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise InvalidSignature("signature matched but the body is not a JSON object")
    return payload


def _collect_headers(headers: HeadersLike) -> dict[str, str]:
    """Lower-cased names; repeated ``webhook-signature`` lines are joined with spaces."""
    pairs: Iterable[tuple[str | bytes, str | bytes]]
    multi_items = getattr(headers, "multi_items", None)
    if callable(multi_items):  # httpx.Headers: keep repeated lines apart
        pairs = multi_items()
    elif isinstance(headers, Mapping):
        pairs = headers.items()
    else:
        pairs = headers
    found: dict[str, str] = {}
    for raw_name, raw_value in pairs:
        name = (raw_name.decode("latin-1") if isinstance(raw_name, bytes) else raw_name).lower()
        value = raw_value.decode("latin-1") if isinstance(raw_value, bytes) else raw_value
        value = value.strip()
        if name not in found:
            found[name] = value
        elif name == WEBHOOK_SIGNATURE:
            found[name] = f"{found[name]} {value}"
        elif found[name] != value:
            raise InvalidSignature(f"conflicting values for header {name}")
    return found


def _verify_standard(
    body: bytes,
    found: Mapping[str, str],
    signatures: str,
    keys: Sequence[bytes],
    tolerance: int,
    now: float | None,
) -> None:
    msg_id = found.get(WEBHOOK_ID)
    stamp = found.get(WEBHOOK_TIMESTAMP)
    if not msg_id or not stamp:
        missing = [n for n, v in ((WEBHOOK_ID, msg_id), (WEBHOOK_TIMESTAMP, stamp)) if not v]
        raise InvalidSignature(
            f"webhook-signature is present but {' and '.join(missing)} is missing"
        )
    if not _TIMESTAMP.fullmatch(stamp):
        raise InvalidSignature("webhook-timestamp is not an integer number of Unix seconds")
    current = time.time() if now is None else now
    sent = int(stamp)
    if sent < current - tolerance:
        raise InvalidSignature(
            f"webhook-timestamp is too old ({current - sent:.0f}s ago, tolerance {tolerance}s)"
        )
    if sent > current + tolerance:
        raise InvalidSignature(
            f"webhook-timestamp is too new ({sent - current:.0f}s ahead, tolerance {tolerance}s)"
        )

    given = _v1_entries(signatures)
    if not given:
        raise InvalidSignature("webhook-signature holds no v1 signature")
    expected = [_v1_signature(key, msg_id, stamp, body) for key in keys]
    matched = False
    for candidate in given:
        for want in expected:
            # No early exit: the time taken does not say which secret or signature matched.
            matched |= hmac.compare_digest(candidate, want)
    if not matched:
        raise InvalidSignature(
            f"no signature matched: checked {len(given)} v1 signature(s) "
            f"against {len(expected)} secret(s)"
        )


def _v1_entries(header: str) -> list[bytes]:
    """The decoded ``v1`` signatures of a ``webhook-signature`` header; other versions ignored."""
    out: list[bytes] = []
    for entry in header.split():
        version, sep, value = entry.rstrip(",").partition(",")
        if not sep or version != "v1":
            continue
        try:
            out.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    return out


def _verify_hex(body: bytes, given: str, keys: Sequence[bytes]) -> None:
    candidate = given.strip().lower().encode("ascii", "replace")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, _hex_signature(key, body).encode("ascii"))
    if not matched:
        raise InvalidSignature(
            f"X-Webhook-Signature did not match the body with any of {len(keys)} secret(s)"
        )

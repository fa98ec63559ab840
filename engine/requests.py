"""What a submit asks for, normalised: the webhook, the idempotency fingerprint, new ids.

The engine and the HTTP app (:mod:`contrib.asgi`) read a webhook the same way, through
:func:`webhook_from`, so the rules (an absolute ``http(s)`` URL; a secret of at least 16 bytes,
or ``whsec_`` and the base64 of at least 24) are said once.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from engine.errors import PlanError, Problem
from engine.models import Webhook
from engine.plan import ExecutionPlan
from engine.webhooks import secret_key

#: The longest webhook URL and secret accepted.
MAX_WEBHOOK_URL = 2048
MAX_WEBHOOK_SECRET = 1024
#: The shortest secret accepted, in UTF-8 bytes; a ``whsec_`` secret's key, in decoded bytes.
MIN_WEBHOOK_SECRET = 16
MIN_WHSEC_KEY = 24
#: How to make a good secret, as the refusal says it.
MAKE_SECRET = '"whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()'

#: A webhook URL: http(s), then visible ASCII only (no spaces, no controls).
WEBHOOK_URL_PATTERN = "^[Hh][Tt][Tt][Pp][Ss]?://[!-~]+$"
_WEBHOOK_URL = re.compile(WEBHOOK_URL_PATTERN)
_SHAPE = "must be an object {url, secret?}"


def webhook_problems(raw: Any) -> tuple[Webhook | None, list[Problem]]:
    """Read ``{"url", "secret"?}`` (or a :class:`Webhook`); every problem, each naming its field."""
    if isinstance(raw, Webhook):
        raw = {"url": raw.url} if raw.secret is None else {"url": raw.url, "secret": raw.secret}
    if not isinstance(raw, Mapping):
        return None, [Problem(None, "webhook", _SHAPE)]
    problems = [
        Problem(None, f"webhook.{key}", f"unknown field; the webhook {_SHAPE}")
        for key in raw
        if key not in ("url", "secret")
    ]
    url, secret = raw.get("url"), raw.get("secret")
    if not isinstance(url, str):
        problems.append(Problem(None, "webhook.url", "is required: an http(s) URL"))
    elif len(url) > MAX_WEBHOOK_URL or not _WEBHOOK_URL.fullmatch(url) or not _has_host(url):
        problems.append(
            Problem(
                None,
                "webhook.url",
                f"must be an absolute http(s) URL with a host, in ASCII, at most "
                f"{MAX_WEBHOOK_URL} characters",
            )
        )
    if "secret" in raw:
        message = _secret_problem(secret)
        if message is not None:
            problems.append(Problem(None, "webhook.secret", message))
    if problems or not isinstance(url, str):
        return None, problems
    return Webhook(url, secret), []


def webhook_from(webhook: Webhook | Mapping[str, Any] | None) -> Webhook | None:
    """A checked :class:`Webhook` from one or from ``{"url", "secret"?}``; ``PlanError`` naming
    every problem otherwise."""
    if webhook is None:
        return None
    hook, problems = webhook_problems(webhook)
    if problems:
        raise PlanError(problems)
    return hook


def _secret_problem(secret: Any) -> str | None:
    """Why ``secret`` is refused (never quoting it), or ``None``: a short secret is guessed."""
    make = f"make one with {MAKE_SECRET}"
    if not isinstance(secret, str) or not 0 < len(secret) <= MAX_WEBHOOK_SECRET:
        return (
            f"must be a string of {MIN_WEBHOOK_SECRET} to {MAX_WEBHOOK_SECRET} characters; {make}"
        )
    if secret.startswith("whsec_"):
        try:
            key = secret_key(secret)
        except ValueError as exc:
            return f"{exc}; {make}"
        if len(key) < MIN_WHSEC_KEY:
            return (
                f"a 'whsec_' secret must hold at least {MIN_WHSEC_KEY} bytes of base64, got "
                f"{len(key)}; {make}"
            )
        return None
    if len(secret.encode("utf-8")) < MIN_WEBHOOK_SECRET:
        return (
            f"is too short: at least {MIN_WEBHOOK_SECRET} bytes (or 'whsec_' and the base64 of at "
            f"least {MIN_WHSEC_KEY}); {make}"
        )
    return None


def _has_host(url: str) -> bool:
    """Whether ``url`` has a host and, if it names one, a valid port."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
        return bool(parts.hostname)
    except ValueError:
        return False


def fingerprint(plan: ExecutionPlan, base: str | None, webhook: Webhook | None) -> str:
    """What makes two submits with one idempotency key the same request (the secret hashed)."""
    digest = hashlib.sha256(plan.fingerprint().encode())
    digest.update(f"|{base}|{webhook.url if webhook else ''}|".encode())
    if webhook is not None and webhook.secret is not None:
        digest.update(hashlib.sha256(webhook.secret.encode()).digest())
    return digest.hexdigest()


def new_execution_id() -> str:
    return f"exec_{os.urandom(10).hex()}"  # secrets.token_hex, less two calls


def event_id(execution_id: str, generation: int) -> str:
    """The webhook event of one ending: the same on every delivery attempt (``webhook-id``)."""
    return f"evt_{execution_id}_{generation}"

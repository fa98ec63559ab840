"""Network mechanics any adapter may use: the SSRF guard and the checked request
(:func:`send_checked`), ``Retry-After`` (:func:`parse_retry_after`) and backoff.

- :mod:`adapters.net.ssrf`: which addresses a user-given URL may reach, and why one is refused.
- :mod:`adapters.net.connect`: one request sent to the address that was checked.
- :mod:`adapters.net.retry_after`: the ``Retry-After`` header as seconds.
- :mod:`adapters.net.backoff`: exponential backoff to a cap, and jitter.
"""

from adapters.net.backoff import exponential, jittered
from adapters.net.connect import send_checked
from adapters.net.retry_after import parse_retry_after
from adapters.net.ssrf import (
    Address,
    DestinationRefused,
    Network,
    WebhookRefused,
    check_url,
    judge,
    literal_address,
    parse_networks,
    refusal_reason,
    resolve_checked,
)

__all__ = [
    "Address",
    "DestinationRefused",
    "Network",
    "WebhookRefused",
    "check_url",
    "exponential",
    "jittered",
    "judge",
    "literal_address",
    "parse_networks",
    "parse_retry_after",
    "refusal_reason",
    "resolve_checked",
    "send_checked",
]

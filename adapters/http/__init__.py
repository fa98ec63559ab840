"""HTTP adapters: webhook delivery (:class:`HttpNotifier`) behind an SSRF guard, and the remote
``execute`` target (:class:`EngineClient`) for the HTTP API."""

from adapters.http.client import EngineClient, TransportError
from adapters.http.notifier import DeliveryAttempt, DeliveryResult, HttpNotifier
from adapters.http.provider import HttpVideoProvider, ModelRoute
from adapters.http.ssrf import WebhookRefused

__all__ = [
    "DeliveryAttempt",
    "DeliveryResult",
    "EngineClient",
    "HttpNotifier",
    "HttpVideoProvider",
    "ModelRoute",
    "TransportError",
    "WebhookRefused",
]

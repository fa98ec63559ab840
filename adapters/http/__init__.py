"""HTTP adapters: webhook delivery (:class:`HttpNotifier`) behind the SSRF guard of
:mod:`adapters.net`, the remote ``execute`` target (:class:`EngineClient`) for the HTTP API, and
a hosted video API (:class:`HttpVideoProvider`)."""

from adapters.http.client import EngineClient, TransportError, Unauthorized
from adapters.http.notifier import DeliveryAttempt, DeliveryResult, HttpNotifier
from adapters.http.provider import HttpVideoProvider, ModelRoute
from adapters.net import WebhookRefused

__all__ = [
    "DeliveryAttempt",
    "DeliveryResult",
    "EngineClient",
    "HttpNotifier",
    "HttpVideoProvider",
    "ModelRoute",
    "TransportError",
    "Unauthorized",
    "WebhookRefused",
]

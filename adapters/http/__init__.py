"""HTTP adapters: webhook delivery (:class:`HttpNotifier`) behind an SSRF guard."""

from adapters.http.notifier import DeliveryAttempt, DeliveryResult, HttpNotifier
from adapters.http.ssrf import WebhookRefused

__all__ = ["DeliveryAttempt", "DeliveryResult", "HttpNotifier", "WebhookRefused"]

"""Webhooks: checking a receiver's URL, and the background sender (Standard Webhooks signatures, backoff).

Deliveries are queued in the store in the same transaction as the state change they report; this sender
renders each payload once, signs it with the account's secret and retries with backoff until it is delivered
or the schedule runs out. Every attempt is recorded and visible to the task's owner.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
from standardwebhooks.webhooks import Webhook

from kinema.errors import InvalidInput
from kinema.media.images import is_public_address
from kinema.settings import Settings
from kinema.store.repo import TaskStore, WebhookDelivery
from kinema.tasks.models import Task

log = logging.getLogger(__name__)


def check_webhook_url(url: str, *, allow_private: bool) -> str:
    """The URL if it is http(s) to a public address (any when allow_private); InvalidInput otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"webhook: {url!r} is not an http(s) URL")
    if allow_private:
        return url
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise InvalidInput(f"webhook: cannot resolve {parts.hostname!r}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not is_public_address(address):
            raise InvalidInput(
                f"webhook: {parts.hostname} resolves to {address}, a loopback/private address; "
                "the operator can allow these with KINEMA_WEBHOOK_ALLOW_PRIVATE"
            )
    return url


class WebhookSender:
    """A thread that delivers due webhooks; render turns a task into the JSON the API shows for it."""

    def __init__(
        self,
        store: TaskStore,
        settings: Settings,
        *,
        render: Callable[[Task], dict[str, object]],
        secret_for: Callable[[str], str],
    ) -> None:
        self.store, self.settings, self.render, self.secret_for = store, settings, render, secret_for
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kinema-webhooks", daemon=True)
        self._client = httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._client.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.webhook_poll_s):
            try:
                for delivery in self.store.due_webhooks():
                    if self._stop.is_set():
                        return
                    self.deliver(delivery)
            except Exception:
                log.exception("webhook sender error; continuing")

    def deliver(self, delivery: WebhookDelivery) -> bool:
        """One attempt: render (first time), sign, POST; record the outcome and schedule a retry."""
        payload = delivery.payload
        if payload is None:
            task = self.store.get_task(delivery.task_id)
            payload = {"type": f"task.{delivery.event}", "timestamp": _iso_now(), "data": self.render(task)}
            self.store.save_webhook_payload(delivery.id, payload)
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        stamp = datetime.now(UTC)
        signature = Webhook(self.secret_for(delivery.owner_id)).sign(delivery.id, stamp, body)
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery.id,
            "webhook-timestamp": str(int(stamp.timestamp())),
            "webhook-signature": signature,
            "user-agent": "kinema-webhooks",
        }
        started = time.perf_counter()
        status_code: int | None = None
        error: str | None = None
        try:
            check_webhook_url(delivery.url, allow_private=self.settings.webhook_allow_private)
            response = self._client.post(delivery.url, content=body, headers=headers)
            status_code = response.status_code
            if not response.is_success:
                error = f"receiver answered {response.status_code}"
        except InvalidInput as exc:
            error = exc.message
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        delivered = error is None
        self.store.record_webhook_attempt(
            delivery.id,
            status_code=status_code,
            error=error,
            duration_ms=round((time.perf_counter() - started) * 1000),
            delivered=delivered,
            retry_delays_s=self.settings.webhook_retry_delays_s,
        )
        if not delivered:
            log.info("webhook %s for task %s not delivered: %s", delivery.id, delivery.task_id, error)
        return delivered


def _iso_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")

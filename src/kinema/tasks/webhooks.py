"""Webhooks: checking a receiver's URL, and the background sender (Standard Webhooks signatures, backoff).

Deliveries are queued in the store in the same transaction as the state change they report; this sender
renders each payload once, signs it with the account's secret and retries with backoff until it is delivered
or the schedule runs out. Every attempt is recorded and visible to the task's owner.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook

from kinema.domain.tasks import Task
from kinema.errors import InvalidInput
from kinema.media.urls import (
    IPAddress,
    URLRefused,
    allow_any_address,
    is_public_address,
    parse_url,
    pinned_client,
    resolve_checked,
)
from kinema.settings import Settings
from kinema.store import Store
from kinema.store.webhooks import WebhookDelivery

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT_S = 10.0


def _refused(url: str, exc: URLRefused) -> InvalidInput:
    hint = (
        "; the operator can allow these with KINEMA_WEBHOOK_ALLOW_PRIVATE"
        if "not a public address" in exc.reason
        else ""
    )
    shown = url if len(url) <= 200 else url[:199] + "…"
    return InvalidInput(
        f"webhook: {shown!r} {exc.reason}{hint}",
        details=[{"field": "webhook", "type": "webhook_url", "message": exc.reason}],
    )


def webhook_target(
    url: str, *, allow_private: bool, deadline: float | None = None
) -> tuple[httpx.URL, list[IPAddress]]:
    """The parsed URL and the checked addresses a webhook may be sent to; InvalidInput otherwise."""
    try:
        parsed = parse_url(url, schemes=("https", "http"))
        policy = allow_any_address if allow_private else is_public_address
        deadline = time.monotonic() + RESOLVE_TIMEOUT_S if deadline is None else deadline
        return parsed, resolve_checked(parsed, policy, deadline)
    except URLRefused as exc:
        raise _refused(url, exc) from None


def check_webhook_url(url: str, *, allow_private: bool) -> str:
    """The URL if it is http(s) to a public address (any when allow_private); InvalidInput otherwise.

    With allow_private the host is not resolved here (it may be a name only the receiver's network
    knows); every delivery resolves and checks it again anyway.
    """
    if allow_private:
        try:
            parse_url(url, schemes=("https", "http"))
        except URLRefused as exc:
            raise _refused(url, exc) from None
        return url
    webhook_target(url, allow_private=False)
    return url


class WebhookSender:
    """A thread that delivers due webhooks; render turns a task into the JSON the API shows for it."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        render: Callable[[Task], dict[str, object]],
        secret_for: Callable[[str], str],
    ) -> None:
        self.store, self.settings, self.render, self.secret_for = store, settings, render, secret_for
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kinema-webhooks", daemon=True)
        self._ssl_context = httpx.create_ssl_context(trust_env=False)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.webhook_poll_s):
            try:
                for delivery in self.store.webhooks.due():
                    if self._stop.is_set():
                        return
                    self.deliver(delivery)
            except Exception:
                log.exception("webhook sender error; continuing")

    def deliver(self, delivery: WebhookDelivery) -> bool:
        """One attempt: render (first time), sign, POST; record the outcome and schedule a retry."""
        payload = delivery.payload
        if payload is None:
            task = self.store.tasks.get(delivery.task_id)
            payload = {"type": f"task.{delivery.event}", "timestamp": _iso_now(), "data": self.render(task)}
            self.store.webhooks.save_payload(delivery.id, payload)
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
            timeout = self.settings.webhook_timeout_s
            deadline = time.monotonic() + timeout
            url, addresses = webhook_target(
                delivery.url, allow_private=self.settings.webhook_allow_private, deadline=deadline
            )
            # The connection goes to the address just checked (Host header and TLS name kept), so DNS
            # cannot send it elsewhere between the check and the connect.
            with pinned_client(
                url, addresses, deadline=deadline, ssl_context=self._ssl_context, timeout=timeout
            ) as client:
                response = client.post(url, content=body, headers=headers)
            status_code = response.status_code
            if not response.is_success:
                error = f"receiver answered {response.status_code}"
        except InvalidInput as exc:
            error = exc.message
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:  # InvalidURL: a bad Location header
            error = f"{type(exc).__name__}: {exc}"[:500]
        delivered = error is None
        self.store.webhooks.record_attempt(
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

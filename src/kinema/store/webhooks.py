"""Webhook deliveries: queued inside a task's transaction together with the state change they report,
then handed to the sender, which records every attempt and schedules the next with backoff."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from kinema.domain.tasks import utcnow
from kinema.store.db import Database, aware, owned
from kinema.store.schema import TaskRow, WebhookAttemptRow, WebhookDeliveryRow

WEBHOOK_EVENTS = ("start", "progress", "completed")
PROGRESS_EVERY = timedelta(seconds=1)  # at most one progress webhook per task per second


@dataclass(frozen=True)
class WebhookAttempt:
    attempt: int
    status_code: int | None
    error: str | None
    duration_ms: int
    created_at: datetime


@dataclass(frozen=True)
class WebhookDelivery:
    id: str
    task_id: str
    owner_id: str
    url: str
    event: str
    payload: dict[str, Any] | None
    status: str
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    history: list[WebhookAttempt]


def _delivery(row: WebhookDeliveryRow, history: list[WebhookAttempt]) -> WebhookDelivery:
    return WebhookDelivery(
        id=row.id,
        task_id=row.task_id,
        owner_id=row.owner_id,
        url=row.url,
        event=row.event,
        payload=row.payload,
        status=row.status,
        attempts=row.attempts,
        next_attempt_at=aware(row.next_attempt_at),
        created_at=aware(row.created_at) or utcnow(),
        delivered_at=aware(row.delivered_at),
        history=history,
    )


def enqueue(session: Session, row: TaskRow, event: str, now: datetime, delivery_id: str) -> None:
    """Queue a delivery of event for the task, if it has a webhook that wants this event."""
    if not row.webhook_url or event not in (row.webhook_events or WEBHOOK_EVENTS):
        return
    if event == "progress":
        last = session.scalar(
            select(func.max(WebhookDeliveryRow.created_at)).where(
                WebhookDeliveryRow.task_id == row.id, WebhookDeliveryRow.event == "progress"
            )
        )
        if last is not None and (aware(last) or now) > now - PROGRESS_EVERY:
            return
    session.add(
        WebhookDeliveryRow(
            id=delivery_id,
            task_id=row.id,
            owner_id=row.owner_id,
            url=row.webhook_url,
            event=event,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )


class WebhookRepo:
    """The sender's side of deliveries: what is due, what each attempt did, what a task's owner sees."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def due(self, limit: int = 20) -> list[WebhookDelivery]:
        """Pending deliveries whose next attempt is now or past, the longest waiting first."""
        now = utcnow()
        with self.db.session() as session:
            rows = session.scalars(
                select(WebhookDeliveryRow)
                .where(WebhookDeliveryRow.status == "pending", WebhookDeliveryRow.next_attempt_at <= now)
                .order_by(WebhookDeliveryRow.next_attempt_at)
                .limit(limit)
            )
            return [_delivery(r, []) for r in rows]

    def save_payload(self, delivery_id: str, payload: dict[str, Any]) -> None:
        """Keep the body rendered at the first attempt, so every retry sends the same bytes."""
        with self.db.session() as session:
            session.execute(
                update(WebhookDeliveryRow).where(WebhookDeliveryRow.id == delivery_id).values(payload=payload)
            )

    def record_attempt(
        self,
        delivery_id: str,
        *,
        status_code: int | None,
        error: str | None,
        duration_ms: int,
        delivered: bool,
        retry_delays_s: Sequence[float],
    ) -> None:
        """Log an attempt; schedule the next one with backoff, or mark it delivered / given up."""
        now = utcnow()
        with self.db.session() as session:
            row = session.get(WebhookDeliveryRow, delivery_id)
            if row is None:
                return
            row.attempts += 1
            session.add(
                WebhookAttemptRow(
                    delivery_id=delivery_id,
                    attempt=row.attempts,
                    status_code=status_code,
                    error=error,
                    duration_ms=duration_ms,
                    created_at=now,
                )
            )
            if delivered:
                row.status, row.delivered_at, row.next_attempt_at = "delivered", now, None
            elif row.attempts > len(retry_delays_s):
                row.status, row.next_attempt_at = "failed", None
            else:
                row.next_attempt_at = now + timedelta(seconds=retry_delays_s[row.attempts - 1])

    def for_task(self, task_id: str, *, owner: str | None) -> list[WebhookDelivery]:
        """The task's deliveries with their attempts, oldest first; NotFound unless owner owns the task."""
        with self.db.session() as session:
            owned(session.get(TaskRow, task_id), owner, "task", task_id)
            rows = list(
                session.scalars(
                    select(WebhookDeliveryRow)
                    .where(WebhookDeliveryRow.task_id == task_id)
                    .order_by(WebhookDeliveryRow.created_at, WebhookDeliveryRow.id)
                )
            )
            attempts = session.scalars(
                select(WebhookAttemptRow)
                .where(WebhookAttemptRow.delivery_id.in_([r.id for r in rows]))
                .order_by(WebhookAttemptRow.id)
            )
            history: dict[str, list[WebhookAttempt]] = {}
            for a in attempts:
                history.setdefault(a.delivery_id, []).append(
                    WebhookAttempt(
                        a.attempt, a.status_code, a.error, a.duration_ms, aware(a.created_at) or utcnow()
                    )
                )
            return [_delivery(r, history.get(r.id, [])) for r in rows]

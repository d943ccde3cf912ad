"""Webhook deliveries inside a store transaction: queued together with the state change they report."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kinema.store.db import aware
from kinema.store.schema import TaskRow, WebhookDeliveryRow

WEBHOOK_EVENTS = ("start", "progress", "completed")
PROGRESS_EVERY = timedelta(seconds=1)  # at most one progress webhook per task per second


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

"""The task store's tables (SQLAlchemy 2 declarative); Alembic migrations create and evolve them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {  # noqa: RUF012
        dict[str, Any]: JSON,
        list[str]: JSON,
        datetime: DateTime(timezone=True),
    }


class TaskRow(Base):
    """One run of an app. owner_id is the account that submitted it (every read filters on it)."""

    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(40))
    app: Mapped[str] = mapped_column(String(120))
    version: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(16))
    input: Mapped[dict[str, Any]]
    output_file_id: Mapped[str | None] = mapped_column(String(40))
    output_meta: Mapped[dict[str, Any] | None]
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[dict[str, Any] | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(80))
    heartbeat_at: Mapped[datetime | None]  # last time the worker running it said it is alive
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_events: Mapped[list[str] | None] = mapped_column(JSON)
    deadline_at: Mapped[datetime | None]
    cancel_reason: Mapped[str | None] = mapped_column(String(16))  # user | deadline
    # What a provider's engine saved to resume its work (e.g. Google's operation) if the task runs again.
    # Internal: kept through requeues and after the end (for debugging), never shown by the API.
    provider_state: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]

    __table_args__ = (
        Index("ix_tasks_owner_created", "owner_id", "created_at", "id"),
        Index("ix_tasks_status_created", "status", "created_at"),
    )


class TaskEventRow(Base):
    """What happened to a task, in order: the SSE stream replays these (id is the SSE event id)."""

    __tablename__ = "task_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # status | progress | log | done
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class FileRow(Base):
    """An uploaded input or a produced output, kept in storage under key."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(40), index=True)
    purpose: Mapped[str] = mapped_column(String(16))  # input | output
    key: Mapped[str] = mapped_column(String(255))
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(80))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]


class ApiKeyRow(Base):
    """An API key, stored only as a keyed hash of its secret."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(40), index=True)
    name: Mapped[str] = mapped_column(String(120))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str | None] = mapped_column(String(16))  # the key's first characters, to recognise it
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class UserRow(Base):
    """An account: owns keys, tasks, files and a balance."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]  # touched to lock the account while a hold is placed


class LedgerEntryRow(Base):
    """Append-only money movements in micro-units of the currency (never floats).

    credit (+) and charge (-) move the balance; hold (-) and release (+) only reserve. A task has at most one
    entry of each kind, so a race between completion and cancel can never charge twice.
    """

    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    account_id: Mapped[str] = mapped_column(String(40), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # credit | charge | hold | release
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(8))
    task_id: Mapped[str | None] = mapped_column(String(40))
    app: Mapped[str | None] = mapped_column(String(120))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]

    __table_args__ = (UniqueConstraint("task_id", "kind", name="uq_ledger_task_kind"),)


class IdempotencyKeyRow(Base):
    """A client's Idempotency-Key on run: the same key and body return the same task until it expires."""

    __tablename__ = "idempotency_keys"

    owner_id: Mapped[str] = mapped_column(String(40))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[str] = mapped_column(String(40))
    expires_at: Mapped[datetime]

    __table_args__ = (PrimaryKeyConstraint("owner_id", "key"),)


class WebhookDeliveryRow(Base):
    """One event to deliver to a task's webhook; retried with backoff until delivered or given up."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the webhook-id header (msg_...)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    owner_id: Mapped[str] = mapped_column(String(40))
    url: Mapped[str] = mapped_column(Text)
    event: Mapped[str] = mapped_column(String(16))  # start | progress | completed
    payload: Mapped[dict[str, Any] | None]  # rendered at the first attempt, then sent unchanged
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_webhook_due", "status", "next_attempt_at"),)


class WebhookAttemptRow(Base):
    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]


class RateLimitRow(Base):
    """Requests counted per key and fixed window (window = start time // period), for rate limits that hold
    across API processes; a key keeps at most its current and previous window."""

    __tablename__ = "rate_limits"

    key: Mapped[str] = mapped_column(String(200))
    window: Mapped[int] = mapped_column(BigInteger)
    hits: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (PrimaryKeyConstraint("key", "window"),)

"""The task store: tasks, their event log, files and API keys, over SQLAlchemy (SQLite or PostgreSQL).

Every state change is a conditional UPDATE (`... WHERE status = 'queued'`), so two workers or a worker and
a cancel racing on the same task cannot both win.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from kinema.billing.pricing import to_micros
from kinema.domain.outputs import OutputMeta
from kinema.domain.tasks import FINISHED, Task, TaskError, TaskProgress, TaskStatus, new_id, utcnow
from kinema.errors import BadRequest, Conflict, NotFound
from kinema.store import ledger, webhooks
from kinema.store.db import aware, rowcount
from kinema.store.schema import (
    ApiKeyRow,
    FileRow,
    IdempotencyKeyRow,
    LedgerEntryRow,
    TaskEventRow,
    TaskRow,
    UserRow,
    WebhookAttemptRow,
    WebhookDeliveryRow,
)

Owned = TypeVar("Owned", TaskRow, FileRow, ApiKeyRow)


def _owned(row: Owned | None, owner: str | None, what: str, ref: str) -> Owned:
    """The row when it exists and belongs to owner (any owner when None); NotFound otherwise, never 403."""
    if row is None or (owner is not None and row.owner_id != owner):
        raise NotFound(f"no {what} {ref!r}")
    return row


@dataclass(frozen=True)
class TaskEvent:
    """One entry of a task's event log; id orders events and is the SSE event id."""

    id: int
    task_id: str
    kind: str
    data: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class StoredFile:
    id: str
    owner_id: str
    purpose: str
    key: str
    filename: str
    content_type: str
    size_bytes: int
    created_at: datetime


@dataclass(frozen=True)
class ApiKey:
    """An authenticated key: whose it is and whether it may use the admin routes."""

    id: str
    owner_id: str
    name: str
    is_admin: bool


@dataclass(frozen=True)
class ApiKeyInfo:
    id: str
    name: str
    prefix: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class User:
    id: str
    name: str
    is_admin: bool
    created_at: datetime


@dataclass(frozen=True)
class Usage:
    app: str
    day: str
    tasks: int
    cost_micros: int


@dataclass(frozen=True)
class AccountSummary:
    user: User
    balance: ledger.Balance
    usage: list[Usage]


@dataclass(frozen=True)
class Submission:
    """A created task, or the original one when an Idempotency-Key was replayed."""

    task: Task
    replayed: bool = False


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


@dataclass(frozen=True)
class TaskPage:
    tasks: list[Task]
    next_cursor: str | None


@dataclass(frozen=True)
class Recovery:
    requeued: list[str]
    failed: list[str]


def task_from_row(row: TaskRow) -> Task:
    error = TaskError(code=row.error_code, message=row.error_message or "") if row.error_code else None
    return Task(
        id=row.id,
        owner=row.owner_id,
        app=row.app,
        version=row.version,
        status=TaskStatus(row.status),
        input=row.input,
        output_meta=OutputMeta.model_validate(row.output_meta) if row.output_meta else None,
        error=error,
        progress=TaskProgress.model_validate(row.progress) if row.progress else None,
        created_at=aware(row.created_at) or utcnow(),
        started_at=aware(row.started_at),
        completed_at=aware(row.completed_at),
        output_file=row.output_file_id,
    )


CANCELLED_BEFORE_START = TaskError(code="cancelled", message="the task was cancelled before it started")
DEADLINE_ERROR = TaskError(code="deadline_exceeded", message="the Cancel-After deadline passed")


def _key_info(row: ApiKeyRow) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        created_at=aware(row.created_at) or utcnow(),
        last_used_at=aware(row.last_used_at),
        revoked_at=aware(row.revoked_at),
    )


def _user(row: UserRow) -> User:
    return User(id=row.id, name=row.name, is_admin=row.is_admin, created_at=aware(row.created_at) or utcnow())


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


def file_from_row(row: FileRow) -> StoredFile:
    return StoredFile(
        id=row.id,
        owner_id=row.owner_id,
        purpose=row.purpose,
        key=row.key,
        filename=row.filename,
        content_type=row.content_type,
        size_bytes=row.size_bytes,
        created_at=aware(row.created_at) or utcnow(),
    )


def encode_cursor(created_at: datetime, task_id: str) -> str:
    raw = f"{aware(created_at).isoformat()}|{task_id}"  # type: ignore[union-attr]
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, task_id = raw.split("|", 1)
        return datetime.fromisoformat(stamp), task_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("invalid cursor; pass the next_cursor of a previous page") from None


class TaskStore:
    """All reads and writes of tasks, events, files and keys. Thread-safe: a session per call."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    # Tasks ---------------------------------------------------------------------------------------

    def create_task(
        self, *, owner: str, app: str, version: str, input: dict[str, Any], **options: Any
    ) -> Task:
        """Insert a queued task (see submit for the options)."""
        return self.submit(owner=owner, app=app, version=version, input=input, **options).task

    def submit(
        self,
        *,
        owner: str,
        app: str,
        version: str,
        input: dict[str, Any],
        hold_micros: int | None = None,
        currency: str = "USD",
        webhook_url: str | None = None,
        webhook_events: list[str] | None = None,
        deadline_at: datetime | None = None,
        idempotency_key: str | None = None,
        request_hash: str = "",
        idempotency_ttl_s: int = 24 * 3600,
    ) -> Submission:
        """Queue a task in one transaction with its hold and idempotency record.

        With an Idempotency-Key seen before (and not expired) the original task comes back, or Conflict if the
        request differs. Two concurrent requests with one key create one task: the loser's insert fails on the
        key's primary key, rolls back (hold included) and then finds the winner's record.
        """
        for _ in range(3):
            try:
                return self._submit(
                    owner,
                    app,
                    version,
                    input,
                    hold_micros,
                    currency,
                    webhook_url,
                    webhook_events,
                    deadline_at,
                    idempotency_key,
                    request_hash,
                    idempotency_ttl_s,
                )
            except IntegrityError:
                if idempotency_key is None:
                    raise
        raise Conflict("could not record the Idempotency-Key; retry the request")

    def _submit(
        self,
        owner: str,
        app: str,
        version: str,
        input: dict[str, Any],
        hold_micros: int | None,
        currency: str,
        webhook_url: str | None,
        webhook_events: list[str] | None,
        deadline_at: datetime | None,
        idempotency_key: str | None,
        request_hash: str,
        idempotency_ttl_s: int,
    ) -> Submission:
        now = utcnow()
        with self.session() as session:
            if idempotency_key is not None:
                seen = session.get(IdempotencyKeyRow, (owner, idempotency_key))
                if seen is not None and (aware(seen.expires_at) or now) > now:
                    if seen.request_hash != request_hash:
                        raise Conflict(
                            "this Idempotency-Key was already used with a different request",
                            details={"task_id": seen.task_id},
                        )
                    original = session.get(TaskRow, seen.task_id)
                    if original is not None:
                        return Submission(task_from_row(original), replayed=True)
                if seen is not None:
                    session.delete(seen)
                    session.flush()
            row = TaskRow(
                id=new_id("tsk"),
                owner_id=owner,
                app=app,
                version=version,
                status=TaskStatus.queued.value,
                input=input,
                cancel_requested=False,
                attempts=0,
                webhook_url=webhook_url,
                webhook_events=webhook_events,
                deadline_at=deadline_at,
                created_at=now,
                updated_at=now,
            )
            if hold_micros is not None:
                ledger.place_hold(
                    session,
                    account=owner,
                    task_id=row.id,
                    app=app,
                    amount=hold_micros,
                    currency=currency,
                    now=now,
                )
            session.add(row)
            if idempotency_key is not None:
                session.add(
                    IdempotencyKeyRow(
                        owner_id=owner,
                        key=idempotency_key,
                        request_hash=request_hash,
                        task_id=row.id,
                        expires_at=now + timedelta(seconds=idempotency_ttl_s),
                    )
                )
            session.flush()
            self._event(session, row.id, "status", {"status": "queued"})
            return Submission(task_from_row(row))

    def get_task(self, task_id: str, *, owner: str | None = None) -> Task:
        """The task, if it exists and (when owner is given) belongs to owner; otherwise NotFound."""
        with self.session() as session:
            return task_from_row(_owned(session.get(TaskRow, task_id), owner, "task", task_id))

    def list_tasks(
        self,
        *,
        owner: str | None,
        status: Sequence[TaskStatus] = (),
        app: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> TaskPage:
        """Newest first, keyset-paginated on (created_at, id)."""
        query = select(TaskRow)
        if owner is not None:
            query = query.where(TaskRow.owner_id == owner)
        if status:
            query = query.where(TaskRow.status.in_([s.value for s in status]))
        if app:
            query = query.where(TaskRow.app == app)
        if cursor:
            created_at, task_id = decode_cursor(cursor)
            query = query.where(
                or_(
                    TaskRow.created_at < created_at,
                    (TaskRow.created_at == created_at) & (TaskRow.id < task_id),
                )
            )
        query = query.order_by(TaskRow.created_at.desc(), TaskRow.id.desc()).limit(limit + 1)
        with self.session() as session:
            rows = list(session.scalars(query))
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
        return TaskPage(tasks=[task_from_row(r) for r in rows], next_cursor=next_cursor)

    def claim_next(
        self, worker_id: str, apps: Sequence[str] | None = None, *, max_running_per_owner: int | None = None
    ) -> Task | None:
        """Atomically move the oldest queued task to running for this worker; None when none is queued.

        With max_running_per_owner, tasks of accounts already running that many wait in the queue.
        """
        for _ in range(5):
            with self.session() as session:
                query = select(TaskRow.id).where(TaskRow.status == TaskStatus.queued.value)
                if apps is not None:
                    query = query.where(TaskRow.app.in_(apps))
                if max_running_per_owner is not None:
                    busy = (
                        select(TaskRow.owner_id)
                        .where(TaskRow.status == TaskStatus.running.value)
                        .group_by(TaskRow.owner_id)
                        .having(func.count() >= max_running_per_owner)
                    )
                    query = query.where(TaskRow.owner_id.not_in(busy))
                task_id = session.scalar(query.order_by(TaskRow.created_at, TaskRow.id).limit(1))
                if task_id is None:
                    return None
                now = utcnow()
                claimed = rowcount(
                    session,
                    update(TaskRow)
                    .where(TaskRow.id == task_id, TaskRow.status == TaskStatus.queued.value)
                    .values(
                        status=TaskStatus.running.value,
                        worker_id=worker_id,
                        started_at=now,
                        updated_at=now,
                        attempts=TaskRow.attempts + 1,
                    ),
                )
                if claimed:
                    self._event(session, task_id, "status", {"status": "running"})
                    row = session.get(TaskRow, task_id, populate_existing=True)
                    assert row is not None
                    webhooks.enqueue(session, row, "start", now, new_id("msg"))
                    return task_from_row(row)
            # another worker took it between the select and the update; try the next one
        return None

    def set_progress(self, task_id: str, progress: TaskProgress) -> None:
        data = progress.model_dump(exclude_none=True)
        now = utcnow()
        with self.session() as session:
            rowcount(
                session,
                update(TaskRow)
                .where(TaskRow.id == task_id, TaskRow.status == TaskStatus.running.value)
                .values(progress=data, updated_at=now),
            )
            self._event(session, task_id, "progress", data)
            row = session.get(TaskRow, task_id)
            if row is not None and row.webhook_url:
                webhooks.enqueue(session, row, "progress", now, new_id("msg"))

    def log(self, task_id: str, message: str) -> None:
        with self.session() as session:
            self._event(session, task_id, "log", {"message": message})

    def finish(self, task: Task, *, charge: bool = True) -> bool:
        """Record a running task's end state, settle its money and queue its webhook, in one transaction.

        A completed task is charged its output_meta.billing cost when charge is true (billing switched on).
        False if it was no longer running (nothing is written, nothing is charged).
        """
        now = utcnow()
        error = task.error
        with self.session() as session:
            row = session.get(TaskRow, task.id)
            if row is not None and task.status is TaskStatus.cancelled and row.cancel_reason == "deadline":
                error = DEADLINE_ERROR
            values: dict[str, Any] = {
                "status": task.status.value,
                "output_file_id": task.output_file,
                "output_meta": task.output_meta.model_dump(mode="json") if task.output_meta else None,
                "error_code": error.code if error else None,
                "error_message": error.message if error else None,
                "completed_at": task.completed_at or now,
                "updated_at": now,
            }
            done = rowcount(
                session,
                update(TaskRow)
                .where(TaskRow.id == task.id, TaskRow.status == TaskStatus.running.value)
                .values(**values),
            )
            if done:
                row = session.get(TaskRow, task.id, populate_existing=True)
                assert row is not None
                billing = task.output_meta.billing if task.output_meta else None
                completed = charge and billing is not None and task.status is TaskStatus.completed
                amount = to_micros(billing.cost) if completed and billing is not None else None
                self._ended(
                    session,
                    row,
                    task.status,
                    error,
                    now,
                    charge=amount,
                    currency=billing.currency if billing else "USD",
                )
            return bool(done)

    def _ended(
        self,
        session: Session,
        row: TaskRow,
        status: TaskStatus,
        error: TaskError | None,
        now: datetime,
        *,
        charge: int | None = None,
        currency: str = "USD",
    ) -> None:
        """Everything that follows a task's end: events, money, the completed webhook."""
        self._finished_events(session, row.id, status, error)
        ledger.settle(session, row, charge=charge, currency=currency, now=now)
        webhooks.enqueue(session, row, "completed", now, new_id("msg"))

    def requeue(self, task_id: str) -> bool:
        """Put a running task back in the queue (its worker is shutting down)."""
        with self.session() as session:
            done = rowcount(
                session,
                update(TaskRow)
                .where(TaskRow.id == task_id, TaskRow.status == TaskStatus.running.value)
                .values(status=TaskStatus.queued.value, worker_id=None, progress=None, updated_at=utcnow()),
            )
            if done:
                self._event(session, task_id, "status", {"status": "queued"})
                self._event(session, task_id, "log", {"message": "worker stopped; task requeued"})
            return bool(done)

    def request_cancel(self, task_id: str, *, owner: str | None) -> Task:
        """Cancel a queued task at once, or flag a running one for its worker; finished tasks: Conflict."""
        with self.session() as session:
            row = _owned(session.get(TaskRow, task_id, with_for_update=True), owner, "task", task_id)
            now = utcnow()
            if row.status == TaskStatus.queued.value:
                done = rowcount(
                    session,
                    update(TaskRow)
                    .where(TaskRow.id == task_id, TaskRow.status == TaskStatus.queued.value)
                    .values(
                        status=TaskStatus.cancelled.value,
                        cancel_requested=True,
                        error_code=CANCELLED_BEFORE_START.code,
                        error_message=CANCELLED_BEFORE_START.message,
                        completed_at=now,
                        updated_at=now,
                    ),
                )
                if done:
                    session.refresh(row)
                    self._ended(session, row, TaskStatus.cancelled, CANCELLED_BEFORE_START, now)
            elif row.status == TaskStatus.running.value:
                rowcount(
                    session,
                    update(TaskRow)
                    .where(TaskRow.id == task_id, TaskRow.status == TaskStatus.running.value)
                    .values(cancel_requested=True, cancel_reason="user", updated_at=now),
                )
                self._event(session, task_id, "log", {"message": "cancellation requested"})
            else:
                raise Conflict(f"task {task_id} is already {row.status}", details={"status": row.status})
            session.refresh(row)
            return task_from_row(row)

    def cancel_requested(self, task_ids: Sequence[str]) -> set[str]:
        """Which of these running tasks someone asked to cancel."""
        if not task_ids:
            return set()
        with self.session() as session:
            query = select(TaskRow.id).where(TaskRow.id.in_(task_ids), TaskRow.cancel_requested.is_(True))
            return set(session.scalars(query))

    def recover_running(self, max_attempts: int, *, worker_prefix: str | None = None) -> Recovery:
        """Tasks left running by a process that died: requeue them, or fail them after max_attempts."""
        requeued: list[str] = []
        failed: list[str] = []
        with self.session() as session:
            query = select(TaskRow).where(TaskRow.status == TaskStatus.running.value)
            if worker_prefix is not None:
                query = query.where(TaskRow.worker_id.startswith(worker_prefix))
            for row in session.scalars(query.with_for_update()):
                now = utcnow()
                if row.cancel_requested or row.attempts >= max_attempts:
                    status = TaskStatus.cancelled if row.cancel_requested else TaskStatus.failed
                    error = (
                        TaskError(code="cancelled", message="the task was cancelled")
                        if row.cancel_requested
                        else TaskError(
                            code="worker_lost",
                            message=f"the worker running this task stopped {row.attempts} time(s); giving up",
                        )
                    )
                    row.status, row.error_code, row.error_message = status.value, error.code, error.message
                    row.completed_at = row.updated_at = now
                    self._ended(session, row, status, error, now)
                    failed.append(row.id)
                else:
                    row.status, row.worker_id, row.progress, row.updated_at = "queued", None, None, now
                    self._event(session, row.id, "status", {"status": "queued"})
                    self._event(
                        session, row.id, "log", {"message": "the server restarted mid-task; task requeued"}
                    )
                    requeued.append(row.id)
        return Recovery(requeued=requeued, failed=failed)

    def counts_by_status(self) -> dict[str, int]:
        with self.session() as session:
            rows = session.execute(select(TaskRow.status, func.count()).group_by(TaskRow.status)).all()
        counts = {s.value: 0 for s in TaskStatus}
        counts.update({status: count for status, count in rows})
        return counts

    def expire_deadlines(self) -> list[str]:
        """Apply Cancel-After: queued tasks past their deadline end now; running ones are flagged to stop."""
        now = utcnow()
        expired: list[str] = []
        with self.session() as session:
            query = select(TaskRow).where(
                TaskRow.deadline_at.is_not(None),
                TaskRow.deadline_at < now,
                TaskRow.status.in_([TaskStatus.queued.value, TaskStatus.running.value]),
                or_(TaskRow.cancel_reason.is_(None), TaskRow.status == TaskStatus.queued.value),
            )
            for row in session.scalars(query.with_for_update()):
                if row.status == TaskStatus.queued.value:
                    row.status, row.completed_at, row.updated_at = TaskStatus.cancelled.value, now, now
                    row.error_code, row.error_message = DEADLINE_ERROR.code, DEADLINE_ERROR.message
                    row.cancel_requested, row.cancel_reason = True, "deadline"
                    self._ended(session, row, TaskStatus.cancelled, DEADLINE_ERROR, now)
                else:
                    row.cancel_requested, row.cancel_reason, row.updated_at = True, "deadline", now
                    self._event(session, row.id, "log", {"message": "Cancel-After deadline passed; stopping"})
                expired.append(row.id)
        return expired

    # Events --------------------------------------------------------------------------------------

    def events_after(self, task_id: str, after: int = 0, limit: int = 500) -> list[TaskEvent]:
        with self.session() as session:
            rows = session.scalars(
                select(TaskEventRow)
                .where(TaskEventRow.task_id == task_id, TaskEventRow.id > after)
                .order_by(TaskEventRow.id)
                .limit(limit)
            )
            return [TaskEvent(r.id, r.task_id, r.kind, r.data, aware(r.created_at) or utcnow()) for r in rows]

    def _event(self, session: Session, task_id: str, kind: str, data: dict[str, Any]) -> None:
        session.add(TaskEventRow(task_id=task_id, kind=kind, data=data, created_at=utcnow()))

    def _finished_events(
        self, session: Session, task_id: str, status: TaskStatus, error: TaskError | None
    ) -> None:
        assert status in FINISHED
        if error is not None:
            self._event(session, task_id, "log", {"message": f"{status.value}: {error.message}"})
        self._event(session, task_id, "status", {"status": status.value})
        self._event(session, task_id, "done", {"status": status.value})

    # Files ---------------------------------------------------------------------------------------

    def add_file(
        self,
        *,
        owner: str,
        purpose: str,
        key: str,
        filename: str,
        content_type: str,
        size_bytes: int,
        file_id: str | None = None,
    ) -> StoredFile:
        row = FileRow(
            id=file_id or new_id("file"),
            owner_id=owner,
            purpose=purpose,
            key=key,
            filename=filename,
            content_type=content_type,
            size_bytes=size_bytes,
            created_at=utcnow(),
        )
        with self.session() as session:
            session.add(row)
        return file_from_row(row)

    def get_file(self, file_id: str, *, owner: str | None = None) -> StoredFile:
        with self.session() as session:
            return file_from_row(_owned(session.get(FileRow, file_id), owner, "file", file_id))

    # API keys ------------------------------------------------------------------------------------

    def add_key(
        self, *, owner: str, name: str, key_hash: str, is_admin: bool = False, prefix: str | None = None
    ) -> ApiKeyInfo:
        row = ApiKeyRow(
            id=new_id("key"),
            owner_id=owner,
            name=name,
            key_hash=key_hash,
            prefix=prefix,
            is_admin=is_admin,
            created_at=utcnow(),
        )
        with self.session() as session:
            session.add(row)
        return _key_info(row)

    def find_key(self, key_hash: str) -> ApiKey | None:
        """The live key with this hash, with its account's admin role."""
        with self.session() as session:
            found = session.execute(
                select(ApiKeyRow, UserRow.is_admin)
                .outerjoin(UserRow, UserRow.id == ApiKeyRow.owner_id)
                .where(ApiKeyRow.key_hash == key_hash, ApiKeyRow.revoked_at.is_(None))
            ).first()
            if found is None:
                return None
            row, user_admin = found
            return ApiKey(row.id, row.owner_id, row.name, bool(row.is_admin or user_admin))

    def touch_key(self, key_id: str) -> None:
        """Record that a key was just used."""
        with self.session() as session:
            session.execute(update(ApiKeyRow).where(ApiKeyRow.id == key_id).values(last_used_at=utcnow()))

    def list_keys(self, owner: str) -> list[ApiKeyInfo]:
        with self.session() as session:
            rows = session.scalars(
                select(ApiKeyRow).where(ApiKeyRow.owner_id == owner).order_by(ApiKeyRow.created_at)
            )
            return [_key_info(r) for r in rows]

    def revoke_key(self, owner: str, key_id: str) -> ApiKeyInfo:
        """Revoke one of owner's keys (NotFound for anyone else's)."""
        with self.session() as session:
            row = _owned(session.get(ApiKeyRow, key_id), owner, "API key", key_id)
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return _key_info(row)

    # Accounts and money ---------------------------------------------------------------------------

    def create_user(self, name: str, *, is_admin: bool = False, user_id: str | None = None) -> User:
        now = utcnow()
        row = UserRow(
            id=user_id or new_id("usr"), name=name, is_admin=is_admin, created_at=now, updated_at=now
        )
        try:
            with self.session() as session:
                session.add(row)
        except IntegrityError:
            raise Conflict(f"a user named {name!r} already exists") from None
        return _user(row)

    def ensure_user(self, user_id: str, name: str, *, is_admin: bool = False) -> User:
        with self.session() as session:
            row = session.get(UserRow, user_id)
            if row is not None:
                return _user(row)
        return self.create_user(name, is_admin=is_admin, user_id=user_id)

    def get_user(self, ref: str) -> User:
        """A user by id or by name."""
        with self.session() as session:
            row = session.get(UserRow, ref) or session.scalar(select(UserRow).where(UserRow.name == ref))
            if row is None:
                raise NotFound(f"no user {ref!r}")
            return _user(row)

    def list_users(self) -> list[User]:
        with self.session() as session:
            return [_user(r) for r in session.scalars(select(UserRow).order_by(UserRow.created_at))]

    def credit(
        self, account: str, amount_micros: int, *, currency: str = "USD", note: str | None = None
    ) -> None:
        with self.session() as session:
            ledger.credit(
                session, account=account, amount=amount_micros, currency=currency, note=note, now=utcnow()
            )

    def account(self, account: str, *, days: int = 30) -> AccountSummary:
        """Balance, holds and usage by app and day, all derived from the ledger."""
        since = utcnow() - timedelta(days=days)
        with self.session() as session:
            row = session.get(UserRow, account)
            if row is None:
                raise NotFound(f"no account {account!r}")
            current = ledger.balance(session, account)
            charges = session.execute(
                select(LedgerEntryRow.app, LedgerEntryRow.amount_micros, LedgerEntryRow.created_at).where(
                    LedgerEntryRow.account_id == account,
                    LedgerEntryRow.kind == "charge",
                    LedgerEntryRow.created_at >= since,
                )
            ).all()
        usage: dict[tuple[str, str], list[int]] = {}
        for app, amount, created in charges:
            day = (aware(created) or since).date().isoformat()
            bucket = usage.setdefault((app or "", day), [0, 0])
            bucket[0] += 1
            bucket[1] += -amount
        rows = [Usage(app=a, day=d, tasks=n, cost_micros=c) for (a, d), (n, c) in sorted(usage.items())]
        return AccountSummary(user=_user(row), balance=current, usage=rows)

    def ledger_entries(self, account: str) -> list[dict[str, Any]]:
        """The account's ledger, oldest first (for audits and tests)."""
        with self.session() as session:
            rows = session.scalars(
                select(LedgerEntryRow).where(LedgerEntryRow.account_id == account).order_by(LedgerEntryRow.id)
            )
            return [
                {"kind": r.kind, "amount_micros": r.amount_micros, "task_id": r.task_id, "app": r.app}
                for r in rows
            ]

    # Webhooks -------------------------------------------------------------------------------------

    def due_webhooks(self, limit: int = 20) -> list[WebhookDelivery]:
        now = utcnow()
        with self.session() as session:
            rows = session.scalars(
                select(WebhookDeliveryRow)
                .where(WebhookDeliveryRow.status == "pending", WebhookDeliveryRow.next_attempt_at <= now)
                .order_by(WebhookDeliveryRow.next_attempt_at)
                .limit(limit)
            )
            return [_delivery(r, []) for r in rows]

    def save_webhook_payload(self, delivery_id: str, payload: dict[str, Any]) -> None:
        with self.session() as session:
            session.execute(
                update(WebhookDeliveryRow).where(WebhookDeliveryRow.id == delivery_id).values(payload=payload)
            )

    def record_webhook_attempt(
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
        with self.session() as session:
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

    def task_webhooks(self, task_id: str, *, owner: str | None) -> list[WebhookDelivery]:
        self.get_task(task_id, owner=owner)
        with self.session() as session:
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

    def has_admin_key(self) -> bool:
        with self.session() as session:
            query = select(ApiKeyRow.id).where(ApiKeyRow.is_admin.is_(True), ApiKeyRow.revoked_at.is_(None))
            return session.scalar(query.limit(1)) is not None

"""The task store: tasks, their event log, files and API keys, over SQLAlchemy (SQLite or PostgreSQL).

Every state change is a conditional UPDATE (`... WHERE status = 'queued'`), so two workers or a worker and
a cancel racing on the same task cannot both win.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Update, func, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from kinema.apps.schema import OutputMeta
from kinema.errors import BadRequest, Conflict, NotFound
from kinema.store.schema import ApiKeyRow, FileRow, TaskEventRow, TaskRow
from kinema.tasks.models import FINISHED, Task, TaskError, TaskProgress, TaskStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; they were written in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _rowcount(session: Session, statement: Update) -> int:
    """Rows a conditional UPDATE changed: 0 means another actor got there first."""
    result = cast(CursorResult[Any], session.execute(statement))
    return result.rowcount


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


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
    id: str
    owner_id: str
    name: str
    is_admin: bool


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
        created_at=_aware(row.created_at) or utcnow(),
        started_at=_aware(row.started_at),
        completed_at=_aware(row.completed_at),
        output_file=row.output_file_id,
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
        created_at=_aware(row.created_at) or utcnow(),
    )


def encode_cursor(created_at: datetime, task_id: str) -> str:
    raw = f"{_aware(created_at).isoformat()}|{task_id}"  # type: ignore[union-attr]
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

    def create_task(self, *, owner: str, app: str, version: str, input: dict[str, Any]) -> Task:
        """Insert a queued task and its first event."""
        now = utcnow()
        row = TaskRow(
            id=new_id("tsk"),
            owner_id=owner,
            app=app,
            version=version,
            status=TaskStatus.queued.value,
            input=input,
            cancel_requested=False,
            attempts=0,
            created_at=now,
            updated_at=now,
        )
        with self.session() as session:
            session.add(row)
            session.flush()
            self._event(session, row.id, "status", {"status": "queued"})
            return task_from_row(row)

    def get_task(self, task_id: str, *, owner: str | None = None) -> Task:
        """The task, if it exists and (when owner is given) belongs to owner; otherwise NotFound."""
        with self.session() as session:
            row = session.get(TaskRow, task_id)
            if row is None or (owner is not None and row.owner_id != owner):
                raise NotFound(f"no task {task_id!r}")
            return task_from_row(row)

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

    def claim_next(self, worker_id: str, apps: Sequence[str] | None = None) -> Task | None:
        """Atomically move the oldest queued task to running for this worker; None when none is queued."""
        for _ in range(5):
            with self.session() as session:
                query = select(TaskRow.id).where(TaskRow.status == TaskStatus.queued.value)
                if apps is not None:
                    query = query.where(TaskRow.app.in_(apps))
                task_id = session.scalar(query.order_by(TaskRow.created_at, TaskRow.id).limit(1))
                if task_id is None:
                    return None
                now = utcnow()
                claimed = _rowcount(
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
                    return task_from_row(row)
            # another worker took it between the select and the update; try the next one
        return None

    def set_progress(self, task_id: str, progress: TaskProgress) -> None:
        data = progress.model_dump(exclude_none=True)
        with self.session() as session:
            _rowcount(
                session,
                update(TaskRow)
                .where(TaskRow.id == task_id, TaskRow.status == TaskStatus.running.value)
                .values(progress=data, updated_at=utcnow()),
            )
            self._event(session, task_id, "progress", data)

    def log(self, task_id: str, message: str) -> None:
        with self.session() as session:
            self._event(session, task_id, "log", {"message": message})

    def finish(self, task: Task) -> bool:
        """Record a running task's end state; False if it was no longer running (nothing is written)."""
        now = utcnow()
        values: dict[str, Any] = {
            "status": task.status.value,
            "output_file_id": task.output_file,
            "output_meta": task.output_meta.model_dump(mode="json") if task.output_meta else None,
            "error_code": task.error.code if task.error else None,
            "error_message": task.error.message if task.error else None,
            "completed_at": task.completed_at or now,
            "updated_at": now,
        }
        with self.session() as session:
            done = _rowcount(
                session,
                update(TaskRow)
                .where(TaskRow.id == task.id, TaskRow.status == TaskStatus.running.value)
                .values(**values),
            )
            if done:
                self._finished_events(session, task.id, task.status, task.error)
            return bool(done)

    def requeue(self, task_id: str) -> bool:
        """Put a running task back in the queue (its worker is shutting down)."""
        with self.session() as session:
            done = _rowcount(
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
            row = session.get(TaskRow, task_id, with_for_update=True)
            if row is None or (owner is not None and row.owner_id != owner):
                raise NotFound(f"no task {task_id!r}")
            now = utcnow()
            if row.status == TaskStatus.queued.value:
                done = _rowcount(
                    session,
                    update(TaskRow)
                    .where(TaskRow.id == task_id, TaskRow.status == TaskStatus.queued.value)
                    .values(
                        status=TaskStatus.cancelled.value,
                        cancel_requested=True,
                        error_code="cancelled",
                        error_message="the task was cancelled before it started",
                        completed_at=now,
                        updated_at=now,
                    ),
                )
                if done:
                    error = TaskError(code="cancelled", message="the task was cancelled before it started")
                    self._finished_events(session, task_id, TaskStatus.cancelled, error)
            elif row.status == TaskStatus.running.value:
                _rowcount(
                    session,
                    update(TaskRow)
                    .where(TaskRow.id == task_id, TaskRow.status == TaskStatus.running.value)
                    .values(cancel_requested=True, updated_at=now),
                )
                self._event(session, task_id, "log", {"message": "cancellation requested"})
            else:
                raise Conflict(f"task {task_id} is already {row.status}", details={"status": row.status})
        return self.get_task(task_id)

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
                    self._finished_events(session, row.id, status, error)
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

    # Events --------------------------------------------------------------------------------------

    def events_after(self, task_id: str, after: int = 0, limit: int = 500) -> list[TaskEvent]:
        with self.session() as session:
            rows = session.scalars(
                select(TaskEventRow)
                .where(TaskEventRow.task_id == task_id, TaskEventRow.id > after)
                .order_by(TaskEventRow.id)
                .limit(limit)
            )
            return [
                TaskEvent(r.id, r.task_id, r.kind, r.data, _aware(r.created_at) or utcnow()) for r in rows
            ]

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
            row = session.get(FileRow, file_id)
            if row is None or (owner is not None and row.owner_id != owner):
                raise NotFound(f"no file {file_id!r}")
            return file_from_row(row)

    # API keys ------------------------------------------------------------------------------------

    def add_key(self, *, owner: str, name: str, key_hash: str, is_admin: bool = False) -> ApiKey:
        row = ApiKeyRow(
            id=new_id("key"),
            owner_id=owner,
            name=name,
            key_hash=key_hash,
            is_admin=is_admin,
            created_at=utcnow(),
        )
        with self.session() as session:
            session.add(row)
        return ApiKey(row.id, row.owner_id, row.name, row.is_admin)

    def find_key(self, key_hash: str) -> ApiKey | None:
        with self.session() as session:
            row = session.scalar(
                select(ApiKeyRow).where(ApiKeyRow.key_hash == key_hash, ApiKeyRow.revoked_at.is_(None))
            )
            return ApiKey(row.id, row.owner_id, row.name, row.is_admin) if row else None

    def has_admin_key(self) -> bool:
        with self.session() as session:
            query = select(ApiKeyRow.id).where(ApiKeyRow.is_admin.is_(True), ApiKeyRow.revoked_at.is_(None))
            return session.scalar(query.limit(1)) is not None

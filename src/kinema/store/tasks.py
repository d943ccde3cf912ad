"""Tasks and their event log: submit, claim, progress, finish, cancel, recover, read and list.

Every state change is a conditional UPDATE (`... WHERE status = 'queued'`), so two workers or a worker and
a cancel racing on the same task cannot both win. A running task's end and progress are also fenced by its
attempt number: a worker whose lease expired (and whose task was handed to another) can no longer write.
A task's end settles its money (ledger) and queues its webhook (webhooks) in the same transaction; a queue
that keeps rows of its own (procrastinate's jobs) is kept in step through a Dispatch, in that transaction
too.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import case, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from kinema.billing.pricing import to_micros
from kinema.domain.outputs import OutputMeta
from kinema.domain.tasks import FINISHED, Task, TaskError, TaskProgress, TaskStatus, new_id, utcnow
from kinema.errors import BadRequest, Conflict
from kinema.store import ledger, webhooks
from kinema.store.db import Database, aware, is_postgresql, mark_changed, owned, rowcount
from kinema.store.schema import IdempotencyKeyRow, TaskEventRow, TaskRow


@dataclass(frozen=True)
class TaskEvent:
    """One entry of a task's event log; id orders events and is the SSE event id."""

    id: int
    task_id: str
    kind: str
    data: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class Submission:
    """A created task, or the original one when an Idempotency-Key was replayed."""

    task: Task
    replayed: bool = False


@dataclass(frozen=True)
class TaskPage:
    tasks: list[Task]
    next_cursor: str | None


@dataclass(frozen=True)
class Recovery:
    requeued: list[str]
    failed: list[str]


class Dispatch(Protocol):
    """A queue's own rows beside the task table (procrastinate's jobs), kept in step inside the store's
    transactions. The task row says what is true; these rows only carry it to workers, so they commit or
    roll back with it."""

    def queued(self, session: Session, row: TaskRow) -> None:
        """The task entered the queue (submitted, handed back, recovered): make it claimable."""
        ...

    def ended(self, session: Session, row: TaskRow) -> None:
        """The task reached an end state, from queued or running: nothing is left to claim or run."""
        ...

    def stop_requested(self, session: Session, row: TaskRow) -> None:
        """Someone asked the worker running the task to stop (a cancel, a deadline): tell that worker."""
        ...


def lock_owner(session: Session, owner: str) -> None:
    """Serialize claims for one account until this transaction ends, so a running cap holds across
    processes: PostgreSQL takes an advisory lock; SQLite's single writer serializes claims already."""
    if is_postgresql(session):
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": f"kinema.owner:{owner}"}
        )


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
        attempt=row.attempts or None,
    )


def busy_owners(max_running: int) -> Any:
    """The accounts running max_running tasks or more (a subquery)."""
    return (
        select(TaskRow.owner_id)
        .where(TaskRow.status == TaskStatus.running.value)
        .group_by(TaskRow.owner_id)
        .having(func.count() >= max_running)
    )


def fence(attempt: int | None) -> tuple[Any, ...]:
    """The extra WHERE clause that lets only the run holding attempt write (none without one)."""
    return () if attempt is None else (TaskRow.attempts == attempt,)


CANCELLED_BEFORE_START = TaskError(code="cancelled", message="the task was cancelled before it started")
DEADLINE_ERROR = TaskError(code="deadline_exceeded", message="the Cancel-After deadline passed")


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


def add_event(session: Session, task_id: str, kind: str, data: dict[str, Any]) -> None:
    session.add(TaskEventRow(task_id=task_id, kind=kind, data=data, created_at=utcnow()))
    mark_changed(session, task_id)


def _finished_events(session: Session, task_id: str, status: TaskStatus, error: TaskError | None) -> None:
    assert status in FINISHED
    if error is not None:
        add_event(session, task_id, "log", {"message": f"{status.value}: {error.message}"})
    add_event(session, task_id, "status", {"status": status.value})
    add_event(session, task_id, "done", {"status": status.value})


def _ended(
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
    _finished_events(session, row.id, status, error)
    ledger.settle(session, row, charge=charge, currency=currency, now=now)
    webhooks.enqueue(session, row, "completed", now, new_id("msg"))


class TaskRepo:
    """All reads and writes of tasks and their events."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.dispatch: Dispatch | None = None

    def use_dispatch(self, dispatch: Dispatch) -> None:
        """Keep a queue's own rows in step with the tasks, in the same transactions, from now on."""
        self.dispatch = dispatch

    def _end(
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
        _ended(session, row, status, error, now, charge=charge, currency=currency)
        if self.dispatch is not None:
            self.dispatch.ended(session, row)

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
        with self.db.session() as session:
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
            add_event(session, row.id, "status", {"status": "queued"})
            if self.dispatch is not None:
                self.dispatch.queued(session, row)
            return Submission(task_from_row(row))

    def get(self, task_id: str, *, owner: str | None = None) -> Task:
        """The task, if it exists and (when owner is given) belongs to owner; otherwise NotFound."""
        with self.db.session() as session:
            return task_from_row(owned(session.get(TaskRow, task_id), owner, "task", task_id))

    def page(
        self,
        *,
        owner: str | None,
        status: Sequence[TaskStatus] = (),
        app: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> TaskPage:
        """A page of tasks, newest first, keyset-paginated on (created_at, id)."""
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
        with self.db.session() as session:
            rows = list(session.scalars(query))
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
        return TaskPage(tasks=[task_from_row(r) for r in rows], next_cursor=next_cursor)

    def claim_next(
        self,
        worker_id: str,
        apps: Sequence[str] | None = None,
        *,
        max_running_per_owner: int | None = None,
        prefer: Collection[str] = (),
    ) -> Task | None:
        """Atomically move the oldest queued task to running for this worker; None when none is queued.

        Tasks of the apps in prefer (whose models the worker has warm) go first. With max_running_per_owner,
        tasks of accounts already running that many wait in the queue.
        """
        for _ in range(5):
            with self.db.session() as session:
                query = select(TaskRow.id, TaskRow.owner_id).where(TaskRow.status == TaskStatus.queued.value)
                if apps is not None:
                    query = query.where(TaskRow.app.in_(apps))
                if max_running_per_owner is not None:
                    query = query.where(TaskRow.owner_id.not_in(busy_owners(max_running_per_owner)))
                order: list[Any] = [TaskRow.created_at, TaskRow.id]
                if prefer:
                    order.insert(0, case((TaskRow.app.in_(list(prefer)), 0), else_=1))
                found = session.execute(query.order_by(*order).limit(1)).first()
                if found is None:
                    return None
                task = self.claim(
                    session, found.id, found.owner_id, worker_id, max_running_per_owner=max_running_per_owner
                )
                if task is not None:
                    return task
            # another worker took it (or its account reached the cap) between the select and the update
        return None

    def claim(
        self,
        session: Session,
        task_id: str,
        owner: str,
        worker_id: str,
        *,
        max_running_per_owner: int | None = None,
    ) -> Task | None:
        """Move one queued task of owner to running for worker_id, in the caller's transaction.

        None when it is no longer queued, or when its account already runs max_running_per_owner tasks: the
        cap is checked by the UPDATE itself, with the account's claims serialized, so it holds across
        processes.
        """
        if max_running_per_owner is not None:
            lock_owner(session, owner)
        now = utcnow()
        claim = update(TaskRow).where(TaskRow.id == task_id, TaskRow.status == TaskStatus.queued.value)
        if max_running_per_owner is not None:
            running = aliased(TaskRow)
            count = (
                select(func.count())
                .select_from(running)
                .where(running.owner_id == owner, running.status == TaskStatus.running.value)
                .scalar_subquery()
            )
            claim = claim.where(count < max_running_per_owner)
        claimed = rowcount(
            session,
            claim.values(
                status=TaskStatus.running.value,
                worker_id=worker_id,
                started_at=now,
                heartbeat_at=now,
                updated_at=now,
                attempts=TaskRow.attempts + 1,
            ),
        )
        if not claimed:
            return None
        add_event(session, task_id, "status", {"status": "running"})
        row = session.get(TaskRow, task_id, populate_existing=True)
        assert row is not None
        webhooks.enqueue(session, row, "start", now, new_id("msg"))
        return task_from_row(row)

    def heartbeat(self, worker_id: str, task_ids: Sequence[str]) -> set[str]:
        """Stamp these running tasks of worker_id as alive now; the ids it still holds."""
        if not task_ids:
            return set()
        held = (
            TaskRow.id.in_(task_ids),
            TaskRow.worker_id == worker_id,
            TaskRow.status == TaskStatus.running.value,
        )
        with self.db.session() as session:
            session.execute(update(TaskRow).where(*held).values(heartbeat_at=utcnow()))
            return set(session.scalars(select(TaskRow.id).where(*held)))

    def set_progress(self, task_id: str, progress: TaskProgress, *, attempt: int | None = None) -> None:
        """Record a running task's progress (only the run holding attempt, when given, may)."""
        data = progress.model_dump(exclude_none=True)
        now = utcnow()
        with self.db.session() as session:
            held = rowcount(
                session,
                update(TaskRow)
                .where(TaskRow.id == task_id, TaskRow.status == TaskStatus.running.value, *fence(attempt))
                .values(progress=data, updated_at=now),
            )
            if attempt is not None and not held:
                return  # a run that lost its lease: its progress is no longer the task's
            add_event(session, task_id, "progress", data)
            row = session.get(TaskRow, task_id)
            if row is not None and row.webhook_url:
                webhooks.enqueue(session, row, "progress", now, new_id("msg"))

    def provider_state(self, task_id: str) -> dict[str, Any] | None:
        """What a provider's engine saved on an earlier attempt of the task (None: nothing to resume)."""
        with self.db.session() as session:
            state = session.scalar(select(TaskRow.provider_state).where(TaskRow.id == task_id))
            return dict(state) if state else None

    def save_provider_state(self, task_id: str, state: dict[str, Any]) -> None:
        """Keep a provider's resumable state, committed when this returns.

        Whatever the task's status: an attempt requeued under its feet must still find the operation it
        started, so the next attempt resumes it rather than paying for a second one.
        """
        with self.db.session() as session:
            session.execute(update(TaskRow).where(TaskRow.id == task_id).values(provider_state=state))

    def log(self, task_id: str, message: str) -> None:
        with self.db.session() as session:
            add_event(session, task_id, "log", {"message": message})

    def finish(self, task: Task, *, charge: bool = True, attempt: int | None = None) -> bool:
        """Record a running task's end state, settle its money and queue its webhook, in one transaction.

        A completed task is charged its output_meta.billing cost when charge is true (billing switched on).
        False if it was no longer running, or (with attempt) no longer running as that attempt: its lease
        expired and the task was handed on. Then nothing is written and nothing is charged.
        """
        now = utcnow()
        error = task.error
        with self.db.session() as session:
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
                .where(TaskRow.id == task.id, TaskRow.status == TaskStatus.running.value, *fence(attempt))
                .values(**values),
            )
            if done:
                row = session.get(TaskRow, task.id, populate_existing=True)
                assert row is not None
                billing = task.output_meta.billing if task.output_meta else None
                completed = charge and billing is not None and task.status is TaskStatus.completed
                amount = to_micros(billing.cost) if completed and billing is not None else None
                self._end(
                    session,
                    row,
                    task.status,
                    error,
                    now,
                    charge=amount,
                    currency=billing.currency if billing else "USD",
                )
            return bool(done)

    def requeue(self, task_id: str, *, attempt: int | None = None) -> bool:
        """Put a running task back in the queue (its worker is shutting down); with attempt, only if that
        run still holds it."""
        with self.db.session() as session:
            done = rowcount(
                session,
                update(TaskRow)
                .where(TaskRow.id == task_id, TaskRow.status == TaskStatus.running.value, *fence(attempt))
                .values(
                    status=TaskStatus.queued.value,
                    worker_id=None,
                    progress=None,
                    heartbeat_at=None,
                    updated_at=utcnow(),
                ),
            )
            if done:
                add_event(session, task_id, "status", {"status": "queued"})
                add_event(session, task_id, "log", {"message": "worker stopped; task requeued"})
                self._queued_again(session, task_id)
            return bool(done)

    def _queued_again(self, session: Session, task_id: str) -> None:
        if self.dispatch is not None:
            row = session.get(TaskRow, task_id, populate_existing=True)
            assert row is not None
            self.dispatch.queued(session, row)

    def request_cancel(self, task_id: str, *, owner: str | None) -> Task:
        """Cancel a queued task at once, or flag a running one for its worker; finished tasks: Conflict."""
        with self.db.session() as session:
            row = owned(session.get(TaskRow, task_id, with_for_update=True), owner, "task", task_id)
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
                    self._end(session, row, TaskStatus.cancelled, CANCELLED_BEFORE_START, now)
            elif row.status == TaskStatus.running.value:
                flagged = rowcount(
                    session,
                    update(TaskRow)
                    .where(TaskRow.id == task_id, TaskRow.status == TaskStatus.running.value)
                    .values(cancel_requested=True, cancel_reason="user", updated_at=now),
                )
                add_event(session, task_id, "log", {"message": "cancellation requested"})
                if flagged and self.dispatch is not None:
                    session.refresh(row)
                    self.dispatch.stop_requested(session, row)
            else:
                raise Conflict(f"task {task_id} is already {row.status}", details={"status": row.status})
            session.refresh(row)
            return task_from_row(row)

    def cancel_requested(self, task_ids: Sequence[str]) -> set[str]:
        """Which of these running tasks someone asked to cancel."""
        if not task_ids:
            return set()
        with self.db.session() as session:
            query = select(TaskRow.id).where(TaskRow.id.in_(task_ids), TaskRow.cancel_requested.is_(True))
            return set(session.scalars(query))

    def running_workers(self, prefix: str) -> set[str]:
        """The workers (ids starting with prefix: one host's) that hold running tasks now."""
        with self.db.session() as session:
            query = select(TaskRow.worker_id).where(
                TaskRow.status == TaskStatus.running.value, TaskRow.worker_id.startswith(prefix)
            )
            return {worker for worker in session.scalars(query.distinct()) if worker is not None}

    def recover_running(
        self,
        max_attempts: int,
        *,
        lease_s: float,
        dead_workers: Collection[str] = (),
        restarted: bool = False,
    ) -> Recovery:
        """Take back running tasks whose worker is gone: requeue them, or fail them after max_attempts.

        A worker is gone when it has not heartbeated for lease_s seconds, or when it is in dead_workers (a
        process known to have exited). A live worker's task is never touched. restarted: the caller is a
        server starting up, finding what its own previous run left.
        """
        requeued: list[str] = []
        failed: list[str] = []
        now = utcnow()
        cutoff = now - timedelta(seconds=lease_s)
        stale = or_(TaskRow.heartbeat_at.is_(None), TaskRow.heartbeat_at < cutoff)
        gone = or_(stale, TaskRow.worker_id.in_(list(dead_workers))) if dead_workers else stale
        with self.db.session() as session:
            query = select(TaskRow).where(TaskRow.status == TaskStatus.running.value, gone)
            for row in session.scalars(query.with_for_update(skip_locked=True)):
                if row.worker_id in dead_workers:
                    why = "the server restarted mid-task" if restarted else "the process running it exited"
                else:
                    why = f"its worker sent no heartbeat for {lease_s:g} s"
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
                    add_event(session, row.id, "log", {"message": f"{why}; task ended"})
                    self._end(session, row, status, error, now)
                    failed.append(row.id)
                else:
                    row.status, row.worker_id, row.progress, row.updated_at = "queued", None, None, now
                    row.heartbeat_at = None
                    add_event(session, row.id, "status", {"status": "queued"})
                    add_event(session, row.id, "log", {"message": f"{why}; task requeued"})
                    if self.dispatch is not None:
                        session.flush()
                        self.dispatch.queued(session, row)
                    requeued.append(row.id)
        return Recovery(requeued=requeued, failed=failed)

    def counts_by_app(self, statuses: Sequence[TaskStatus]) -> dict[tuple[str, str], int]:
        """How many tasks each app has in each of these statuses, keyed (app, status); absent: none."""
        with self.db.session() as session:
            rows = session.execute(
                select(TaskRow.app, TaskRow.status, func.count())
                .where(TaskRow.status.in_([s.value for s in statuses]))
                .group_by(TaskRow.app, TaskRow.status)
            ).all()
        return {(app, status): count for app, status, count in rows}

    def counts_by_status(self) -> dict[str, int]:
        with self.db.session() as session:
            rows = session.execute(select(TaskRow.status, func.count()).group_by(TaskRow.status)).all()
        counts = {s.value: 0 for s in TaskStatus}
        counts.update({status: count for status, count in rows})
        return counts

    def expire_deadlines(self) -> list[str]:
        """Apply Cancel-After: queued tasks past their deadline end now; running ones are flagged to stop."""
        now = utcnow()
        expired: list[str] = []
        with self.db.session() as session:
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
                    self._end(session, row, TaskStatus.cancelled, DEADLINE_ERROR, now)
                else:
                    row.cancel_requested, row.cancel_reason, row.updated_at = True, "deadline", now
                    add_event(session, row.id, "log", {"message": "Cancel-After deadline passed; stopping"})
                    if self.dispatch is not None:
                        self.dispatch.stop_requested(session, row)
                expired.append(row.id)
        return expired

    def events_after(self, task_id: str, after: int = 0, limit: int = 500) -> list[TaskEvent]:
        """The task's events with ids above after, oldest first."""
        with self.db.session() as session:
            rows = session.scalars(
                select(TaskEventRow)
                .where(TaskEventRow.task_id == task_id, TaskEventRow.id > after)
                .order_by(TaskEventRow.id)
                .limit(limit)
            )
            return [TaskEvent(r.id, r.task_id, r.kind, r.data, aware(r.created_at) or utcnow()) for r in rows]

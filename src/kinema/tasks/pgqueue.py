"""The cluster queue: tasks dispatched through procrastinate's job rows on PostgreSQL.

The task row stays the truth (status, attempts, lease, money). Each queued task has one procrastinate job
that carries it to workers: queue = the app's id, lock and queueing_lock = the task id (so a task has at most
one job waiting and one running), priority = earlier attempts (a retried task has waited longest), args =
{"task_id": ...}. The job is written in the same transaction as the task row (procrastinate's external
connection), through the store's Dispatch hooks, so the two can never disagree after a crash:

- submit, requeue, recovery -> `defer` a job (procrastinate's insert trigger NOTIFYs the workers);
- claim -> the job goes `doing` and the task `running`, in one transaction (SKIP LOCKED);
- cancel of a running task, a passed deadline -> procrastinate's abort (its trigger NOTIFYs the worker);
- a task's end -> its job is finished and deleted (the task row and its events keep the history).

Where procrastinate does not fit, this module uses PostgreSQL directly (docs/cluster.md says why): the claim
query is kinema's own (procrastinate_fetch_job_v2 cannot skip an account at its running cap, nor prefer the
apps a worker has warm), and leases are kinema's per-task heartbeats with an attempt fence rather than
procrastinate's per-worker heartbeats, which cannot stop a late worker from finishing a task twice.
Procrastinate's own worker loop is not used: kinema's Runner claims, runs and heartbeats.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Collection, Sequence
from typing import Any

import procrastinate
import psycopg
from procrastinate import sql as procrastinate_sql
from psycopg import sql as pg_sql
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from kinema.apps.registry import list_apps
from kinema.domain.tasks import Task, TaskStatus
from kinema.settings import Settings
from kinema.store import Store
from kinema.store.db import TASK_EVENTS_CHANNEL
from kinema.store.schema import TaskRow
from kinema.store.tasks import Recovery
from kinema.tasks.queue import StoreQueue
from kinema.tasks.signals import TaskSignals

log = logging.getLogger(__name__)

TASK_NAME = "kinema.run_task"  # the procrastinate task every job names; kinema's Runner runs it
ANY_QUEUE_CHANNEL = "procrastinate_any_queue_v1"  # procrastinate's triggers NOTIFY here on insert and abort
LISTEN_RETRY_S = 1.0

# The next queued task a worker may run: its job waiting in one of the worker's queues, warm apps first,
# then by priority and age; accounts at their running cap skipped. SKIP LOCKED: claimers never wait on
# each other, and a job locked by one is invisible to the rest until that claim commits or rolls back.
CLAIM_SQL = text(
    """
    SELECT j.id AS job_id, t.id AS task_id, t.owner_id AS owner_id
      FROM procrastinate_jobs AS j
      JOIN tasks AS t ON t.id = j.lock
     WHERE j.status = 'todo'
       AND j.queue_name = ANY(:queues)
       AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())
       AND t.status = 'queued'
       AND t.owner_id <> ALL(:skip)
       AND (CAST(:cap AS integer) IS NULL OR t.owner_id NOT IN (
             SELECT r.owner_id FROM tasks AS r WHERE r.status = 'running'
              GROUP BY r.owner_id HAVING count(*) >= :cap))
     ORDER BY (j.queue_name = ANY(:prefer)) DESC, j.priority DESC, j.id
     LIMIT 1
       FOR UPDATE OF j SKIP LOCKED
    """
)
START_JOB_SQL = text("UPDATE procrastinate_jobs SET status = 'doing' WHERE id = :job_id AND status = 'todo'")
LIVE_JOBS_SQL = text(
    """
    SELECT id, status::text AS status FROM procrastinate_jobs
     WHERE (lock = :task_id AND status = 'doing') OR (queueing_lock = :task_id AND status = 'todo')
    """
)
# Queued tasks without a waiting job (queued while another queue ran on this database, or before the
# migration to procrastinate): recovery gives them one, so nothing queued is stranded.
STRANDED_SQL = text(
    """
    SELECT t.id FROM tasks AS t
     WHERE t.status = 'queued'
       AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs AS j
                        WHERE j.queueing_lock = t.id AND j.status = 'todo')
     ORDER BY t.created_at
       FOR UPDATE OF t SKIP LOCKED
    """
)


# Jobs left behind their task (it ended, or is running as another job, while a different queue ran on this
# database): recovery finishes and deletes them.
ORPHANED_SQL = text(
    """
    SELECT j.id, j.status::text AS status FROM procrastinate_jobs AS j
      LEFT JOIN tasks AS t ON t.id = j.lock
     WHERE (j.status = 'todo' AND (t.id IS NULL OR t.status <> 'queued'))
        OR (j.status = 'doing' AND (t.id IS NULL OR t.status <> 'running'))
       FOR UPDATE OF j SKIP LOCKED
    """
)


def conninfo(database_url: str) -> str:
    """A libpq connection string for psycopg from kinema's SQLAlchemy URL (postgresql+psycopg://...)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def driver_connection(session: Session) -> Any:
    """The psycopg connection under the session's transaction, for procrastinate to write in it."""
    return session.connection().connection.driver_connection


class ProcrastinateJobs:
    """The store's Dispatch for procrastinate: job rows written in the task store's own transactions."""

    def __init__(self) -> None:
        # Never opened: every call passes the store's connection, so no second pool exists.
        self.app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector())

    def queued(self, session: Session, row: TaskRow) -> None:
        connection = driver_connection(session)
        self._drop(session, row.id, "failed")  # an earlier run's job (handed back or lost) ends first
        self.app.configure_task(
            TASK_NAME,
            queue=row.app,
            priority=row.attempts,
            lock=row.id,
            queueing_lock=row.id,
            connection=connection,
        ).defer(task_id=row.id)

    def ended(self, session: Session, row: TaskRow) -> None:
        status = {"completed": "succeeded", "cancelled": "aborted"}.get(row.status, "failed")
        self._drop(session, row.id, status)

    def stop_requested(self, session: Session, row: TaskRow) -> None:
        connection = driver_connection(session)
        for job_id, status in self._live(session, row.id):
            if status == "doing":
                self.app.job_manager.cancel_job_by_id(job_id, abort=True, connection=connection)

    def _live(self, session: Session, task_id: str) -> list[tuple[int, str]]:
        return [(r.id, r.status) for r in session.execute(LIVE_JOBS_SQL, {"task_id": task_id})]

    def _drop(self, session: Session, task_id: str, status: str) -> None:
        """Finish and delete the task's waiting or running job, if it has one."""
        self.finish(session, [job_id for job_id, _ in self._live(session, task_id)], status)

    def finish(self, session: Session, job_ids: Sequence[int], status: str) -> None:
        """Finish these jobs with status (succeeded, failed, aborted) and delete them (procrastinate's
        finish_job): the task rows and their events are the history."""
        connection = driver_connection(session)
        for job_id in job_ids:
            self.app.connector.execute_query_all_with_connection(  # type: ignore[attr-defined]
                connection,
                query=procrastinate_sql.queries["finish_job"],
                job_id=job_id,
                status=status,
                delete_job=True,
            )


class Listener:
    """One LISTEN connection per process; each notification goes to its channel's handler (on this thread).

    It reconnects after a failure and then calls on_gap, since notifications sent meanwhile are lost.
    """

    def __init__(
        self, dsn: str, handlers: dict[str, Callable[[str], None]], on_gap: Callable[[], None]
    ) -> None:
        self.dsn, self.handlers, self.on_gap = dsn, handlers, on_gap
        self.listening = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kinema-listen", daemon=True)

    def start(self) -> Listener:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        gap = False
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True) as connection:
                    for channel in self.handlers:
                        connection.execute(pg_sql.SQL("LISTEN {}").format(pg_sql.Identifier(channel)))
                    self.listening.set()
                    if gap:
                        self.on_gap()
                    while not self._stopping.is_set():
                        for note in connection.notifies(timeout=0.5):
                            self._handle(note.channel, note.payload)
            except psycopg.Error as exc:
                self.listening.clear()
                if not self._stopping.is_set():
                    log.warning("lost the database notification connection (%s); reconnecting", exc)
                    gap = True
                    self._stopping.wait(LISTEN_RETRY_S)

    def _handle(self, channel: str, payload: str) -> None:
        handler = self.handlers.get(channel)
        if handler is None:
            return
        try:
            handler(payload)
        except Exception:
            log.exception("notification handler for %s failed", channel)


class ProcrastinateQueue(StoreQueue):
    """TaskQueue over procrastinate's jobs on PostgreSQL, woken by LISTEN/NOTIFY across machines.

    What differs from the embedded queue: claims go through the jobs table, recovery reconciles jobs with
    tasks, and the in-process wake-ups are also set by other processes' NOTIFYs.
    """

    def __init__(self, store: Store, settings: Settings, signals: TaskSignals | None = None) -> None:
        super().__init__(store.tasks)
        self.store, self.settings = store, settings
        self.jobs = ProcrastinateJobs()
        self.tasks.use_dispatch(self.jobs)
        self.signals = signals
        handlers: dict[str, Callable[[str], None]] = {ANY_QUEUE_CHANNEL: self._on_job}
        if signals is not None:
            handlers[TASK_EVENTS_CHANNEL] = lambda payload: signals.notify(payload.split())
        self.listener = Listener(conninfo(settings.database), handlers, self._on_gap).start()

    # Notifications -------------------------------------------------------------------------------

    def _on_job(self, payload: str) -> None:
        kind = json.loads(payload).get("type")
        if kind == "abort_job_requested":
            self._cancelled.set()
        else:
            self._queued.set()

    def _on_gap(self) -> None:
        self._queued.set()
        self._cancelled.set()
        if self.signals is not None:
            self.signals.notify_all()

    # TaskQueue -----------------------------------------------------------------------------------

    def claim(
        self,
        worker_id: str,
        apps: Sequence[str] | None,
        *,
        max_running_per_owner: int | None,
        prefer: Collection[str] = (),
    ) -> Task | None:
        queues = list(apps) if apps is not None else [app.id for app in list_apps()]
        skip: list[str] = []
        with self.store.db.session() as session:
            for _ in range(100):
                found = session.execute(
                    CLAIM_SQL,
                    {
                        "queues": queues,
                        "prefer": list(prefer),
                        "skip": skip,
                        "cap": max_running_per_owner,
                    },
                ).first()
                if found is None:
                    return None
                task = self.tasks.claim(
                    session,
                    found.task_id,
                    found.owner_id,
                    worker_id,
                    max_running_per_owner=max_running_per_owner,
                )
                if task is not None:
                    session.execute(START_JOB_SQL, {"job_id": found.job_id})
                    return task
                status = session.scalar(select(TaskRow.status).where(TaskRow.id == found.task_id))
                if status == TaskStatus.queued.value:
                    skip.append(found.owner_id)  # its account reached the cap just now (another claim)
                else:
                    self.jobs._drop(session, found.task_id, "failed")  # a job left behind its task
        return None

    def recover(
        self,
        max_attempts: int,
        *,
        lease_s: float,
        dead_workers: Collection[str] = (),
        restarted: bool = False,
    ) -> Recovery:
        recovered = super().recover(
            max_attempts, lease_s=lease_s, dead_workers=dead_workers, restarted=restarted
        )
        self.reconcile()
        return recovered

    def reconcile(self) -> list[str]:
        """Give every queued task without a waiting job its job, and end jobs whose task is no longer
        waiting or running; the ids of the tasks that needed a job."""
        with self.store.db.session() as session:
            stranded = list(session.scalars(STRANDED_SQL))
            for task_id in stranded:
                row = session.get(TaskRow, task_id)
                assert row is not None
                self.jobs.queued(session, row)
            orphaned = session.execute(ORPHANED_SQL).all()
            if orphaned:
                self.jobs.finish(session, [job.id for job in orphaned], "failed")
        for task_id in stranded:
            log.warning("task %s was queued without a job; dispatched it", task_id)
        return stranded

    def close(self) -> None:
        self.listener.stop()

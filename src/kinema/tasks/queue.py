"""The task queue: what the service and the runner need to hand queued work to workers.

The service tells the queue (a task was queued, a task should stop); the runner listens to it (waits for
work, claims, heartbeats, learns of cancellations). Neither knows the other.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from typing import Protocol

from kinema.domain.tasks import Task
from kinema.settings import Settings
from kinema.store import Store
from kinema.store.tasks import Recovery, TaskRepo
from kinema.tasks.signals import TaskSignals


class TaskQueue(Protocol):
    """Queued tasks on their way to workers: wake-ups, claims, heartbeats, requeues, cancels, recovery.

    StoreQueue is the embedded one: the task table is the queue, wake-ups stay in this process.
    ProcrastinateQueue (tasks.pgqueue) is the cluster's: procrastinate's job rows on PostgreSQL, SKIP LOCKED
    claims, LISTEN/NOTIFY wake-ups and aborts, for `kinema worker` processes on many machines.
    """

    def wake(self) -> None:
        """A task was queued (or workers should look again): idle workers stop waiting now."""
        ...

    def wait_for_work(self, timeout: float) -> None:
        """Block until woken, or at most timeout seconds; then claim."""
        ...

    def claim(
        self,
        worker_id: str,
        apps: Sequence[str] | None,
        *,
        max_running_per_owner: int | None,
        prefer: Collection[str] = (),
    ) -> Task | None:
        """The oldest queued task of these apps (None: any), now running for worker_id; None if none fits.

        Tasks of apps in prefer (models the worker has warm) go first. Tasks of accounts already running
        max_running_per_owner tasks stay queued, however many processes claim.
        """
        ...

    def heartbeat(self, worker_id: str, task_ids: Sequence[str]) -> set[str]:
        """worker_id says these running tasks are alive; the ids it still holds."""
        ...

    def requeue(self, task_id: str, *, attempt: int | None = None) -> bool:
        """Put a running task back in the queue (its worker is stopping); False if it was not running (as
        that attempt, when given)."""
        ...

    def request_cancel(self, task_id: str, *, owner: str | None) -> Task:
        """Cancel a queued task now, or ask the worker running it to stop; Conflict when it has ended."""
        ...

    def wait_for_cancel(self, timeout: float) -> None:
        """Block until a cancel is requested, or at most timeout seconds; then ask cancel_requested."""
        ...

    def cancel_requested(self, task_ids: Sequence[str]) -> set[str]:
        """Which of these running tasks someone asked to stop."""
        ...

    def recover(
        self,
        max_attempts: int,
        *,
        lease_s: float,
        dead_workers: Collection[str] = (),
        restarted: bool = False,
    ) -> Recovery:
        """Take back running tasks whose worker is gone (no heartbeat for lease_s, or known dead): requeue
        them, or fail those tried max_attempts times. A live worker's task is never touched."""
        ...

    def close(self) -> None:
        """Stop what the queue runs in the background (a listener); claims and cancels stop working."""
        ...


class StoreQueue:
    """The embedded queue: queued rows in the task store, wake-ups through in-process events.

    Workers in other processes over the same database still find work and cancellations by polling.
    """

    def __init__(self, tasks: TaskRepo) -> None:
        self.tasks = tasks
        self._queued = threading.Event()
        self._cancelled = threading.Event()

    def wake(self) -> None:
        self._queued.set()

    def wait_for_work(self, timeout: float) -> None:
        self._queued.wait(timeout)
        self._queued.clear()

    def claim(
        self,
        worker_id: str,
        apps: Sequence[str] | None,
        *,
        max_running_per_owner: int | None,
        prefer: Collection[str] = (),
    ) -> Task | None:
        return self.tasks.claim_next(
            worker_id, apps, max_running_per_owner=max_running_per_owner, prefer=prefer
        )

    def heartbeat(self, worker_id: str, task_ids: Sequence[str]) -> set[str]:
        return self.tasks.heartbeat(worker_id, task_ids)

    def requeue(self, task_id: str, *, attempt: int | None = None) -> bool:
        return self.tasks.requeue(task_id, attempt=attempt)

    def request_cancel(self, task_id: str, *, owner: str | None) -> Task:
        task = self.tasks.request_cancel(task_id, owner=owner)
        self._cancelled.set()  # after the commit, so the woken watcher reads the flag
        return task

    def wait_for_cancel(self, timeout: float) -> None:
        self._cancelled.wait(timeout)
        self._cancelled.clear()

    def cancel_requested(self, task_ids: Sequence[str]) -> set[str]:
        return self.tasks.cancel_requested(task_ids)

    def recover(
        self,
        max_attempts: int,
        *,
        lease_s: float,
        dead_workers: Collection[str] = (),
        restarted: bool = False,
    ) -> Recovery:
        return self.tasks.recover_running(
            max_attempts, lease_s=lease_s, dead_workers=dead_workers, restarted=restarted
        )

    def close(self) -> None:
        pass


def open_queue(store: Store, settings: Settings, signals: TaskSignals | None = None) -> TaskQueue:
    """The queue settings ask for: procrastinate on PostgreSQL (by default), the task table on SQLite.

    signals, when given, hears of task events committed by other processes too (PostgreSQL's NOTIFY).
    """
    if settings.uses_procrastinate:
        if not store.db.postgresql:
            raise ValueError("KINEMA_QUEUE=procrastinate needs a PostgreSQL KINEMA_DATABASE_URL")
        try:
            from kinema.tasks.pgqueue import ProcrastinateQueue
        except ImportError as exc:  # the [postgres] extra brings psycopg and procrastinate
            raise RuntimeError(f"the PostgreSQL queue needs `pip install kinema[postgres]` ({exc})") from exc
        return ProcrastinateQueue(store, settings, signals)
    return StoreQueue(store.tasks)

"""The store-backed task queue on SQLite and PostgreSQL: claims, wake-ups, heartbeats, cancels, recovery."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from kinema.domain.tasks import Task, TaskProgress, TaskStatus
from kinema.store import Store
from kinema.store.db import aware, migrate, open_engine
from kinema.store.schema import TaskRow
from kinema.tasks.queue import StoreQueue, TaskQueue


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    engine = open_engine(database_url)
    migrate(engine)
    yield Store(engine)
    engine.dispose()


@pytest.fixture
def queue(store: Store) -> TaskQueue:
    return StoreQueue(store.tasks)


def submit(store: Store, owner: str = "usr_a", app: str = "kinema/tiny") -> Task:
    return store.tasks.submit(owner=owner, app=app, version="1", input={"prompt": "x"}).task


def heartbeat_at(store: Store, task_id: str) -> datetime | None:
    with store.db.session() as session:
        row = session.get(TaskRow, task_id)
        assert row is not None
        return aware(row.heartbeat_at)


def test_claim_takes_only_the_apps_a_worker_serves(store: Store, queue: TaskQueue) -> None:
    remote = submit(store, app="google/veo-3-1-fast")
    local = submit(store, app="kinema/tiny")
    claimed = queue.claim("gpu", ["kinema/tiny"], max_running_per_owner=None)
    assert claimed is not None and claimed.id == local.id and claimed.status is TaskStatus.running
    assert queue.claim("gpu", ["kinema/tiny"], max_running_per_owner=None) is None
    anything = queue.claim("any", None, max_running_per_owner=None)
    assert anything is not None and anything.id == remote.id


def test_claim_keeps_an_account_at_its_running_cap_queued(store: Store, queue: TaskQueue) -> None:
    a1, a2, b1 = submit(store, owner="a"), submit(store, owner="a"), submit(store, owner="b")
    first = queue.claim("w", None, max_running_per_owner=1)
    second = queue.claim("w", None, max_running_per_owner=1)
    assert first is not None and first.id == a1.id
    assert second is not None and second.id == b1.id
    assert queue.claim("w", None, max_running_per_owner=1) is None
    third = queue.claim("w", None, max_running_per_owner=2)
    assert third is not None and third.id == a2.id


def test_wake_ends_a_workers_wait_at_once(queue: TaskQueue) -> None:
    timer = threading.Timer(0.05, queue.wake)
    timer.start()
    started = time.monotonic()
    queue.wait_for_work(10)
    assert time.monotonic() - started < 5
    timer.join()


def test_cancel_request_wakes_the_watcher_and_is_in_cancel_requested(store: Store, queue: TaskQueue) -> None:
    task = submit(store)
    queue.claim("w", None, max_running_per_owner=None)
    assert queue.cancel_requested([task.id]) == set()
    timer = threading.Timer(0.05, queue.request_cancel, args=(task.id,), kwargs={"owner": "usr_a"})
    timer.start()
    started = time.monotonic()
    queue.wait_for_cancel(10)
    assert time.monotonic() - started < 5
    timer.join()
    assert queue.cancel_requested([task.id]) == {task.id}
    assert store.tasks.get(task.id).status is TaskStatus.running  # its worker stops it


def test_cancel_request_ends_a_queued_task_at_once(store: Store, queue: TaskQueue) -> None:
    task = submit(store)
    assert queue.request_cancel(task.id, owner="usr_a").status is TaskStatus.cancelled
    assert queue.claim("w", None, max_running_per_owner=None) is None


def test_heartbeat_stamps_only_the_workers_own_running_tasks(store: Store, queue: TaskQueue) -> None:
    mine, theirs, queued = submit(store), submit(store), submit(store)
    queue.claim("me", None, max_running_per_owner=None)
    queue.claim("them", None, max_running_per_owner=None)
    claimed_at, theirs_at = heartbeat_at(store, mine.id), heartbeat_at(store, theirs.id)
    assert claimed_at is not None and heartbeat_at(store, queued.id) is None
    time.sleep(0.01)
    assert queue.heartbeat("me", [mine.id, theirs.id, queued.id]) == {mine.id}
    beat = heartbeat_at(store, mine.id)
    assert beat is not None and beat > claimed_at
    assert heartbeat_at(store, theirs.id) == theirs_at and heartbeat_at(store, queued.id) is None
    assert queue.heartbeat("me", []) == set()


def test_requeue_puts_a_running_task_back_for_the_next_claim(store: Store, queue: TaskQueue) -> None:
    task = submit(store)
    queue.claim("stopping", None, max_running_per_owner=None)
    assert queue.requeue(task.id)
    assert not queue.requeue(task.id)  # no longer running
    assert store.tasks.get(task.id).status is TaskStatus.queued and heartbeat_at(store, task.id) is None
    again = queue.claim("next", None, max_running_per_owner=None)
    assert again is not None and again.id == task.id


def test_recover_requeues_orphans_then_fails_them_after_max_attempts(store: Store, queue: TaskQueue) -> None:
    task = submit(store)
    queue.claim("dead", None, max_running_per_owner=None)
    recovered = queue.recover(max_attempts=2, lease_s=0)
    assert recovered.requeued == [task.id] and recovered.failed == []
    assert store.tasks.get(task.id).status is TaskStatus.queued
    queue.claim("dead-again", None, max_running_per_owner=None)
    recovered = queue.recover(max_attempts=2, lease_s=0)
    assert recovered.requeued == [] and recovered.failed == [task.id]
    failed = store.tasks.get(task.id)
    assert failed.status is TaskStatus.failed and failed.error is not None
    assert failed.error.code == "worker_lost"


def stale(store: Store, task_id: str, seconds: float = 60) -> None:
    """Make a running task's last heartbeat `seconds` old, as if its worker went silent."""
    from datetime import timedelta

    with store.db.session() as session:
        row = session.get(TaskRow, task_id)
        assert row is not None and row.heartbeat_at is not None
        row.heartbeat_at = row.heartbeat_at - timedelta(seconds=seconds)


def test_recover_leaves_a_live_workers_task_alone(store: Store, queue: TaskQueue) -> None:
    task = submit(store)
    queue.claim("alive", None, max_running_per_owner=None)
    recovered = queue.recover(max_attempts=2, lease_s=30)
    assert recovered.requeued == [] and recovered.failed == []
    assert store.tasks.get(task.id).status is TaskStatus.running


def test_recover_takes_back_a_task_whose_lease_expired(store: Store, queue: TaskQueue) -> None:
    task, fresh = submit(store), submit(store)
    queue.claim("silent", None, max_running_per_owner=None)
    queue.claim("alive", None, max_running_per_owner=None)
    stale(store, task.id)
    recovered = queue.recover(max_attempts=2, lease_s=30)
    assert recovered.requeued == [task.id]
    assert store.tasks.get(task.id).status is TaskStatus.queued
    assert store.tasks.get(fresh.id).status is TaskStatus.running
    logs = [e.data.get("message") for e in store.tasks.events_after(task.id) if e.kind == "log"]
    assert "its worker sent no heartbeat for 30 s; task requeued" in logs


def test_recover_takes_back_a_dead_processs_task_without_waiting_for_the_lease(
    store: Store, queue: TaskQueue
) -> None:
    task = submit(store)
    queue.claim("host:4000001:dead", None, max_running_per_owner=None)
    recovered = queue.recover(max_attempts=2, lease_s=30, dead_workers={"host:4000001:dead"}, restarted=True)
    assert recovered.requeued == [task.id]
    logs = [e.data.get("message") for e in store.tasks.events_after(task.id) if e.kind == "log"]
    assert "the server restarted mid-task; task requeued" in logs


def test_a_run_that_lost_its_lease_cannot_finish_requeue_or_report(store: Store, queue: TaskQueue) -> None:
    task = submit(store)
    first = queue.claim("slow", None, max_running_per_owner=None)
    assert first is not None and first.attempt == 1
    stale(store, task.id)
    queue.recover(max_attempts=3, lease_s=30)
    second = queue.claim("fast", None, max_running_per_owner=None)
    assert second is not None and second.id == task.id and second.attempt == 2
    store.tasks.set_progress(task.id, TaskProgress(stage="denoise", step=9, total=9), attempt=1)
    assert store.tasks.get(task.id).progress is None  # the late run's progress is not the task's
    assert not queue.requeue(task.id, attempt=1)
    first.status = TaskStatus.completed
    assert not store.tasks.finish(first, attempt=1)  # the late run: refused, nothing charged
    second.status = TaskStatus.completed
    assert store.tasks.finish(second, attempt=2)
    assert store.tasks.get(task.id).status is TaskStatus.completed


def test_claim_prefers_the_apps_a_worker_has_warm(store: Store, queue: TaskQueue) -> None:
    older = submit(store, app="lightricks/ltx-2-fast")
    warm = submit(store, app="kinema/tiny")
    claimed = queue.claim("w", None, max_running_per_owner=None, prefer=["kinema/tiny"])
    assert claimed is not None and claimed.id == warm.id
    claimed = queue.claim("w", None, max_running_per_owner=None, prefer=["kinema/tiny"])
    assert claimed is not None and claimed.id == older.id


def test_running_cap_holds_when_many_workers_claim_at_once(store: Store, queue: TaskQueue) -> None:
    for _ in range(8):
        submit(store, owner="capped")
    claimed: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def worker(name: str) -> None:
        start.wait()
        for _ in range(3):
            task = queue.claim(name, None, max_running_per_owner=2)
            if task is not None:
                with lock:
                    claimed.append(task.id)

    threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == 2
    assert store.tasks.counts_by_status()["running"] == 2

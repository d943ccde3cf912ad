"""The procrastinate queue on PostgreSQL: job rows kept in step with the task rows in the same transactions,
claims, wake-ups and aborts through LISTEN/NOTIFY between processes (here: two queues on two engines)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from kinema.domain.tasks import Task, TaskStatus
from kinema.errors import InsufficientBalance
from kinema.settings import Settings
from kinema.store import Store
from kinema.store.db import migrate, open_engine
from kinema.tasks.pgqueue import ProcrastinateQueue
from kinema.tasks.queue import open_queue
from kinema.tasks.signals import TaskSignals


class Process:
    """What one kinema process holds: its own engine, store and queue (with its listener)."""

    def __init__(self, url: str, signals: TaskSignals | None = None) -> None:
        self.engine = open_engine(url)
        self.store = Store(self.engine)
        settings = Settings(database_url=url, _env_file=None)  # type: ignore[call-arg]
        queue = open_queue(self.store, settings, signals)
        assert isinstance(queue, ProcrastinateQueue)
        self.queue = queue
        assert queue.listener.listening.wait(10)

    def close(self) -> None:
        self.queue.close()
        self.engine.dispose()


@pytest.fixture
def url(postgres_url: str) -> str:
    engine = open_engine(postgres_url)
    migrate(engine)
    engine.dispose()
    return postgres_url


@pytest.fixture
def one(url: str) -> Iterator[Process]:
    process = Process(url)
    yield process
    process.close()


@pytest.fixture
def other(url: str) -> Iterator[Process]:
    process = Process(url)
    yield process
    process.close()


def submit(process: Process, owner: str = "usr_a", app: str = "kinema/tiny") -> Task:
    return process.store.tasks.submit(owner=owner, app=app, version="1", input={"prompt": "x"}).task


def jobs(process: Process, task_id: str) -> list[dict[str, Any]]:
    with process.engine.connect() as connection:
        found = connection.execute(
            text(
                "SELECT queue_name, status::text AS status, priority, lock, queueing_lock, args,"
                " abort_requested FROM procrastinate_jobs WHERE lock = :t ORDER BY id"
            ),
            {"t": task_id},
        )
        return [dict(row._mapping) for row in found]


def test_open_queue_picks_procrastinate_on_postgresql_only(url: str, tmp_path: Any) -> None:
    assert Settings(database_url=url, _env_file=None).uses_procrastinate  # type: ignore[call-arg]
    assert not Settings(data_dir=tmp_path, _env_file=None).uses_procrastinate  # type: ignore[call-arg]
    assert not Settings(database_url=url, queue="store", _env_file=None).uses_procrastinate  # type: ignore[call-arg]


def test_a_submitted_task_gets_one_job_in_the_same_transaction(one: Process) -> None:
    task = submit(one)
    assert jobs(one, task.id) == [
        {
            "queue_name": "kinema/tiny",
            "status": "todo",
            "priority": 0,
            "lock": task.id,
            "queueing_lock": task.id,
            "args": {"task_id": task.id},
            "abort_requested": False,
        }
    ]
    one.store.accounts.ensure_user("usr_poor", "poor")
    with pytest.raises(InsufficientBalance):  # the hold fails: no task, and no job either
        one.store.tasks.submit(owner="usr_poor", app="kinema/tiny", version="1", input={}, hold_micros=10)
    with one.engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM procrastinate_jobs")) == 1


def test_claim_runs_the_job_and_the_task_together_once(one: Process, other: Process) -> None:
    task = submit(one)
    claimed = other.queue.claim("w1", None, max_running_per_owner=None)
    assert claimed is not None and claimed.id == task.id and claimed.status is TaskStatus.running
    assert [j["status"] for j in jobs(one, task.id)] == ["doing"]
    assert one.queue.claim("w2", None, max_running_per_owner=None) is None
    claimed.status = TaskStatus.completed
    assert one.store.tasks.finish(claimed, attempt=claimed.attempt)
    assert jobs(one, task.id) == []  # the task row and its events keep the history


def test_claim_takes_only_the_queues_of_the_apps_served_and_prefers_warm_ones(one: Process) -> None:
    veo = submit(one, app="google/veo-3-1-fast")
    older = submit(one, app="lightricks/ltx-2-fast")
    warm = submit(one, app="kinema/tiny")
    local = ["kinema/tiny", "lightricks/ltx-2-fast"]
    first = one.queue.claim("w", local, max_running_per_owner=None, prefer=["kinema/tiny"])
    second = one.queue.claim("w", local, max_running_per_owner=None, prefer=["kinema/tiny"])
    assert first is not None and first.id == warm.id
    assert second is not None and second.id == older.id
    assert one.queue.claim("w", local, max_running_per_owner=None) is None
    anything = one.queue.claim("w", None, max_running_per_owner=None)
    assert anything is not None and anything.id == veo.id


def test_new_work_wakes_a_worker_in_another_process(one: Process, other: Process) -> None:
    other.queue.wait_for_work(0)  # start from a quiet state
    timer = threading.Timer(0.2, submit, args=(one,))
    timer.start()
    started = time.monotonic()
    other.queue.wait_for_work(10)
    assert time.monotonic() - started < 2  # a NOTIFY, not the 10 s timeout
    timer.join()


def test_a_cancel_reaches_the_worker_process_running_the_task(one: Process, other: Process) -> None:
    task = submit(one)
    assert other.queue.claim("w", None, max_running_per_owner=None) is not None
    other.queue.wait_for_cancel(0)
    timer = threading.Timer(0.2, one.queue.request_cancel, args=(task.id,), kwargs={"owner": "usr_a"})
    timer.start()
    started = time.monotonic()
    other.queue.wait_for_cancel(10)
    assert time.monotonic() - started < 2
    timer.join()
    assert other.queue.cancel_requested([task.id]) == {task.id}
    assert jobs(one, task.id)[0]["abort_requested"] is True


def test_cancelling_a_queued_task_removes_its_job(one: Process) -> None:
    task = submit(one)
    assert one.queue.request_cancel(task.id, owner="usr_a").status is TaskStatus.cancelled
    assert jobs(one, task.id) == []
    assert one.queue.claim("w", None, max_running_per_owner=None) is None


def test_a_handed_back_task_gets_a_new_job_ahead_of_new_work(one: Process) -> None:
    task = submit(one)
    running = one.queue.claim("stopping", None, max_running_per_owner=None)
    assert running is not None
    newer = submit(one)
    assert one.queue.requeue(task.id, attempt=running.attempt)
    assert [(j["status"], j["priority"]) for j in jobs(one, task.id)] == [("todo", 1)]
    again = one.queue.claim("next", None, max_running_per_owner=None)
    assert again is not None and again.id == task.id and again.attempt == 2
    assert jobs(one, newer.id)[0]["status"] == "todo"


def test_recovery_requeues_expired_leases_and_redispatches_stranded_tasks(one: Process) -> None:
    lost = submit(one)
    one.queue.claim("gone", None, max_running_per_owner=None)
    stranded = submit(one)
    with one.engine.begin() as connection:
        connection.execute(text("DELETE FROM procrastinate_jobs WHERE lock = :t"), {"t": stranded.id})
        connection.execute(
            text("UPDATE tasks SET heartbeat_at = now() - interval '1 minute' WHERE id = :t"), {"t": lost.id}
        )
    recovered = one.queue.recover(max_attempts=3, lease_s=30)
    assert recovered.requeued == [lost.id]
    assert [j["status"] for j in jobs(one, lost.id)] == ["todo"]
    assert [j["status"] for j in jobs(one, stranded.id)] == ["todo"]
    claimed = {t.id for t in (one.queue.claim("w", None, max_running_per_owner=None) for _ in range(2)) if t}
    assert claimed == {lost.id, stranded.id}


def test_a_job_whose_task_ended_elsewhere_is_never_claimed_and_recovery_ends_it(one: Process) -> None:
    task = submit(one)
    with one.engine.begin() as connection:  # ended without the queue knowing (another queue's doing)
        connection.execute(text("UPDATE tasks SET status = 'cancelled' WHERE id = :t"), {"t": task.id})
    assert one.queue.claim("w", None, max_running_per_owner=None) is None
    one.queue.recover(max_attempts=2, lease_s=30)
    assert jobs(one, task.id) == []


def test_running_cap_holds_across_processes_claiming_at_once(one: Process, other: Process) -> None:
    for _ in range(6):
        submit(one, owner="capped")
    submit(one, owner="free")
    claimed: list[Task] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def worker(process: Process, name: str) -> None:
        start.wait()
        for _ in range(3):
            task = process.queue.claim(name, None, max_running_per_owner=2)
            if task is not None:
                with lock:
                    claimed.append(task)

    threads = [threading.Thread(target=worker, args=((one, other)[n % 2], f"w{n}")) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(t.owner or "" for t in claimed) == ["capped", "capped", "free"]


def test_task_events_committed_in_one_process_wake_waiters_in_another(url: str, one: Process) -> None:
    signals = TaskSignals()
    heard: list[set[str]] = []
    signals.notify = lambda ids: heard.append(set(ids))  # type: ignore[method-assign]
    listening = Process(url, signals)
    try:
        task = submit(one)
        one.store.tasks.log(task.id, "hello")
        deadline = time.monotonic() + 5
        while sum(task.id in h for h in heard) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sum(task.id in h for h in heard) == 2  # one NOTIFY per committing transaction
    finally:
        listening.close()

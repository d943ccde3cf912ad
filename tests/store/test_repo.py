"""The task store on SQLite and PostgreSQL: migrations, state transitions, races, pagination, events."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from kinema.domain.tasks import Task, TaskError, TaskProgress, TaskStatus
from kinema.errors import BadRequest, Conflict, NotFound
from kinema.store import Store
from kinema.store.db import current_revision, migrate, open_engine


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    engine = open_engine(database_url)
    migrate(engine)
    yield Store(engine)
    engine.dispose()


def submit(store: Store, owner: str = "usr_a", app: str = "kinema/tiny") -> Task:
    return store.tasks.submit(owner=owner, app=app, version="1", input={"prompt": "x"}).task


def test_migrations_reach_head_and_are_idempotent(database_url: str) -> None:
    engine = open_engine(database_url)
    assert current_revision(engine) is None
    migrate(engine)
    migrate(engine)  # every start runs it again
    assert current_revision(engine) == "0005"
    engine.dispose()


def test_created_task_is_queued_with_a_status_event(store: Store) -> None:
    task = submit(store)
    fetched = store.tasks.get(task.id)
    assert fetched.status is TaskStatus.queued
    assert fetched.owner == "usr_a"
    assert fetched.input == {"prompt": "x"}
    assert fetched.created_at.tzinfo is not None
    events = store.tasks.events_after(task.id)
    assert [(e.kind, e.data) for e in events] == [("status", {"status": "queued"})]


def test_get_task_of_another_owner_is_not_found(store: Store) -> None:
    task = submit(store, owner="usr_a")
    with pytest.raises(NotFound):
        store.tasks.get(task.id, owner="usr_b")
    with pytest.raises(NotFound):
        store.tasks.get("tsk_missing")


def test_claim_takes_oldest_queued_task_once(store: Store) -> None:
    first, second = submit(store), submit(store)
    claimed = store.tasks.claim_next("w1")
    assert claimed is not None and claimed.id == first.id
    assert claimed.status is TaskStatus.running and claimed.started_at is not None
    again = store.tasks.claim_next("w2")
    assert again is not None and again.id == second.id
    assert store.tasks.claim_next("w3") is None


def test_concurrent_claims_never_hand_out_a_task_twice(store: Store) -> None:
    ids = {submit(store).id for _ in range(12)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (task := store.tasks.claim_next(name)) is not None:
            with lock:
                claimed.append(task.id)

    threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(ids)


def test_progress_and_finish_are_recorded_with_events(store: Store) -> None:
    task = submit(store)
    running = store.tasks.claim_next("w1")
    assert running is not None
    store.tasks.set_progress(task.id, TaskProgress(stage="denoise", step=2, total=8))
    assert store.tasks.get(task.id).progress == TaskProgress(stage="denoise", step=2, total=8)
    running.status = TaskStatus.failed
    running.error = TaskError(code="generation_failed", message="boom")
    assert store.tasks.finish(running)
    ended = store.tasks.get(task.id)
    assert ended.status is TaskStatus.failed and ended.error == running.error
    assert ended.completed_at is not None
    kinds = [e.kind for e in store.tasks.events_after(task.id)]
    assert kinds == ["status", "status", "progress", "log", "status", "done"]
    assert not store.tasks.finish(running)  # a second finish changes nothing


def test_cancel_queued_task_ends_it_and_it_is_never_claimed(store: Store) -> None:
    task = submit(store)
    cancelled = store.tasks.request_cancel(task.id, owner="usr_a")
    assert cancelled.status is TaskStatus.cancelled
    assert cancelled.error is not None and cancelled.error.code == "cancelled"
    assert store.tasks.claim_next("w1") is None


def test_cancel_running_task_flags_it_for_its_worker(store: Store) -> None:
    task = submit(store)
    store.tasks.claim_next("w1")
    assert store.tasks.cancel_requested([task.id]) == set()
    still = store.tasks.request_cancel(task.id, owner="usr_a")
    assert still.status is TaskStatus.running
    assert store.tasks.cancel_requested([task.id]) == {task.id}


def test_cancel_finished_task_is_a_conflict(store: Store) -> None:
    task = submit(store)
    store.tasks.request_cancel(task.id, owner="usr_a")
    with pytest.raises(Conflict):
        store.tasks.request_cancel(task.id, owner="usr_a")
    with pytest.raises(NotFound):
        store.tasks.request_cancel(task.id, owner="usr_b")


def test_finish_after_cancel_of_queued_task_writes_nothing(store: Store) -> None:
    task = submit(store)
    store.tasks.request_cancel(task.id, owner=None)
    task.status = TaskStatus.completed
    assert not store.tasks.finish(task)
    assert store.tasks.get(task.id).status is TaskStatus.cancelled


def test_recover_requeues_running_tasks_then_fails_them_after_max_attempts(store: Store) -> None:
    task = submit(store)
    first = store.tasks.claim_next("dead-worker")
    assert first is not None and first.attempt == 1  # each start has its own output key
    recovered = store.tasks.recover_running(max_attempts=2, lease_s=0)
    assert recovered.requeued == [task.id] and recovered.failed == []
    assert store.tasks.get(task.id).status is TaskStatus.queued
    second = store.tasks.claim_next("dead-again")
    assert second is not None and second.attempt == 2
    recovered = store.tasks.recover_running(max_attempts=2, lease_s=0)
    assert recovered.failed == [task.id]
    failed = store.tasks.get(task.id)
    assert failed.status is TaskStatus.failed
    assert failed.error is not None and failed.error.code == "worker_lost"


def test_provider_state_survives_requeues_and_recovery_and_stays_out_of_the_task(store: Store) -> None:
    task = submit(store, app="google/veo-3-1-fast")
    assert store.tasks.provider_state(task.id) is None
    store.tasks.claim_next("w1")
    state = {"provider": "google", "api": "gemini", "operation": "models/veo/operations/op123"}
    store.tasks.save_provider_state(task.id, state)
    assert store.tasks.requeue(task.id)  # a worker stopping
    assert store.tasks.provider_state(task.id) == state
    store.tasks.claim_next("w2")
    assert store.tasks.recover_running(max_attempts=3, lease_s=0).requeued == [task.id]  # a crash
    assert store.tasks.provider_state(task.id) == state
    running = store.tasks.claim_next("w3")
    assert running is not None
    running.status, running.error = TaskStatus.failed, TaskError(code="provider_unavailable", message="x")
    assert store.tasks.finish(running)
    assert store.tasks.provider_state(task.id) == state  # kept after the end, for debugging
    assert "op123" not in store.tasks.get(task.id).model_dump_json()  # never part of the task


def test_list_paginates_newest_first_with_filters(store: Store) -> None:
    made = [submit(store, app="kinema/tiny" if n % 2 else "lightricks/ltx-2-fast") for n in range(7)]
    submit(store, owner="usr_other")
    seen: list[str] = []
    cursor = None
    while True:
        page = store.tasks.page(owner="usr_a", limit=3, cursor=cursor)
        seen += [t.id for t in page.tasks]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [t.id for t in reversed(made)]
    tiny = store.tasks.page(owner="usr_a", app="kinema/tiny", limit=100)
    assert {t.id for t in tiny.tasks} == {t.id for n, t in enumerate(made) if n % 2}
    store.tasks.request_cancel(made[0].id, owner=None)
    cancelled = store.tasks.page(owner="usr_a", status=[TaskStatus.cancelled])
    assert [t.id for t in cancelled.tasks] == [made[0].id]
    with pytest.raises(BadRequest):
        store.tasks.page(owner="usr_a", cursor="not-a-cursor")


def test_counts_by_status(store: Store) -> None:
    submit(store)
    submit(store)
    store.tasks.claim_next("w1")
    counts = store.tasks.counts_by_status()
    assert counts["queued"] == 1 and counts["running"] == 1 and counts["completed"] == 0


def test_files_and_keys(store: Store) -> None:
    stored = store.files.add(
        owner="usr_a",
        purpose="input",
        key="uploads/x",
        filename="a.png",
        content_type="image/png",
        size_bytes=3,
    )
    assert store.files.get(stored.id, owner="usr_a").key == "uploads/x"
    with pytest.raises(NotFound):
        store.files.get(stored.id, owner="usr_b")
    assert not store.accounts.has_admin_key()
    key = store.accounts.add_key(owner="usr_admin", name="admin", key_hash="h" * 64, is_admin=True)
    found = store.accounts.find_key("h" * 64)
    assert found is not None and found.id == key.id and found.is_admin
    assert store.accounts.find_key("x" * 64) is None
    assert store.accounts.has_admin_key()


def test_the_cluster_migration_goes_down_and_up_again_cleanly(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect, text

    from kinema.store.db import MIGRATIONS

    engine = open_engine(database_url)
    migrate(engine)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0004")
    assert current_revision(engine) == "0004"
    assert not any(
        name.startswith(("procrastinate", "rate_limits")) for name in inspect(engine).get_table_names()
    )
    if engine.dialect.name == "postgresql":  # procrastinate's functions and types went with its tables
        with engine.connect() as connection:
            left = "SELECT count(*) FROM pg_proc WHERE proname LIKE 'procrastinate%'"
            assert connection.scalar(text(left)) == 0
    migrate(engine)
    assert current_revision(engine) == "0005"
    engine.dispose()

"""Accounts, ledger, idempotency, deadlines, per-account limits and webhook queueing, on both databases."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest

from kinema.billing.pricing import to_micros
from kinema.domain.outputs import Billing, OutputMeta
from kinema.domain.tasks import TaskError, TaskStatus, utcnow
from kinema.errors import Conflict, InsufficientBalance, NotFound
from kinema.store import Store
from kinema.store.db import migrate, open_engine


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    engine = open_engine(database_url)
    migrate(engine)
    yield Store(engine)
    engine.dispose()


@pytest.fixture
def alice(store: Store) -> str:
    user = store.accounts.create_user("alice")
    store.accounts.credit(user.id, to_micros("2.00"), note="welcome")
    return user.id


def meta(cost: str) -> OutputMeta:
    return OutputMeta(
        width=1920, height=1080, resolution="1080p", aspect_ratio="16:9", duration=5.0, fps=24.0, frames=120,
        has_audio=True, video_codec="h264", audio_codec="aac", size_bytes=1, seed=1, timings={},
        billing=Billing(billable_seconds="5", rate_per_second="0.25", cost=cost, currency="USD"),
    )  # fmt: skip


def complete(store: Store, task_id: str, cost: str) -> bool:
    task = store.tasks.get(task_id)
    task.status, task.output_meta = TaskStatus.completed, meta(cost)
    return store.tasks.finish(task)


def test_hold_charge_and_release_give_the_right_balance(store: Store, alice: str) -> None:
    task = store.tasks.submit(
        owner=alice, app="kinema/tiny", version="1", input={}, hold_micros=to_micros("1.25")
    ).task
    summary = store.accounts.summary(alice)
    assert summary.balance.balance_micros == to_micros("2.00")
    assert summary.balance.held_micros == to_micros("1.25")
    assert summary.balance.available_micros == to_micros("0.75")
    store.tasks.claim_next("w")
    assert complete(store, task.id, "1.25")
    summary = store.accounts.summary(alice)
    assert summary.balance.balance_micros == to_micros("0.75")
    assert summary.balance.held_micros == 0
    (usage,) = summary.usage
    assert (usage.app, usage.tasks, usage.cost_micros) == ("kinema/tiny", 1, to_micros("1.25"))
    assert usage.day == utcnow().date().isoformat()
    kinds = [e["kind"] for e in store.accounts.ledger_entries(alice)]
    assert kinds == ["credit", "hold", "release", "charge"]


def test_insufficient_balance_is_402_with_amounts_and_nothing_is_queued(store: Store, alice: str) -> None:
    with pytest.raises(InsufficientBalance) as raised:
        store.tasks.submit(owner=alice, app="a", version="1", input={}, hold_micros=to_micros("2.000001"))
    assert raised.value.status == 402
    assert raised.value.details == {"needed": "2.000001", "available": "2.00", "currency": "USD"}
    assert store.tasks.page(owner=alice).tasks == []
    assert [e["kind"] for e in store.accounts.ledger_entries(alice)] == ["credit"]


def test_failed_and_cancelled_tasks_cost_nothing(store: Store, alice: str) -> None:
    queued = store.tasks.submit(
        owner=alice, app="a", version="1", input={}, hold_micros=to_micros("0.5")
    ).task
    running = store.tasks.submit(
        owner=alice, app="a", version="1", input={}, hold_micros=to_micros("0.5")
    ).task
    store.tasks.request_cancel(queued.id, owner=alice)
    claimed = store.tasks.claim_next("w")  # the first queued one is gone; this is `running`
    assert claimed is not None and claimed.id == running.id
    claimed.status, claimed.error = TaskStatus.failed, TaskError(code="x", message="boom")
    assert store.tasks.finish(claimed)
    summary = store.accounts.summary(alice)
    assert summary.balance.balance_micros == to_micros("2.00") and summary.balance.held_micros == 0
    assert summary.usage == []


def test_completion_and_cancel_racing_charge_exactly_once(store: Store, alice: str) -> None:
    def finish(task_id: str, barrier: threading.Barrier) -> None:
        barrier.wait()
        complete(store, task_id, "0.1")

    def cancel(task_id: str, barrier: threading.Barrier) -> None:
        barrier.wait()
        with contextlib.suppress(Conflict):
            store.tasks.request_cancel(task_id, owner=alice)

    for _ in range(5):
        task = store.tasks.submit(
            owner=alice, app="a", version="1", input={}, hold_micros=to_micros("0.1")
        ).task
        store.tasks.claim_next("w")
        barrier = threading.Barrier(3)
        threads = [threading.Thread(target=f, args=(task.id, barrier)) for f in (finish, finish, cancel)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    charges = [e for e in store.accounts.ledger_entries(alice) if e["kind"] == "charge"]
    assert len(charges) == 5 and len({c["task_id"] for c in charges}) == 5
    assert store.accounts.summary(alice).balance.balance_micros == to_micros("1.5")


def test_concurrent_holds_never_overdraw(store: Store, alice: str) -> None:
    results: list[bool] = []
    lock = threading.Lock()

    def submit() -> None:
        try:
            store.tasks.submit(owner=alice, app="a", version="1", input={}, hold_micros=to_micros("0.5"))
            ok = True
        except InsufficientBalance:
            ok = False
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 4  # 2.00 / 0.50
    assert store.accounts.summary(alice).balance.available_micros == 0


def test_idempotency_key_returns_the_same_task_and_refuses_a_different_body(store: Store) -> None:
    first = store.tasks.submit(
        owner="u", app="a", version="1", input={"p": 1}, idempotency_key="k", request_hash="h1"
    )
    again = store.tasks.submit(
        owner="u", app="a", version="1", input={"p": 1}, idempotency_key="k", request_hash="h1"
    )
    assert again.replayed and again.task.id == first.task.id
    with pytest.raises(Conflict):
        store.tasks.submit(
            owner="u", app="a", version="1", input={"p": 2}, idempotency_key="k", request_hash="h2"
        )
    other_owner = store.tasks.submit(
        owner="v", app="a", version="1", input={}, idempotency_key="k", request_hash="h1"
    )
    assert not other_owner.replayed and other_owner.task.id != first.task.id


def test_expired_idempotency_key_makes_a_new_task(store: Store) -> None:
    first = store.tasks.submit(owner="u", app="a", version="1", input={}, idempotency_key="k",
                               idempotency_ttl_s=1, request_hash="h")  # fmt: skip
    from sqlalchemy import update

    from kinema.store.schema import IdempotencyKeyRow

    with store.db.session() as session:
        session.execute(update(IdempotencyKeyRow).values(expires_at=utcnow() - timedelta(seconds=1)))
    second = store.tasks.submit(
        owner="u", app="a", version="1", input={}, idempotency_key="k", request_hash="h"
    )
    assert not second.replayed and second.task.id != first.task.id


def test_concurrent_idempotent_submissions_create_one_task(store: Store) -> None:
    ids: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def submit() -> None:
        barrier.wait()
        result = store.tasks.submit(
            owner="u", app="a", version="1", input={}, idempotency_key="same", request_hash="h"
        )
        with lock:
            ids.append(result.task.id)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 1
    assert len(store.tasks.page(owner="u").tasks) == 1


def test_deadline_cancels_queued_and_flags_running_tasks(store: Store) -> None:
    past = utcnow() - timedelta(seconds=1)
    running = store.tasks.submit(owner="u", app="a", version="1", input={}, deadline_at=past).task
    queued = store.tasks.submit(owner="u", app="a", version="1", input={}, deadline_at=past).task
    later = store.tasks.submit(
        owner="u", app="a", version="1", input={}, deadline_at=utcnow() + timedelta(hours=1)
    ).task
    store.tasks.claim_next("w")
    assert sorted(store.tasks.expire_deadlines()) == sorted([running.id, queued.id])
    ended = store.tasks.get(queued.id)
    assert ended.status is TaskStatus.cancelled and ended.error is not None
    assert ended.error.code == "deadline_exceeded"
    assert store.tasks.cancel_requested([running.id]) == {running.id}
    task = store.tasks.get(running.id)
    task.status, task.error = TaskStatus.cancelled, TaskError(code="cancelled", message="stopped")
    assert store.tasks.finish(task)
    finished = store.tasks.get(running.id)
    assert finished.error is not None and finished.error.code == "deadline_exceeded"
    assert store.tasks.get(later.id).status is TaskStatus.queued
    assert store.tasks.expire_deadlines() == []


def test_running_cap_per_account_keeps_extra_tasks_queued(store: Store) -> None:
    a1 = store.tasks.submit(owner="a", app="x", version="1", input={}).task
    a2 = store.tasks.submit(owner="a", app="x", version="1", input={}).task
    b1 = store.tasks.submit(owner="b", app="x", version="1", input={}).task
    first = store.tasks.claim_next("w1", max_running_per_owner=1)
    second = store.tasks.claim_next("w2", max_running_per_owner=1)
    assert first is not None and first.id == a1.id
    assert second is not None and second.id == b1.id  # a2 waits: a already runs one
    assert store.tasks.claim_next("w3", max_running_per_owner=1) is None
    first.status = TaskStatus.failed
    store.tasks.finish(first)
    third = store.tasks.claim_next("w3", max_running_per_owner=1)
    assert third is not None and third.id == a2.id


def test_webhooks_are_queued_for_the_chosen_events_only(store: Store) -> None:
    task = store.tasks.submit(
        owner="u", app="a", version="1", input={}, webhook_url="https://example.com/hook",
        webhook_events=["start", "completed"],
    ).task  # fmt: skip
    claimed = store.tasks.claim_next("w")
    assert claimed is not None
    from kinema.domain.tasks import TaskProgress

    store.tasks.set_progress(task.id, TaskProgress(stage="denoise", step=1, total=8))
    claimed.status = TaskStatus.completed
    store.tasks.finish(claimed)
    deliveries = store.webhooks.for_task(task.id, owner="u")
    assert [d.event for d in deliveries] == ["start", "completed"]
    assert all(d.status == "pending" and d.url == "https://example.com/hook" for d in deliveries)
    assert {d.id for d in store.webhooks.due()} == {d.id for d in deliveries}
    with pytest.raises(NotFound):
        store.webhooks.for_task(task.id, owner="someone-else")


def test_webhook_attempts_back_off_then_give_up(store: Store) -> None:
    task = store.tasks.submit(
        owner="u", app="a", version="1", input={}, webhook_url="https://example.com/h"
    ).task
    store.tasks.claim_next("w")
    (delivery,) = store.webhooks.due()
    store.webhooks.record_attempt(delivery.id, status_code=500, error=None, duration_ms=3, delivered=False,
                                  retry_delays_s=[60, 60])  # fmt: skip
    assert store.webhooks.due() == []  # next attempt is a minute away
    (pending,) = store.webhooks.for_task(task.id, owner="u")
    assert pending.attempts == 1 and pending.next_attempt_at is not None
    for _ in range(2):
        store.webhooks.record_attempt(delivery.id, status_code=None, error="refused", duration_ms=1,
                                      delivered=False, retry_delays_s=[60, 60])  # fmt: skip
    (gave_up,) = store.webhooks.for_task(task.id, owner="u")
    assert gave_up.status == "failed" and [a.attempt for a in gave_up.history] == [1, 2, 3]


def test_keys_list_revoke_and_admin_role_from_the_user(store: Store) -> None:
    admin = store.accounts.create_user("root", is_admin=True)
    key = store.accounts.add_key(owner=admin.id, name="laptop", key_hash="a" * 64, prefix="kin_abcd")
    found = store.accounts.find_key("a" * 64)
    assert found is not None and found.is_admin
    store.accounts.touch_key(key.id)
    (listed,) = store.accounts.list_keys(admin.id)
    assert listed.prefix == "kin_abcd" and listed.last_used_at is not None
    with pytest.raises(NotFound):
        store.accounts.revoke_key("usr_other", key.id)
    assert store.accounts.revoke_key(admin.id, key.id).revoked_at is not None
    assert store.accounts.find_key("a" * 64) is None
    with pytest.raises(Conflict):
        store.accounts.create_user("root")
    assert store.accounts.get_user("root").id == admin.id
    assert Decimal(0) == Decimal(store.accounts.summary(admin.id).balance.balance_micros)

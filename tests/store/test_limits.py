"""Rate-limit counters in the database (SQLite and PostgreSQL): the sliding window, Retry-After, races."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from kinema.store import Store
from kinema.store.db import migrate, open_engine
from kinema.store.limits import retry_after, sliding_estimate


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    engine = open_engine(database_url)
    migrate(engine)
    yield Store(engine)
    engine.dispose()


def test_a_key_gets_its_limit_per_window_then_a_retry_after(store: Store) -> None:
    hits = [store.limits.hit("k", limit=3, period_s=60, now=1200.0 + n).allowed for n in range(4)]
    assert hits == [True, True, True, False]
    refused = store.limits.hit("k", limit=3, period_s=60, now=1210.0)
    assert not refused.allowed and refused.retry_after == pytest.approx(50 + 20)  # next window, weighted
    assert store.limits.hit("other", limit=3, period_s=60, now=1210.0).allowed  # keys are apart


def test_the_previous_window_counts_for_the_part_still_inside_the_sliding_window(store: Store) -> None:
    for n in range(4):
        assert store.limits.hit("k", limit=4, period_s=60, now=1200.0 + n).allowed
    # 15 s into the next window, 45/60 of the previous one's 4 hits still count: 3, so one more fits
    assert store.limits.hit("k", limit=4, period_s=60, now=1275.0).allowed
    assert not store.limits.hit("k", limit=4, period_s=60, now=1276.0).allowed
    # 45 s in, only a quarter of them count (1 + 1 this window): two more fit
    assert [store.limits.hit("k", limit=4, period_s=60, now=1305.0 + n).allowed for n in range(3)] == [
        True,
        True,
        False,
    ]


def test_concurrent_requests_never_overshoot_the_limit(store: Store) -> None:
    allowed: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def client() -> None:
        start.wait()
        for _ in range(5):
            result = store.limits.hit("shared", limit=10, period_s=3600, now=7200.0)
            with lock:
                allowed.append(result.allowed)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 10 and len(allowed) == 40


def test_sliding_estimate_and_retry_after_arithmetic() -> None:
    assert sliding_estimate(current=2, previous=4, elapsed=15, period=60) == 5
    assert retry_after(current=1, previous=4, elapsed=15, period=60, limit=4) == pytest.approx(15)
    assert retry_after(current=0, previous=0, elapsed=0, period=60, limit=4) == 0
    assert retry_after(current=4, previous=0, elapsed=10, period=60, limit=4) == pytest.approx(50 + 15)

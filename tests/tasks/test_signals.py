"""Wake-ups for waiters: the store announces committed task events; TaskSignals fans them out."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from kinema.store import Store
from kinema.store.db import migrate, open_engine
from kinema.tasks.signals import TaskSignals


def test_a_commit_announces_the_tasks_whose_events_changed_and_a_rollback_nothing(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    store = Store(engine)
    heard: list[set[str]] = []
    store.db.on_commit(heard.append)
    task = store.tasks.submit(owner="usr_a", app="kinema/tiny", version="1", input={}).task
    store.tasks.log(task.id, "hello")
    assert heard == [{task.id}, {task.id}]
    with pytest.raises(RuntimeError), store.db.session() as session:
        from kinema.store.tasks import add_event

        add_event(session, task.id, "log", {"message": "never"})
        raise RuntimeError("rolled back")
    store.tasks.heartbeat("w", [task.id])  # no event: nothing to announce
    assert heard == [{task.id}, {task.id}]
    engine.dispose()


def test_waiters_of_a_task_wake_on_its_signal_only() -> None:
    signals = TaskSignals()

    async def scenario() -> tuple[bool, bool, bool]:
        with signals.watch("tsk_a") as a, signals.watch("tsk_b") as b:
            assert signals.waiting == 2
            threading.Timer(0.05, signals.notify, args=(["tsk_a"],)).start()
            woke_a = await a.wait(5)
            woke_b = await b.wait(0.1)
            signals.notify(["tsk_a"])  # before the wait: not lost
            started = asyncio.get_running_loop().time()
            again = await a.wait(5) and asyncio.get_running_loop().time() - started < 1
        return woke_a, woke_b, again

    assert asyncio.run(scenario()) == (True, False, True)
    assert signals.waiting == 0


def test_notify_all_wakes_everyone_after_a_gap() -> None:
    signals = TaskSignals()

    async def scenario() -> list[bool]:
        with signals.watch("tsk_a") as a, signals.watch("tsk_b") as b:
            signals.notify_all()
            return [await a.wait(1), await b.wait(1)]

    assert asyncio.run(scenario()) == [True, True]

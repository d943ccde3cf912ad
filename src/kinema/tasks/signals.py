"""Wake-ups for whoever waits on a task: a run request waiting for its result, an SSE stream.

One source per process feeds them: the store's commits in this process (Database.on_commit), and on
PostgreSQL the queue's LISTEN connection, which hears every process's commits. Each notification is fanned
out to the waiters of that task, so a thousand open streams cost one listener, not a thousand pollers.
A waiter re-reads the store when woken; it also re-reads every `fallback_s` seconds, in case a wake-up was
missed (a listener reconnecting, a writer in another process on SQLite).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable, Iterator


class Waiter:
    """One coroutine's wake-up for one task."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()

    def set(self) -> None:
        """Wake the waiting coroutine (from any thread)."""
        with contextlib.suppress(RuntimeError):  # its loop has closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float) -> bool:
        """Whether a wake-up came within timeout seconds; either way the next wait starts afresh."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._event.clear()


class TaskSignals:
    """Waiters by task id; notify() wakes them. Thread-safe; waiting is async."""

    def __init__(self, fallback_s: float = 1.0) -> None:
        self.fallback_s = fallback_s
        self._waiters: dict[str, set[Waiter]] = {}
        self._lock = threading.Lock()

    def notify(self, task_ids: Iterable[str]) -> None:
        """These tasks' events changed: wake everyone waiting on them."""
        with self._lock:
            woken = [waiter for task_id in task_ids for waiter in self._waiters.get(task_id, ())]
        for waiter in woken:
            waiter.set()

    def notify_all(self) -> None:
        """Wake every waiter (after a gap in which notifications may have been lost)."""
        with self._lock:
            woken = [waiter for waiters in self._waiters.values() for waiter in waiters]
        for waiter in woken:
            waiter.set()

    @contextlib.contextmanager
    def watch(self, task_id: str) -> Iterator[Waiter]:
        """A waiter for task_id, registered before the caller reads the task, so no change is missed."""
        waiter = Waiter(asyncio.get_running_loop())
        with self._lock:
            self._waiters.setdefault(task_id, set()).add(waiter)
        try:
            yield waiter
        finally:
            with self._lock:
                waiters = self._waiters.get(task_id)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._waiters[task_id]

    @property
    def waiting(self) -> int:
        """How many waiters are registered (for tests and metrics)."""
        with self._lock:
            return sum(len(waiters) for waiters in self._waiters.values())

"""The runner: worker threads that claim queued tasks from the queue, run them and record the outcome.

Model work runs in these threads, never on the API's event loop. Progress and log lines go into the
store's event log (which SSE replays); cancellation arrives through the queue, so a cancel sent to any
API process reaches the worker at once (NOTIFY) or within one poll, and stops the model within one
denoising step.

Leases: the watcher thread heartbeats the running tasks; a task whose worker stops heartbeating for
settings.lease_s is taken back by any runner's periodic recovery (or at once, when the worker's process is
known to have exited on this host). Every write a run makes is fenced by its attempt number, so a worker
that lost its lease cannot record (or charge) the task, and its output goes to a key of its own.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import Any

from kinema.apps.registry import get_app, list_apps
from kinema.domain.stages import stage_label
from kinema.domain.tasks import Task, TaskError, TaskProgress, TaskStatus, utcnow
from kinema.engines.base import CancelToken, ProgressEvent
from kinema.engines.cache import WarmModels
from kinema.errors import KinemaError, NotFound
from kinema.settings import Settings
from kinema.storage.base import Storage
from kinema.storage.keys import output_key
from kinema.storage.staging import process_alive
from kinema.store import Store
from kinema.tasks.queue import TaskQueue
from kinema.tasks.worker import RunContext, prepare_input, run_task

log = logging.getLogger(__name__)


DEADLINE_CHECK_S = 1.0
HEARTBEAT_S = 5.0  # how often a worker tells the queue its running tasks are alive (at most; lease_s / 3)
RECOVER_S = 15.0  # how often a runner looks for tasks whose lease expired (at most; lease_s / 2)
# Worker threads run this much nicer than the API: on a CPU-bound host (the tiny model, CPU offload, model
# loading) model work would otherwise take the cores from the event loop, and /healthz and submits stall.
WORKER_NICENESS = 10


def lower_thread_priority(increment: int = WORKER_NICENESS) -> None:
    """Lower the CPU priority of the calling thread and of the threads it starts (torch's CPU pool).

    Linux keeps a niceness per thread; elsewhere, or without permission, this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
    except OSError as exc:
        log.debug("could not lower the worker thread's priority: %s", exc)


def host_name() -> str:
    """This host's name as worker ids carry it (no colons: they separate the id's parts)."""
    return socket.gethostname().replace(":", "_")


def exited_workers(worker_ids: Collection[str], host: str) -> set[str]:
    """Of these worker ids (host:pid:...), those of this host whose process has exited."""
    dead = set()
    for worker_id in worker_ids:
        worker_host, _, rest = worker_id.partition(":")
        pid = rest.partition(":")[0]
        if worker_host == host and pid.isdigit() and not process_alive(int(pid)):
            dead.add(worker_id)
    return dead


def settle_heap() -> None:
    """Collect once, then take every object alive now out of the cyclic collector's scans (gc.freeze).

    A full collection walks every tracked object with the GIL held. With torch and a model loaded that is
    millions of objects and 0.1 to 0.6 s, during which the API answers nothing: a burst of submits triggers
    several and /healthz took seconds. What exists at start and what a model load creates lives as long as
    the process (or the warm cache entry), so it need not be scanned again.
    """
    gc.collect()
    gc.freeze()


class Runner:
    """In-process workers over a task queue. start() sweeps staging, recovers orphans, starts the threads.

    apps restricts what it serves (None: every app); each local worker prefers tasks of the apps whose
    models it has warm.
    """

    def __init__(
        self,
        store: Store,
        queue: TaskQueue,
        settings: Settings,
        storage: Storage,
        warm: WarmModels,
        *,
        workers: int = 1,
        remote_workers: int | None = None,
        apps: Collection[str] | None = None,
        poll_s: float = 0.5,
        cancel_poll_s: float = 0.2,
        on_finished: Callable[[Task], None] | None = None,
    ) -> None:
        self.store, self.queue, self.settings, self.storage, self.warm = store, queue, settings, storage, warm
        # Each local worker owns a device and its warm models (worker 0 the cache it was given); a provider
        # worker needs neither.
        self.warms = [warm] + [WarmModels(warm.capacity) for _ in range(1, workers)]
        self._warm_apps: list[OrderedDict[str, None]] = [OrderedDict() for _ in range(max(workers, 1))]
        self._devices: dict[int, str] = {}
        # Two pools: `workers` threads (one per GPU) run local models; `remote_workers` threads run provider
        # apps, which only wait on the network. Without a remote pool the GPU workers take every app.
        self.workers = workers
        self.remote_workers = settings.remote_workers if remote_workers is None else remote_workers
        self.restricted = apps is not None
        served = set(apps) if apps is not None else None
        self.local_apps = [
            a.id for a in list_apps() if not a.is_remote and (served is None or a.id in served)
        ]
        self.remote_apps = [a.id for a in list_apps() if a.is_remote and (served is None or a.id in served)]
        self.poll_s, self.cancel_poll_s = poll_s, cancel_poll_s
        self.heartbeat_s = min(HEARTBEAT_S, settings.lease_s / 3)
        self.recover_s = max(0.2, min(RECOVER_S, settings.lease_s / 2))
        self.on_finished = on_finished
        self.host = host_name()
        self.id = f"{self.host}:{os.getpid()}:{id(self):x}"
        self._stopping = threading.Event()
        self._draining = threading.Event()
        self._threads: list[threading.Thread] = []
        self._workers: list[threading.Thread] = []
        self._running: dict[str, CancelToken] = {}
        self._lock = threading.Lock()

    # Lifecycle -----------------------------------------------------------------------------------

    @property
    def apps(self) -> list[str]:
        """The apps this runner's workers take tasks of."""
        apps = list(self.local_apps) if self.workers else []
        return apps + self.remote_apps if self.remote_workers or self.workers else apps

    def start(self) -> None:
        self.storage.sweep_staging(self.settings.staging_grace_s)  # what a crashed run left in staging
        self.recover(restarted=True)
        if self.remote_workers:
            local_apps: list[str] | None = self.local_apps
        else:  # without a provider pool the local workers take every app (None: any, when unrestricted)
            local_apps = self.local_apps + self.remote_apps if self.restricted else None
        workers: list[tuple[str, list[str] | None, int | None]] = [
            *((f"kinema-worker-{n}", local_apps, n) for n in range(self.workers)),
            *((f"kinema-remote-{n}", self.remote_apps, None) for n in range(self.remote_workers)),
        ]
        for name, apps, slot in workers:
            if apps is not None and not apps:  # restricted to apps the other pool runs: nothing to claim
                continue
            thread = threading.Thread(target=self._work, args=(apps, slot), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
            self._workers.append(thread)
        if self.workers or self.remote_workers:
            watcher = threading.Thread(target=self._watch_cancels, name="kinema-cancels", daemon=True)
            watcher.start()
            self._threads.append(watcher)

    def recover(self, *, restarted: bool = False) -> None:
        """Take back tasks whose worker is gone: no heartbeat within the lease, or its process on this host
        has exited (found at once, without waiting out the lease). restarted: this is a server's start."""
        dead = exited_workers(self.store.tasks.running_workers(f"{self.host}:"), self.host)
        recovered = self.queue.recover(
            self.settings.task_max_attempts,
            lease_s=self.settings.lease_s,
            dead_workers=dead,
            restarted=restarted,
        )
        for task_id in recovered.requeued:
            log.warning("task %s was left running by a worker that stopped; requeued", task_id)
        for task_id in recovered.failed:
            log.warning("task %s was left running too many times (or was cancelled); ended", task_id)

    def drain(
        self, grace_s: float, timeout: float = 30.0, *, interrupt: threading.Event | None = None
    ) -> None:
        """Stop claiming; let running tasks finish for up to grace_s (or until interrupt is set), then hand
        the rest back to the queue and stop."""
        self._draining.set()
        self.queue.wake()
        deadline = time.monotonic() + grace_s
        for thread in self._workers:
            while thread.is_alive() and time.monotonic() < deadline:
                if interrupt is not None and interrupt.is_set():
                    break
                thread.join(min(0.2, max(0.0, deadline - time.monotonic())))
        with self._lock:
            left = list(self._running)
        if left:
            log.warning("handing back %d task(s) still running after %.0f s: %s", len(left), grace_s, left)
        self.stop(timeout)

    @property
    def busy(self) -> int:
        """How many tasks this runner is running now."""
        with self._lock:
            return len(self._running)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming work; interrupt running tasks (they go back to the queue) and join the threads."""
        self._stopping.set()
        self.queue.wake()
        with self._lock:
            for token in self._running.values():
                token.cancel()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()
        self._workers.clear()

    @property
    def alive(self) -> bool:
        """Every worker thread is running (true when this process runs no workers)."""
        return not self._stopping.is_set() and all(t.is_alive() for t in self._threads)

    def cancel(self, task_id: str) -> None:
        """Stop a task this process is running now."""
        with self._lock:
            token = self._running.get(task_id)
        if token is not None:
            token.cancel()

    # Threads -------------------------------------------------------------------------------------

    def _work(self, apps: list[str] | None, slot: int | None) -> None:
        """Claim and run tasks of these apps (None: any app) until stopped; slot: the local worker's index."""
        lower_thread_priority()
        warm = self.warms[slot] if slot is not None else None
        warm_models = len(warm) if warm is not None else 0
        warm_apps = self._warm_apps[slot] if slot is not None else OrderedDict()
        while not self._stopping.is_set() and not self._draining.is_set():
            try:
                task = self.queue.claim(
                    self.id,
                    apps,
                    max_running_per_owner=self.settings.max_running_per_account,
                    prefer=list(warm_apps),
                )
            except Exception:
                log.exception("could not claim a task; retrying")
                task = None
            if task is None:
                self.queue.wait_for_work(self.poll_s)
                continue
            try:
                self._run(task, slot)
            except Exception:  # the task is failed below; the worker must survive
                log.exception("worker error on task %s", task.id)
                task.status = TaskStatus.failed
                task.error = TaskError(code="internal_error", message="the worker failed; see the server log")
                self._finish(task)
            if warm is not None and task.app in self.local_apps:  # its model is warm here now
                warm_apps[task.app] = None
                warm_apps.move_to_end(task.app)
                while len(warm_apps) > warm.capacity:
                    warm_apps.popitem(last=False)
            if warm is not None and len(warm) > warm_models:  # a model loaded: its objects stay, unscanned
                warm_models = len(warm)
                settle_heap()

    def _watch_cancels(self) -> None:
        """Stop tasks whose cancel was requested; apply deadlines; heartbeat the running tasks (stopping any
        this worker no longer holds); now and then take back tasks of workers that are gone."""
        deadlines_due = heartbeat_due = 0.0
        recover_due = time.monotonic() + self.recover_s
        while not self._stopping.is_set():
            self.queue.wait_for_cancel(self.cancel_poll_s)
            with self._lock:
                running = list(self._running)
            lost: set[str] = set()
            try:
                if time.monotonic() >= deadlines_due:  # Cancel-After needs no finer grain than a second
                    deadlines_due = time.monotonic() + DEADLINE_CHECK_S
                    self.store.tasks.expire_deadlines()  # flags running tasks, ends queued ones
                if running and time.monotonic() >= heartbeat_due:
                    heartbeat_due = time.monotonic() + self.heartbeat_s
                    lost = set(running) - self.queue.heartbeat(self.id, running)
                wanted = self.queue.cancel_requested(running)
                if time.monotonic() >= recover_due:
                    recover_due = time.monotonic() + self.recover_s
                    self.recover()
            except Exception:
                log.exception("could not read cancellations or heartbeat")
                continue
            for task_id in lost:
                with self._lock:
                    token = self._running.get(task_id)
                if token is not None:  # still ours here: the lease expired and the task went elsewhere
                    log.warning(
                        "task %s is no longer held by this worker (lease expired); stopping it", task_id
                    )
                    token.cancel()
            for task_id in wanted:
                self.cancel(task_id)

    def _run(self, task: Task, slot: int | None = None) -> None:
        token = CancelToken()
        with self._lock:
            self._running[task.id] = token
        try:
            self.store.tasks.log(task.id, f"started on worker {self.id} ({threading.current_thread().name})")
            result = self._execute(task, token, slot)
        finally:
            with self._lock:
                if self._running.get(task.id) is token:  # a later start of it here keeps its own entry
                    del self._running[task.id]
        interrupted = result.status is TaskStatus.cancelled and self._stopping.is_set()
        if interrupted and not self.queue.cancel_requested([task.id]):
            # stopped by shutdown, not by a user: another worker (or this one, restarted) runs it again
            self.queue.requeue(task.id, attempt=task.attempt)
            return
        self._finish(result)

    def device(self, slot: int) -> str:
        """The device local worker `slot` owns, found on its first local task (this imports torch)."""
        if slot not in self._devices:
            from kinema.engines.device import worker_device

            self._devices[slot] = worker_device(slot, self.settings)
            log.info("local worker %d runs on %s", slot, self._devices[slot])
        return self._devices[slot]

    def _execute(self, task: Task, token: CancelToken, slot: int | None = None) -> Task:
        try:
            app = get_app(task.app)
            local_slot = 0 if slot is None else slot  # a provider worker taking a local task: worker 0's
            device = None if app.is_remote else self.device(local_slot)
            raw = dict(task.input)
            local = False
            image = raw.get("image")
            with contextlib.ExitStack() as stack:
                if isinstance(image, str) and image.startswith("file_"):
                    stored = self.store.files.get(image, owner=task.owner)
                    path = stack.enter_context(self.storage.local_file(stored.key))
                    raw["image"], local = str(path), True
                prepared = prepare_input(app, raw, self.settings, allow_local_paths=local)
        except NotFound as exc:
            return self._failed(task, "invalid_input", f"image: {exc.message}")
        except KinemaError as exc:
            return self._failed(task, exc.code, exc.message)

        last_stage: list[str] = []

        def progress(event: ProgressEvent) -> None:
            if not last_stage or last_stage[-1] != event.stage:
                last_stage.append(event.stage)
                self.store.tasks.log(task.id, stage_label(event.stage))
            self.store.tasks.set_progress(
                task.id,
                TaskProgress(stage=event.stage, step=event.step, total=event.total),
                attempt=task.attempt,
            )

        resume, save_provider_state = self._provider_state(task)
        ctx = RunContext(
            settings=self.settings,
            storage=self.storage,
            progress=progress,
            cancel=token,
            warm=self.warms[min(local_slot, len(self.warms) - 1)],
            device=device,
            resume=resume,
            on_provider_state=save_provider_state,
        )
        result = run_task(app, task.input, ctx, prepared=prepared, task=task)
        if result.status is TaskStatus.completed and result.output_meta is not None:
            stored = self.store.files.add(
                owner=task.owner or "",
                purpose="output",
                key=output_key(task.id, task.attempt),  # where run_task stored it
                filename=f"{task.id}.mp4",
                content_type="video/mp4",
                size_bytes=result.output_meta.size_bytes,
            )
            result.output_file = stored.id
            seconds = result.output_meta.timings.get("total", 0.0)
            self.store.tasks.log(task.id, f"completed in {seconds:.2f} s")
        return result

    def _provider_state(self, task: Task) -> tuple[dict[str, Any] | None, Callable[[dict[str, Any]], None]]:
        """What an earlier attempt of the task saved for its provider, and how this attempt saves new state.

        A provider's engine saves its operation before it waits, so a task requeued after a crash or a
        stop resumes that operation instead of paying for a second one. If the store cannot take it, the
        run goes on (the provider is already working, and billing): only a crash before the end would
        then submit again.
        """
        saved = self.store.tasks.provider_state(task.id)
        if saved is not None:
            self.store.tasks.log(task.id, "resuming the provider's work from an earlier attempt")

        def save(state: dict[str, Any]) -> None:
            try:
                self.store.tasks.save_provider_state(task.id, state)
            except Exception:
                log.exception(
                    "task %s: could not save its provider state; a restart would submit again", task.id
                )

        return saved, save

    def _failed(self, task: Task, code: str, message: str) -> Task:
        task.status, task.error, task.completed_at = (
            TaskStatus.failed,
            TaskError(code=code, message=message),
            utcnow(),
        )
        return task

    def _finish(self, task: Task) -> None:
        charged = self.settings.billing_enabled
        if not self.store.tasks.finish(task, charge=charged, attempt=task.attempt):
            log.warning("task %s ended elsewhere (or went to another worker); discarding this run", task.id)
            if task.output_file is not None:  # this start's own key: never another start's output
                self.storage.delete(output_key(task.id, task.attempt))
            return
        if self.on_finished is not None:
            try:
                self.on_finished(task)
            except Exception:
                log.exception("on_finished hook failed")

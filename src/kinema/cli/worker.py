"""`kinema worker`: worker processes that take queued tasks from the database, one per GPU.

One process owns one device and keeps its models warm across tasks. With several GPUs (or --processes N on
a CPU box) a parent process supervises one child per GPU: it restarts a child that dies, and passes
SIGTERM on, so each child finishes (or hands back) its task before exiting.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from kinema.apps.registry import list_apps
from kinema.settings import Settings

log = logging.getLogger("kinema.worker")

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # waits before restarting a child that keeps dying
STEADY_S = 60.0  # a child that ran this long before dying starts its backoff afresh
STOP_EXTRA_S = 30.0  # how long past the grace period the parent waits for its children before killing


def served_apps(settings: Settings, wanted: Sequence[str] | None) -> tuple[list[str], dict[str, str]]:
    """The apps a worker takes: those asked for, else every app this machine can run; and the apps left
    out, with why."""
    apps = {app.id: app for app in list_apps()}
    if wanted:
        unknown = sorted(set(wanted) - set(apps))
        if unknown:
            raise ValueError(f"unknown app(s) {', '.join(unknown)}; `kinema app list` shows them")
        return list(dict.fromkeys(wanted)), {}
    serve, skipped = [], {}
    for app_id, app in apps.items():
        availability = app.availability(settings)
        if availability.available:
            serve.append(app_id)
        else:
            skipped[app_id] = availability.reason or "unavailable"
    return serve, skipped


def visible_gpus() -> int:
    """How many CUDA GPUs this process can see (0 without CUDA or without torch)."""
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def device_label(settings: Settings) -> str:
    """The device this process's local worker owns, as far as settings say without importing torch."""
    if settings.gpus:
        return f"cuda:{settings.gpus[0]}"
    return {"auto": "the GPU 0 if CUDA is present, else the CPU"}.get(settings.device, settings.device)


class Stopper:
    """SIGTERM/SIGINT: the first asks for a graceful stop, the second for an immediate one."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.hurry = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop.is_set():
            self.hurry.set()
        self.stop.set()


def run_worker(settings: Settings, apps: Sequence[str]) -> int:
    """One worker process: claim and run tasks of these apps until stopped, then drain."""
    from kinema.engines.cache import WARM_MODELS
    from kinema.storage import open_storage
    from kinema.store import Store
    from kinema.store.db import migrate, open_engine
    from kinema.tasks.queue import open_queue
    from kinema.tasks.runner import Runner, settle_heap

    stopper = Stopper()
    stopper.install()
    logging.getLogger("alembic").setLevel(logging.WARNING)
    engine = open_engine(settings.database)
    migrate(engine)
    store = Store(engine)
    queue = open_queue(store, settings)
    WARM_MODELS.capacity = settings.warm_models
    runner = Runner(
        store,
        queue,
        settings,
        open_storage(settings),
        WARM_MODELS,
        workers=1,
        remote_workers=settings.remote_workers,
        apps=apps,
    )
    runner.start()
    settle_heap()
    log.info(
        "worker %s (%s queue, device %s) serves %s",
        runner.id,
        "procrastinate" if settings.uses_procrastinate else "task-table",
        device_label(settings),
        ", ".join(runner.apps) or "no apps",
    )
    try:
        stopper.stop.wait()
        log.info("worker %s stopping: finishing its task (up to %.0f s)", runner.id, settings.worker_grace_s)
        runner.drain(settings.worker_grace_s, interrupt=stopper.hurry)
    finally:
        queue.close()
        engine.dispose()
    log.info("worker %s stopped", runner.id)
    return 0


@dataclass
class Child:
    """One supervised worker process."""

    name: str
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None


def child_command(args: Sequence[str]) -> list[str]:
    """How to start this program again with other arguments (the console script, or the module)."""
    script = Path(sys.argv[0])
    entry = [str(script)] if script.is_file() and script.name != "__main__.py" else ["-m", "kinema.cli.main"]
    return [sys.executable, *entry, *args]


def child_envs(
    settings: Settings, processes: int, apps: Sequence[str] | None
) -> list[tuple[str, dict[str, str]]]:
    """Each child's name and environment: its own GPU (or none), provider threads in the first only."""
    base = dict(os.environ)
    base["KINEMA_DATA_DIR"] = str(settings.data_dir.resolve())
    if apps:
        base["KINEMA_WORKER_APPS"] = ",".join(apps)
    children = []
    slots = [str(gpu) for gpu in settings.gpus] if settings.gpus else [""] * processes
    for index, gpu in enumerate(slots):
        env = dict(base)
        if gpu:
            env["KINEMA_GPUS"] = gpu
        else:
            env.pop("KINEMA_GPUS", None)
        if index > 0:
            env["KINEMA_REMOTE_WORKERS"] = "0"  # provider apps only wait: one process's threads suffice
        children.append((f"gpu {gpu}" if gpu else f"process {index}", env))
    return children


def supervise(children: list[Child], args: Sequence[str], grace_s: float) -> int:
    """Run the children until SIGTERM/SIGINT, restarting any that dies; then stop them all."""
    stopper = Stopper()
    stopper.install()
    command = child_command(args)

    def launch(child: Child) -> None:
        child.process = subprocess.Popen(command, env=child.env)
        child.started, child.restart_at = time.monotonic(), None
        log.info("worker %s started (pid %d)", child.name, child.process.pid)

    for child in children:
        launch(child)
    while not stopper.stop.wait(0.5):
        now = time.monotonic()
        for child in children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    launch(child)
                continue
            code = child.process.poll() if child.process is not None else None
            if code is None:
                continue
            child.failures = 1 if now - child.started >= STEADY_S else child.failures + 1
            wait = RESTART_BACKOFF_S[min(child.failures, len(RESTART_BACKOFF_S)) - 1]
            log.warning("worker %s exited with %s; restarting in %.0f s", child.name, code, wait)
            child.restart_at = now + wait
    for child in children:
        if child.process is not None and child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s + STOP_EXTRA_S
    for child in children:
        if child.process is None:
            continue
        while child.process.poll() is None and time.monotonic() < deadline:
            if stopper.hurry.wait(0.2):  # a second signal: pass it on, so children hand their tasks back
                stopper.hurry.clear()
                for other in children:
                    if other.process is not None and other.process.poll() is None:
                        other.process.send_signal(signal.SIGTERM)
        if child.process.poll() is None:
            log.warning("worker %s did not stop; killing it", child.name)
            child.process.kill()
            child.process.wait()
    log.info("all workers stopped")
    return 0


def start_workers(settings: Settings, *, processes: int, apps: Sequence[str] | None, log_level: str) -> int:
    """`kinema worker`: one process (one GPU or the CPU), or a parent supervising one child per GPU."""
    serve, skipped = served_apps(settings, apps)
    for app_id, reason in skipped.items():
        log.info("not serving %s: %s", app_id, reason)
    count = len(settings.gpus) if settings.gpus else processes
    if count <= 1:
        return run_worker(settings, serve)
    children = [Child(name, env) for name, env in child_envs(settings, count, apps)]
    return supervise(children, ["worker", "--log-level", log_level], settings.worker_grace_s)

"""Staging files a crash left behind are removed when the server or a runner starts; live ones are kept."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from kinema.engines.cache import WarmModels
from kinema.settings import Settings
from kinema.storage import open_storage
from kinema.storage.local import LocalStorage
from kinema.store import Store
from kinema.store.db import migrate, open_engine
from kinema.tasks.queue import StoreQueue
from kinema.tasks.runner import Runner
from tests.reliability.servers import running_server


def dead_pid() -> int:
    """A process id that is not running on this host."""
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except OSError:
            pass
        pid += 1


def host_tag() -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in socket.gethostname())[:64]


def test_server_start_removes_orphans_and_keeps_live_files(
    tmp_path: Path, tiny_model_dir: Path, warm: WarmModels
) -> None:
    staging = tmp_path / "data" / "outputs" / ".staging"
    staging.mkdir(parents=True)
    old = time.time() - 2 * 3600
    files = {
        "old_anonymous": staging / "tmpabc.mp4",  # no owner in the name: only its age counts
        "old_other_host": staging / "elsewhere~123~x.mp4",
        "fresh_dead_pid": staging / f"{host_tag()}~{dead_pid()}~y.upload",
        "fresh_live_pid": staging / f"{host_tag()}~{os.getpid()}~z.mp4",
        "fresh_other_host": staging / "elsewhere~123~w.mp4",
    }
    files["old_anonymous"].write_bytes(b"\0" * 10_000_000)
    for name in ("old_other_host", "fresh_dead_pid", "fresh_live_pid", "fresh_other_host"):
        files[name].write_bytes(b"")
    for name in ("old_anonymous", "old_other_host"):
        os.utime(files[name], (old, old))
    with running_server(tmp_path, tiny_model_dir, warm, workers=0, remote_workers=0):
        left = sorted(p.name for p in staging.iterdir())
    assert left == sorted([files["fresh_live_pid"].name, files["fresh_other_host"].name])


def test_sweep_keeps_everything_younger_than_the_grace_from_other_hosts(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    mine = storage.staging_file(".mp4")
    assert mine.name.startswith(f"{host_tag()}~{os.getpid()}~")
    other = storage.staging_dir / "elsewhere~1~a.mp4"
    other.write_bytes(b"x")
    assert storage.sweep_staging(3600) == 0  # another host's pid 1 may be alive there: only age counts
    old = time.time() - 7200
    os.utime(other, (old, old))
    assert storage.sweep_staging(3600) == 1
    assert mine.exists() and not other.exists()
    assert LocalStorage(tmp_path / "never-used").sweep_staging(0) == 0


def test_runner_start_removes_orphans_and_keeps_live_files(tmp_path: Path, warm: WarmModels) -> None:
    """A runner sweeps on its own too: a `kinema worker` process has no server to do it."""
    settings = Settings(data_dir=tmp_path / "data", device="cpu", _env_file=None)  # type: ignore[call-arg]
    settings.data_dir.mkdir(parents=True)
    engine = open_engine(settings.database)
    migrate(engine)
    storage = open_storage(settings)
    live = storage.staging_file(".mp4")
    orphan = live.with_name(f"{host_tag()}~{dead_pid()}~y.mp4")
    orphan.write_bytes(b"partial")
    store = Store(engine)
    runner = Runner(store, StoreQueue(store.tasks), settings, storage, warm, workers=0, remote_workers=0)
    runner.start()
    try:
        assert sorted(p.name for p in live.parent.iterdir()) == [live.name]
    finally:
        runner.stop()
        engine.dispose()

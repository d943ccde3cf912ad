"""Processes of a kinema cluster on this machine, for the cluster tests and the scale bench: API servers and
`kinema worker` processes started through tests/kinema_test_apps.py (so they know test/instant), one
PostgreSQL database, one shared data directory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import kinema

LAUNCHER = Path(__file__).resolve().parents[1] / "kinema_test_apps.py"
SRC = Path(kinema.__file__).resolve().parents[1]
ADMIN_KEY = "kin_test_admin_key"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """check()'s first truthy value, polled until timeout; AssertionError naming what otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


@dataclass
class Proc:
    """One kinema process with its log file."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        handle = open(self.log, "ab")  # noqa: SIM115 - the process owns it until it exits
        self.process = subprocess.Popen(
            [sys.executable, str(LAUNCHER), *self.args], env=self.env, stdout=handle, stderr=handle
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown code runs."""
        if self.alive():
            self.signal(signal.SIGKILL)
            assert self.process is not None
            self.process.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in time. The exit status."""
        if self.process is None:
            return None
        if self.alive():
            self.signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


@dataclass
class Cluster:
    """API servers and workers over one PostgreSQL database and one data directory."""

    database_url: str
    data_dir: Path
    logs: Path
    base_env: dict[str, str]
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in self.base_env.items() if not k.startswith("KINEMA_")}
        env.update(
            {
                "PYTHONPATH": str(SRC),
                "KINEMA_DATA_DIR": str(self.data_dir),
                "KINEMA_DATABASE_URL": self.database_url,
                "KINEMA_ADMIN_KEY": ADMIN_KEY,
                "KINEMA_SECRET_KEY": "test-secret",
                "KINEMA_DEVICE": "cpu",
                "HF_HUB_OFFLINE": "1",
                "OMP_NUM_THREADS": "1",  # several processes share this machine's cores
            }
        )
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def api(
        self, port: int | None = None, name: str = "api", wait: bool = True, **env: str
    ) -> tuple[Proc, str]:
        """A started `kinema serve` (API only unless env says otherwise) and its URL (with wait: ready)."""
        port = port or free_port()
        settings = {"KINEMA_WORKERS": "0", "KINEMA_REMOTE_WORKERS": "0", **env}
        proc = Proc(
            name,
            ["serve", "--port", str(port), "--log-level", "warning"],
            self.env(**settings),
            self.logs / f"{name}.log",
        ).start()
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        if wait:
            self.wait_ready(proc, url)
        return proc, url

    @staticmethod
    def wait_ready(proc: Proc, url: str) -> None:
        name = proc.name

        def ready() -> bool:
            if not proc.alive():
                raise AssertionError(f"{name} exited: {proc.text()[-3000:]}")
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 90, f"{name} to be ready", every=0.1)

    def worker(self, name: str, *args: str, wait: bool = True, **env: str) -> Proc:
        """A started `kinema worker` process; with wait, once it says which apps it serves."""
        settings = {"KINEMA_REMOTE_WORKERS": "0", **env}
        proc = Proc(name, ["worker", *args], self.env(**settings), self.logs / f"{name}.log").start()
        self.procs.append(proc)
        if wait:
            self.wait_serving(proc)
        return proc

    @staticmethod
    def wait_serving(proc: Proc, count: int = 1) -> None:
        def serving() -> bool:
            if not proc.alive():
                raise AssertionError(f"{proc.name} exited: {proc.text()[-3000:]}")
            return proc.text().count(" serves ") >= count

        wait_until(serving, 90, f"{proc.name} to serve", every=0.1)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(20)
        self.procs.clear()


def worker_pid(worker_id: str | None) -> int | None:
    """The process id in a worker id (host:pid:...)."""
    if not worker_id:
        return None
    return int(worker_id.split(":")[1])


def client(url: str, key: str = ADMIN_KEY, timeout: float = 60) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout)


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True

"""The HTTP API's cost over the in-process path, and how fast it accepts work, measured in one run.

(a) latency: the same tiny job, submitted through the API (POST .../run, waiting for the result) and run
    in-process the way `kinema app run` does (run_task on a warm model), alternated for --rounds rounds;
    prints the medians and the ratio API / in-process. Both share one warm model.
(b) throughput: submissions per second a server with no workers accepts with ?wait=false, from
    --clients concurrent clients (validation, auth, the store insert and the 202).

    .venv/bin/python bench/api.py [--rounds 5] [--submissions 300] [--clients 8] [--database-url URL]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from pydantic import SecretStr

from kinema.api.app import create_app
from kinema.apps.registry import TINY
from kinema.domain.tasks import TaskStatus
from kinema.engines.cache import WarmModels
from kinema.engines.tiny import save_tiny_model
from kinema.settings import Settings
from kinema.storage.local import LocalStorage
from kinema.tasks.worker import RunContext, run_task

KEY = "kin_bench"
JOB = {"prompt": "a benchmark clip", "aspect_ratio": "1:1", "duration": 0.5, "seed": 7}


class Server:
    """kinema's ASGI app under uvicorn on a free loopback port, in a thread."""

    def __init__(self, settings: Settings, warm: WarmModels) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        app = create_app(settings, warm=warm, announce_key=lambda key: None)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def settings_for(data_dir: Path, workers: int, database_url: str | None) -> Settings:
    return Settings(
        data_dir=data_dir,
        device="cpu",
        admin_key=SecretStr(KEY),
        secret_key=SecretStr("bench"),
        workers=workers,
        database_url=database_url,
        _env_file=None,  # type: ignore[call-arg]
    )


def latency(rounds: int, root: Path, warm: WarmModels, database_url: str | None) -> tuple[float, float]:
    settings = settings_for(root / "latency", 1, database_url)
    save_tiny_model(settings.models_dir / "kinema-tiny")
    ctx = RunContext(settings=settings, storage=LocalStorage(settings.outputs_dir), warm=warm)
    api_times, local_times = [], []
    with (
        Server(settings, warm) as server,
        httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300) as client,
    ):
        client.post("/v1/apps/kinema/tiny/run", json=JOB).raise_for_status()  # warm-up: loads the model
        for _ in range(rounds):
            started = time.perf_counter()
            task = run_task(TINY, JOB, ctx)
            local_times.append(time.perf_counter() - started)
            assert task.status is TaskStatus.completed
            started = time.perf_counter()
            response = client.post("/v1/apps/kinema/tiny/run", json=JOB)
            api_times.append(time.perf_counter() - started)
            assert response.status_code == 200 and response.json()["status"] == "completed", response.text
    return statistics.median(api_times), statistics.median(local_times)


def throughput(
    submissions: int, clients: int, root: Path, warm: WarmModels, database_url: str | None
) -> float:
    settings = settings_for(root / "throughput", 0, database_url)
    with Server(settings, warm) as server:
        local = threading.local()

        def submit(_: int) -> None:
            if not hasattr(local, "client"):
                local.client = httpx.Client(
                    base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
                )
            response = local.client.post("/v1/apps/kinema/tiny/run", params={"wait": "false"}, json=JOB)
            assert response.status_code == 202, response.text

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(submit, range(clients)))  # connect every client first
            started = time.perf_counter()
            list(pool.map(submit, range(submissions)))
            elapsed = time.perf_counter() - started
    return submissions / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--submissions", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    args = parser.parse_args()
    warm = WarmModels(capacity=1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        api_s, local_s = latency(args.rounds, root, warm, args.database_url)
        rate = throughput(args.submissions, args.clients, root, warm, args.database_url)
    job: Any = ", ".join(f"{k}={v}" for k, v in JOB.items() if k != "prompt")
    print(f"job: kinema/tiny {job} (720x720, 12 frames), {args.rounds} alternating rounds")
    print(f"in-process (CLI path) median: {local_s:.3f} s")
    print(f"through the API (POST run, wait) median: {api_s:.3f} s")
    print(f"ratio API / in-process: {api_s / local_s:.3f}  (overhead {1000 * (api_s - local_s):+.0f} ms)")
    print(
        f"submissions accepted with wait=false: {rate:.0f}/s "
        f"({args.clients} clients, {args.submissions} tasks)"
    )


if __name__ == "__main__":
    main()

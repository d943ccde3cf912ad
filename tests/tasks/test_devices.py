"""Workers own their device: each local worker gets its own device index and its own warm models."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from kinema.engines.cache import WarmModels
from kinema.engines.device import worker_device
from kinema.errors import InsufficientResources
from kinema.settings import Settings
from tests.conftest import LiveServer, server_settings


def _settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_gpus_setting_takes_a_comma_list_and_sets_the_local_worker_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KINEMA_GPUS", "1, 3")
    settings = _settings(workers=1)
    assert settings.gpus == [1, 3] and settings.local_workers == 2
    monkeypatch.delenv("KINEMA_GPUS")
    assert _settings(workers=3).local_workers == 3
    with pytest.raises(ValidationError, match="listed once"):
        _settings(gpus="0,0")


def test_each_worker_gets_its_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [worker_device(i, _settings(gpus="2,5")) for i in (0, 1)] == ["cuda:2", "cuda:5"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [worker_device(i, _settings(workers=2)) for i in (0, 1)] == ["cuda:0", "cuda:1"]
    with pytest.raises(InsufficientResources, match="worker 2 has no GPU of its own: 2 visible"):
        worker_device(2, _settings(workers=3))
    assert worker_device(1, _settings(device="cpu")) == "cpu"


def test_without_cuda_workers_run_on_the_cpu_and_cuda_asked_for_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert worker_device(1, _settings()) == "cpu"
    with pytest.raises(InsufficientResources, match="no CUDA device"):
        worker_device(0, _settings(device="cuda"))


def test_two_workers_each_load_their_own_engine_and_run_tasks_side_by_side(settings: Settings) -> None:
    server = LiveServer(
        server_settings(settings, workers=2, remote_workers=0), WarmModels(capacity=1)
    ).start()
    try:
        runner = server.state.runner
        with server.client() as http:
            ids = [
                http.post(
                    "/v1/apps/kinema/tiny/run",
                    params={"wait": "false"},
                    json={"prompt": f"worker {n}", "duration": 0.3, "resolution": "720p"},
                ).json()["id"]
                for n in range(2)
            ]
            deadline = time.monotonic() + 240
            tasks: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                tasks = [http.get(f"/v1/tasks/{task_id}").json() for task_id in ids]
                if all(t["status"] in ("completed", "failed") for t in tasks):
                    break
                time.sleep(0.2)
            assert [t["status"] for t in tasks] == ["completed", "completed"], tasks
            logs = [
                line for task_id in ids for line in _log_lines(http, task_id) if "started on worker" in line
            ]
    finally:
        server.stop()
    # Each worker thread took one task, loaded the model into its own warm cache, on its own device.
    assert {line.rsplit("(", 1)[1].rstrip(")") for line in logs} == {"kinema-worker-0", "kinema-worker-1"}
    assert [warm.loads for warm in runner.warms] == [1, 1]
    engines = [next(iter(warm._items.values())) for warm in runner.warms]
    assert engines[0] is not engines[1] and [e.device for e in engines] == ["cpu", "cpu"]


def _log_lines(http: Any, task_id: str) -> list[str]:
    """The task's log lines, read from its SSE stream (which ends with the final task event)."""
    lines: list[str] = []
    with http.stream("GET", f"/v1/tasks/{task_id}/events") as response:
        kind = ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind == "log":
                lines.append(json.loads(line.split(":", 1)[1])["message"])
            elif line.startswith("data:") and kind == "task":
                break
    return lines

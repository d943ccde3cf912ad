"""`kinema serve` as users run it: a real process killed mid-task and restarted; the server on PostgreSQL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from kinema.engines.cache import WarmModels
from kinema.settings import Settings
from tests.conftest import ADMIN_KEY, LiveServer, server_settings

KINEMA = str(Path(sys.executable).parent / "kinema")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    handle = open(log, "ab")  # noqa: SIM115 - the process owns it until it exits
    process = subprocess.Popen(
        [KINEMA, "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=handle,
        stderr=handle,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise AssertionError(f"kinema serve exited: {log.read_text()}")
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"kinema serve did not become ready: {log.read_text()}")


def test_killed_server_requeues_its_running_task_on_restart(
    kinema_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**kinema_env, "KINEMA_ADMIN_KEY": ADMIN_KEY}
    port = free_port()
    log = tmp_path / "serve.log"
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    url = f"http://127.0.0.1:{port}"
    process = start_serve(env, port, log)
    try:
        body = {"prompt": "crash", "aspect_ratio": "1:1", "duration": 1}
        task: dict[str, Any] = httpx.post(
            f"{url}/v1/apps/kinema/tiny/run", params={"wait": "false"}, json=body, headers=headers
        ).json()
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/v1/tasks/{task['id']}", headers=headers).json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)  # a crash: no shutdown code runs
        process.wait(10)
        process = start_serve(env, port, log)
        deadline = time.monotonic() + 120
        while (task := httpx.get(f"{url}/v1/tasks/{task['id']}", headers=headers).json())[
            "status"
        ] != "completed":
            assert task["status"] in ("queued", "running"), task
            assert time.monotonic() < deadline
            time.sleep(0.1)
        logs = [e["message"] for e in events(url, task["id"], headers) if "message" in e]
        assert "the server restarted mid-task; task requeued" in logs
        assert task["output_meta"]["frames"] == 24
        outputs = Path(env["KINEMA_DATA_DIR"]) / "outputs" / task["id"]
        assert [p.name for p in outputs.iterdir()] == ["attempt-2.mp4"]  # the second start's own key
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert process.returncode == 0 or process.returncode == -signal.SIGTERM


def events(url: str, task_id: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    import json

    found = []
    with httpx.stream("GET", f"{url}/v1/tasks/{task_id}/events", headers=headers, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                found.append(json.loads(line[5:]))
    return found


def test_serve_generates_an_admin_key_and_documents_its_settings(
    kinema_env: dict[str, str], tmp_path: Path
) -> None:
    help_text = subprocess.run([KINEMA, "serve", "--help"], env=kinema_env, capture_output=True, text=True)
    for name in ("KINEMA_DATA_DIR", "KINEMA_DATABASE_URL", "KINEMA_ADMIN_KEY", "--host", "--port"):
        assert name in help_text.stdout
    port = free_port()
    log = tmp_path / "serve.log"
    process = start_serve(kinema_env, port, log)
    try:
        printed = log.read_text()
        key = next(word for word in printed.split() if word.startswith("kin_"))
        headers = {"Authorization": f"Bearer {key}"}
        assert httpx.get(f"http://127.0.0.1:{port}/v1/apps", headers=headers).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert Path(kinema_env["KINEMA_DATA_DIR"], "kinema.db").exists()


def test_server_on_postgresql_runs_and_cancels_tasks(
    settings: Settings, warm: WarmModels, postgres_url: str
) -> None:
    server = LiveServer(server_settings(settings, database_url=postgres_url), warm).start()
    try:
        with server.client() as api:
            slow = api.post(
                "/v1/apps/kinema/tiny/run",
                params={"wait": "false"},
                json={"prompt": "pg", "aspect_ratio": "1:1", "duration": 1},
            ).json()
            queued = api.post(
                "/v1/apps/kinema/tiny/run",
                params={"wait": "false"},
                json={"prompt": "never", "aspect_ratio": "1:1", "duration": 0.1},
            ).json()
            assert api.post(f"/v1/tasks/{queued['id']}/cancel").json()["status"] == "cancelled"
            done = api.post(
                "/v1/apps/kinema/tiny/run", json={"prompt": "pg", "aspect_ratio": "1:1", "duration": 0.5}
            ).json()
            assert done["status"] == "completed" and done["output_meta"]["frames"] == 12
            assert api.get(f"/v1/tasks/{slow['id']}").json()["status"] == "completed"
            assert api.get(f"/v1/tasks/{queued['id']}").json()["started_at"] is None
            ready = api.get("/readyz").json()
            assert ready["checks"]["database"] == "ok"
    finally:
        server.stop()
    assert os.path.exists(settings.outputs_dir / done["id"] / "attempt-1.mp4")

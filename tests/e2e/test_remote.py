"""The `kinema` command against a live server (`app run --remote`, `kinema task ...`) as a user runs it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kinema.client import Client, Task
from kinema.domain.tasks import TaskStatus
from tests.conftest import ADMIN_KEY, LiveServer, assert_mp4

KINEMA = str(Path(sys.executable).parent / "kinema")
SMALL = {"prompt": "A lighthouse at dusk", "aspect_ratio": "1:1", "duration": 0.5}
# Long enough on two CPU cores to still be running when the test interrupts it.
LONG = {"prompt": "A long slow pan", "duration": 2, "resolution": "1080p"}


def kinema(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KINEMA, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def wait_until(condition: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll condition until it returns something truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"condition not met in {timeout} s")


@pytest.fixture
def remote_env(kinema_env: dict[str, str], shared_server: LiveServer) -> dict[str, str]:
    """The CLI's environment pointed at the shared server."""
    return {**kinema_env, "KINEMA_API_URL": shared_server.url, "KINEMA_API_KEY": ADMIN_KEY}


@dataclass(frozen=True)
class RemoteRun:
    result: subprocess.CompletedProcess[str]
    output: Path


@pytest.fixture(scope="module")
def remote_run(shared_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> RemoteRun:
    """`kinema app run --remote ... -o out.mp4 --json` once, on the shared server."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("KINEMA_")}
    env.update({"KINEMA_API_KEY": ADMIN_KEY, "COLUMNS": "200"})
    target = tmp_path_factory.mktemp("remote") / "clips" / "out.mp4"
    args = ("app", "run", "kinema/tiny", "--input", json.dumps(SMALL), "-o", str(target), "--json")
    return RemoteRun(kinema(env, *args, "--remote", shared_server.url), target)


@pytest.fixture
def finished(remote_run: RemoteRun) -> Task:
    assert remote_run.result.returncode == 0, remote_run.result.stderr
    return Task.model_validate_json(remote_run.result.stdout)


# app run --remote --------------------------------------------------------------------------------


def test_app_run_remote_writes_the_mp4_and_prints_the_task_json(remote_run: RemoteRun) -> None:
    assert remote_run.result.returncode == 0, remote_run.result.stderr
    task = json.loads(remote_run.result.stdout)
    assert (task["status"], task["app"], task["error"]) == ("completed", "kinema/tiny", None)
    assert task["output"]["video"].startswith("http://127.0.0.1:")
    meta = task["output_meta"]
    assert (meta["width"], meta["height"], meta["frames"], meta["has_audio"]) == (720, 720, 12, False)
    assert meta["billing"]["currency"] == "USD"
    assert_mp4(remote_run.output, width=720, height=720, duration=0.5, fps=24, audio=False)
    assert [p.name for p in remote_run.output.parent.iterdir()] == ["out.mp4"]


@pytest.mark.parametrize(
    ("input_json", "message"),
    [
        ('{"prompt": "x", "colour": "red"}', "colour: unknown field"),
        ('{"prompt": "x", "duration": 99}', "duration"),
        ('["not", "an", "object"]', "expected a JSON object"),
        ('{"prompt": ', "not valid JSON"),
    ],
)
def test_app_run_remote_with_bad_input_exits_2_with_one_line_and_writes_nothing(
    remote_env: dict[str, str], tmp_path: Path, input_json: str, message: str
) -> None:
    target = tmp_path / "clips" / "never.mp4"
    result = kinema(remote_env, "app", "run", "kinema/tiny", "--input", input_json, "-o", str(target))
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert not target.parent.exists()


def test_app_run_remote_with_an_unknown_app_exits_2(remote_env: dict[str, str]) -> None:
    result = kinema(remote_env, "app", "run", "nobody/nothing", "--input", '{"prompt": "x"}')
    assert result.returncode == 2
    assert "no app named 'nobody/nothing'" in result.stderr


def test_a_wrong_key_is_refused_with_2_and_an_unreachable_server_exits_1_with_a_clear_message(
    remote_env: dict[str, str],
) -> None:
    wrong_key = kinema({**remote_env, "KINEMA_API_KEY": "kin_wrong"}, "task", "list")
    assert wrong_key.returncode == 2
    assert wrong_key.stderr.strip() == "error: invalid API key"
    gone = kinema(
        remote_env,
        "app",
        "run",
        "kinema/tiny",
        "--input",
        '{"prompt": "x"}',
        "--remote",
        "http://127.0.0.1:9",
    )
    assert gone.returncode == 1
    assert "cannot reach the kinema server at http://127.0.0.1:9" in gone.stderr
    assert "Traceback" not in gone.stderr


def test_missing_server_url_or_key_exits_2(kinema_env: dict[str, str]) -> None:
    no_url = kinema(kinema_env, "task", "list")
    assert no_url.returncode == 2
    assert "KINEMA_API_URL" in no_url.stderr
    no_key = kinema(kinema_env, "task", "list", "--remote", "http://127.0.0.1:9")
    assert no_key.returncode == 2
    assert "KINEMA_API_KEY" in no_key.stderr


def test_ctrl_c_cancels_the_remote_task_and_exits_130(
    live_server: LiveServer, kinema_env: dict[str, str], tmp_path: Path
) -> None:
    target = tmp_path / "never.mp4"
    env = {**kinema_env, "KINEMA_API_URL": live_server.url, "KINEMA_API_KEY": ADMIN_KEY}
    args = ["app", "run", "kinema/tiny", "--input", json.dumps(LONG), "-o", str(target)]
    process = subprocess.Popen(
        [KINEMA, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with Client(live_server.url, ADMIN_KEY) as client:
            running = wait_until(lambda: client.list(status="running").data)
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=30)
            assert process.returncode == 130, stderr
            assert f"task {running[0].id}" in stderr
            assert client.wait(running[0].id, timeout=60).status is TaskStatus.cancelled
    finally:
        process.kill()
        process.wait()
    assert not target.exists()


# kinema task ... ---------------------------------------------------------------------------------


def test_task_get_shows_the_task_as_a_table_and_as_json(remote_env: dict[str, str], finished: Task) -> None:
    table = kinema(remote_env, "task", "get", finished.id)
    assert table.returncode == 0, table.stderr
    assert "completed" in table.stdout and "720x720 (720p, 1:1)" in table.stdout
    assert "/files/" in table.stdout
    as_json = json.loads(kinema(remote_env, "task", "get", finished.id, "--json").stdout)
    assert (as_json["id"], as_json["status"]) == (finished.id, "completed")
    missing = kinema(remote_env, "task", "get", "tsk_missing")
    assert missing.returncode == 2
    assert "no task 'tsk_missing'" in missing.stderr


def test_task_list_filters_by_status_and_app(remote_env: dict[str, str], finished: Task) -> None:
    listed = kinema(
        remote_env, "task", "list", "--status", "completed", "--app", "kinema/tiny", "--limit", "5"
    )
    assert listed.returncode == 0, listed.stderr
    assert finished.id in listed.stdout and "0.5 s" in listed.stdout
    none = kinema(remote_env, "task", "list", "--status", "failed")
    assert none.returncode == 0
    assert finished.id not in none.stdout


def test_task_wait_downloads_the_mp4_and_prints_the_result(
    remote_env: dict[str, str], finished: Task, tmp_path: Path
) -> None:
    result = kinema(remote_env, "task", "wait", finished.id, "-o", "again.mp4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "done again.mp4" in result.stdout
    assert "720x720 (720p, 1:1)" in result.stdout and "cost" in result.stdout
    assert_mp4(tmp_path / "again.mp4", width=720, height=720, duration=0.5, fps=24, audio=False)


def test_task_logs_prints_the_log_lines(remote_env: dict[str, str], finished: Task) -> None:
    for extra in ((), ("--follow",)):
        result = kinema(remote_env, "task", "logs", finished.id, *extra)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith("started on worker")
        assert "Denoising" in lines
        assert lines[-1].startswith("completed in")


def test_task_logs_json_prints_every_event_as_a_json_line(remote_env: dict[str, str], finished: Task) -> None:
    result = kinema(remote_env, "task", "logs", finished.id, "--json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[0] == {"id": events[0]["id"], "event": "status", "data": {"status": "queued"}}
    assert "progress" in {e["event"] for e in events}
    assert events[-1]["event"] == "task" and events[-1]["data"]["id"] == finished.id


def test_task_cancel_of_a_finished_task_is_refused_with_2(remote_env: dict[str, str], finished: Task) -> None:
    result = kinema(remote_env, "task", "cancel", finished.id)
    assert result.returncode == 2
    assert f"task {finished.id} is already completed" in result.stderr


def test_task_cancel_of_a_queued_task_cancels_it_and_logs_say_so(
    live_server: LiveServer, kinema_env: dict[str, str]
) -> None:
    env = {**kinema_env, "KINEMA_API_URL": live_server.url, "KINEMA_API_KEY": ADMIN_KEY}
    with Client(live_server.url, ADMIN_KEY) as client:
        running = client.submit("kinema/tiny", LONG)
        queued = client.submit("kinema/tiny", SMALL)
        try:
            result = kinema(env, "task", "cancel", queued.id)
        finally:
            client.cancel(running.id)  # stop it within a denoising step; the VAE decode cannot be cut short
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"task {queued.id} cancelled"
        logs = kinema(env, "task", "logs", queued.id)
        assert logs.stdout.strip() == "cancelled: the task was cancelled before it started"
        assert client.wait(running.id, timeout=60).status is TaskStatus.cancelled

"""The Veo apps through the real HTTP server and the CLI, with Google replaced by a loopback fake."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from kinema.engines.cache import WarmModels
from kinema.settings import Settings
from tests.conftest import LiveServer, assert_mp4, server_settings
from tests.e2e.test_api import download, finished, wait_until
from tests.e2e.test_serve import events, free_port, start_serve
from tests.engines.fake_google import API_KEY, FakeGoogle

RUN = "/v1/apps/google/veo-3-1-fast/run"
CLIP = {"prompt": "A timelapse of clouds rolling over mountain peaks", "duration": 4, "generate_audio": True}


def veo_settings(data_dir: Path, fake: FakeGoogle, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "google_api_key": SecretStr(API_KEY),
        "google_vertexai": False,
        "google_base_url": fake.url,
        "google_poll_initial_s": 0.02,
        "google_poll_max_s": 0.05,
        "video_preset": "ultrafast",
    }
    values.update(overrides)
    return server_settings(Settings(_env_file=None, **values))  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def veo_server(google: FakeGoogle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server with a Google key for the fake; no local model is ever loaded."""
    server = LiveServer(veo_settings(tmp_path_factory.mktemp("veo") / "data", google), WarmModels()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def api(veo_server: LiveServer) -> Iterator[httpx.Client]:
    with veo_server.client() as client:
        yield client


def test_the_seed_call_to_veo_answers_a_finished_clip_on_the_contract(
    api: httpx.Client, veo_server: LiveServer, fake: FakeGoogle, tmp_path: Path
) -> None:
    response = api.post(RUN, json=CLIP)
    assert response.status_code == 200, response.text
    task = response.json()
    assert task["status"] == "completed" and task["app"] == "google/veo-3-1-fast"
    meta = task["output_meta"]
    assert (meta["width"], meta["height"], meta["duration"], meta["has_audio"]) == (1280, 720, 4.0, True)
    assert meta["billing"]["cost"] == "1.00" and meta["seed"] is None
    clip = download(task["output"]["video"], tmp_path / "veo.mp4")
    assert_mp4(clip, width=1280, height=720, duration=4.0, fps=24, audio=True)
    # The key is sent to Google only: not in the task, its events, or the database file.
    events = api.get(f"/v1/tasks/{task['id']}/events").text
    assert '"stage": "generate"' in events and '"stage": "download"' in events
    for text in (response.text, events, api.get(f"/v1/tasks/{task['id']}").text):
        assert API_KEY not in text
    database = veo_server.settings.data_dir / "kinema.db"
    assert API_KEY.encode() not in database.read_bytes()
    assert [r.headers.get("x-goog-api-key") for r in fake.submits()] == [API_KEY]


def test_the_catalogue_says_what_google_accepts(api: httpx.Client) -> None:
    apps = {a["id"]: a for a in api.get("/v1/apps").json()["data"]}
    assert apps["google/veo-3-1-fast"]["available"] and apps["google/veo-3-1"]["available"]
    detail = api.get("/v1/apps/google/veo-3-1-fast").json()
    props = detail["input_schema"]["properties"]
    common = {"prompt", "image", "resolution", "aspect_ratio", "generate_audio", "duration"}
    assert set(props) == common | {"negative_prompt", "seed"}
    assert props["duration"]["enum"] == [4, 6, 8] and props["duration"]["default"] == 8
    assert props["aspect_ratio"]["anyOf"][0]["enum"] == ["16:9", "9:16"]
    assert detail["engine"] == "remote" and detail["weights"] is None
    assert detail["provider"] == {"name": "google", "api": "gemini", "model": "veo-3.1-fast-generate-preview"}
    assert detail["pricing"]["per_second"]["720p/1080p video+audio"] == "0.25"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "square", "aspect_ratio": "1:1"}, "aspect_ratio"),
        ({"prompt": "short 1080p", "resolution": "1080p", "duration": 4}, "duration"),
        ({"prompt": "five seconds", "duration": 5}, "duration"),
        ({"prompt": "seeded", "seed": 7}, "seed"),
        ({"prompt": "extra", "fps": 30}, "fps"),
    ],
)
def test_what_google_cannot_do_is_a_422_before_any_call(
    api: httpx.Client, fake: FakeGoogle, body: dict[str, Any], field: str
) -> None:
    response = api.post(RUN, json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input" and field in error["message"]
    assert fake.requests == []


def test_several_veo_tasks_run_at_once_in_the_remote_pool(api: httpx.Client, fake: FakeGoogle) -> None:
    fake.behaviour.never_done = True
    ids = [api.post(RUN, json=CLIP, params={"wait": "false"}).json()["id"] for _ in range(4)]
    deadline = time.monotonic() + 20
    while len(fake.submits()) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(fake.submits()) == 4  # all four were at Google at the same time (none can finish yet)
    fake.behaviour.never_done = False
    for task_id in ids:
        task = wait_until(api, task_id, finished, timeout=60)
        assert task["status"] == "completed", task["error"]


def test_cancel_through_the_api_stops_polling_and_marks_the_task_cancelled(
    api: httpx.Client, fake: FakeGoogle
) -> None:
    fake.behaviour.never_done = True
    task_id = api.post(RUN, json=CLIP, params={"wait": "false"}).json()["id"]
    wait_until(api, task_id, lambda t: t["progress"] is not None and t["progress"]["stage"] == "generate")
    assert api.post(f"/v1/tasks/{task_id}/cancel").status_code == 200
    task = wait_until(api, task_id, finished, timeout=10)
    assert task["status"] == "cancelled" and task["output"] is None
    polls = len(fake.polls())
    time.sleep(0.3)
    assert len(fake.polls()) == polls


def test_a_provider_error_is_a_failed_task_with_its_code(api: httpx.Client, fake: FakeGoogle) -> None:
    fake.behaviour.submit_error = (429, "RESOURCE_EXHAUSTED", "Quota exceeded for this project.")
    task = api.post(RUN, json=CLIP).json()
    assert task["status"] == "failed"
    assert task["error"]["code"] == "provider_quota_exceeded" and "Quota exceeded" in task["error"]["message"]


def test_without_a_key_veo_is_listed_unavailable_and_running_it_is_a_503(
    google: FakeGoogle, tmp_path: Path
) -> None:
    google.reset()
    server = LiveServer(veo_settings(tmp_path / "data", google, google_api_key=None), WarmModels()).start()
    try:
        with server.client() as api:
            apps = {a["id"]: a for a in api.get("/v1/apps").json()["data"]}
            veo = apps["google/veo-3-1-fast"]
            assert veo["available"] is False and "KINEMA_GOOGLE_API_KEY" in veo["unavailable_reason"]
            assert apps["kinema/tiny"]["available"] is True
            detail = api.get("/v1/apps/google/veo-3-1").json()
            assert detail["available"] is False and detail["unavailable_reason"]
            response = api.post(RUN, json=CLIP)
            assert response.status_code == 503
            error = response.json()["error"]
            assert error["code"] == "app_unavailable" and "needs your Google API key" in error["message"]
            assert api.get("/v1/tasks").json()["data"] == []  # nothing was queued
    finally:
        server.stop()
    assert google.requests == []


CLI_WITHOUT_TORCH = """
import runpy, sys
sys.argv = ["kinema", *sys.argv[1:]]
try:
    runpy.run_module("kinema.cli.main", run_name="__main__")
    code = 0
except SystemExit as exc:
    code = exc.code or 0
import kinema.api.app  # the server's modules, which run the same task in `kinema serve`
heavy = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
print("heavy modules:", heavy, file=sys.stderr)
sys.exit(code)
"""


def test_the_cli_runs_veo_in_process_without_importing_torch(google: FakeGoogle, tmp_path: Path) -> None:
    google.reset()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KINEMA_", "GOOGLE_", "GEMINI_"))}
    env.update(
        {
            "KINEMA_DATA_DIR": str(tmp_path / "data"),
            "KINEMA_GOOGLE_API_KEY": API_KEY,
            "KINEMA_GOOGLE_BASE_URL": google.url,
            "KINEMA_GOOGLE_POLL_INITIAL_S": "0.02",
            "KINEMA_GOOGLE_POLL_MAX_S": "0.05",
            "COLUMNS": "200",
        }
    )
    target = tmp_path / "veo.mp4"
    clip = json.dumps({"prompt": "A drone shot rising over a foggy forest", "duration": 4})
    command = ["app", "run", "google/veo-3-1-fast", "--input", clip, "-o", str(target), "--json"]
    result = subprocess.run(
        [sys.executable, "-c", CLI_WITHOUT_TORCH, *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "heavy modules: []" in result.stderr
    task = json.loads(result.stdout)
    assert task["status"] == "completed" and task["output_meta"]["has_audio"] is False
    assert_mp4(target, width=1280, height=720, duration=4.0, fps=24, audio=False)
    assert API_KEY not in result.stdout + result.stderr


def test_a_veo_task_requeued_by_a_graceful_stop_resumes_its_operation_on_restart(
    google: FakeGoogle, tmp_path: Path
) -> None:
    google.reset()
    google.behaviour.never_done = True
    settings = veo_settings(tmp_path / "data", google)
    server = LiveServer(settings, WarmModels()).start()
    try:
        with server.client() as api:
            task_id = api.post(RUN, json=CLIP, params={"wait": "false"}).json()["id"]
            deadline = time.monotonic() + 20
            while not google.polls():
                assert time.monotonic() < deadline
                time.sleep(0.02)
    finally:
        server.stop()  # Ctrl-C / SIGTERM: running tasks go back to the queue
    assert server.state.store.tasks.get(task_id).status.value == "queued"
    google.behaviour.never_done = False
    server = LiveServer(settings, WarmModels()).start()
    try:
        with server.client() as api:
            task = wait_until(api, task_id, finished, timeout=30)
        assert task["status"] == "completed", task["error"]
        assert len(google.submits()) == 1
    finally:
        server.stop()


def test_a_veo_task_killed_after_its_submit_resumes_googles_operation_and_is_charged_once(
    google: FakeGoogle, tmp_path: Path
) -> None:
    google.reset()
    google.behaviour.never_done = True  # the first server must die while Google is still working
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KINEMA_", "GOOGLE_", "GEMINI_"))}
    env.update(
        {
            "KINEMA_DATA_DIR": str(tmp_path / "data"),
            "KINEMA_ADMIN_KEY": "kin_test_admin_key",
            "KINEMA_BILLING_ENABLED": "true",
            "KINEMA_WORKERS": "0",  # provider workers only: no local model, no torch
            "KINEMA_GOOGLE_API_KEY": API_KEY,
            "KINEMA_GOOGLE_BASE_URL": google.url,
            "KINEMA_GOOGLE_POLL_INITIAL_S": "0.05",
            "KINEMA_GOOGLE_POLL_MAX_S": "0.1",
            "KINEMA_VIDEO_PRESET": "ultrafast",
        }
    )
    port, log = free_port(), tmp_path / "serve.log"
    url, headers = f"http://127.0.0.1:{port}", {"Authorization": "Bearer kin_test_admin_key"}
    process = start_serve(env, port, log)
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as api:
            me = api.get("/v1/me").json()
            api.post(f"/v1/admin/users/{me['id']}/credit", json={"amount": "10.00"}).raise_for_status()
            task_id = api.post(RUN, json=CLIP, params={"wait": "false"}).json()["id"]
            # The engine keeps the operation before its first poll, so a poll means it is in the database.
            deadline = time.monotonic() + 30
            while not google.polls():
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)  # a crash: nothing of kinema runs
            process.wait(10)
            (submit,) = google.submits()
            (operation,) = google.operations
            restarted_at = len(google.requests)

            google.behaviour.never_done = False
            process = start_serve(env, port, log)
            task = wait_until(api, task_id, finished, timeout=60)
            assert task["status"] == "completed", task["error"]
            assert task["output_meta"]["billing"]["cost"] == "1.00"

            assert google.submits() == [submit]  # Google was asked for the video exactly once
            after = google.requests[restarted_at:]
            polls = [r for r in after if r.path == f"/v1beta/{operation}"]
            assert polls and all(r.method == "GET" for r in polls)
            assert all(
                r.path == f"/v1beta/{operation}" or ":download" in r.path or r.path.startswith("/storage/")
                for r in after
            )
            messages = [e["message"] for e in events(url, task_id, headers) if "message" in e]
            assert "the server restarted mid-task; task requeued" in messages
            assert "resuming the provider's work from an earlier attempt" in messages

            account = api.get("/v1/me").json()  # charged once, nothing left on hold
            assert account["usage"] == [
                {"app": "google/veo-3-1-fast", "day": account["usage"][0]["day"], "tasks": 1, "cost": "1.00"}
            ]
            assert (account["balance"], account["held"]) == ("9.00", "0.00")
            # The saved operation is internal: not in the task, its events or its listing.
            public = api.get(f"/v1/tasks/{task_id}").text + api.get("/v1/tasks").text
            public += api.get(f"/v1/tasks/{task_id}/events").text
            assert operation.rsplit("/", 1)[1] not in public and "provider_state" not in public
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)

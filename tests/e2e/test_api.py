"""Whole paths through a real server on a loopback port: submit, wait, stream, cancel, download, probe."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from kinema.domain.tasks import TaskStatus
from kinema.engines.cache import WarmModels
from kinema.settings import Settings
from tests.conftest import LiveServer, assert_mp4, server_settings

SMALL = {"prompt": "a small square clip", "aspect_ratio": "1:1", "duration": 0.5}
TINY_RUN = "/v1/apps/kinema/tiny/run"


def download(url: str, path: Path) -> Path:
    with httpx.stream("GET", url, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "video/mp4"
        path.write_bytes(response.read())
    return path


def wait_until(api: httpx.Client, task_id: str, done: Any, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task: dict[str, Any] = api.get(f"/v1/tasks/{task_id}").json()
        if done(task):
            return task
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not reach the expected state: {task}")


def finished(task: dict[str, Any]) -> bool:
    return TaskStatus(task["status"]).finished


def sse_events(
    api: httpx.Client, task_id: str, last_event_id: str | None = None
) -> list[tuple[str, str, Any]]:
    """The whole SSE stream as (id, event, data), parsed by hand to check the wire format itself."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[tuple[str, str, Any]] = []
    with api.stream("GET", f"/v1/tasks/{task_id}/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line == "":
                if "event" in fields:
                    events.append((fields["id"], fields["event"], json.loads(fields["data"])))
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.lstrip(" ")
    return events


@pytest.mark.slow
def test_seeds_curl_call_answers_with_a_finished_1080p_clip_with_audio(
    settings: Settings, warm: WarmModels, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # The seed's exact body, to the default app, here served by tiny weights at the real app's path.
    # Its 5 s of 1080p noise is x264's worst case, so encode fast; the server waits as long as it takes.
    served = server_settings(
        settings,
        model_paths={"lightricks/ltx-2-fast": str(tiny_model_dir)},
        video_preset="ultrafast",
        run_wait_s=600.0,
    )
    server = LiveServer(served, warm).start()
    try:
        body = {
            "prompt": "A timelapse of clouds rolling over mountain peaks",
            "resolution": "1080p",
            "generate_audio": True,
        }
        with server.client() as api:
            response = api.post("/v1/apps/lightricks/ltx-2-fast/run", json=body, timeout=600)
        assert response.status_code == 200, response.text
        task = response.json()
        assert response.headers["location"] == f"/v1/tasks/{task['id']}"
        assert task["status"] == "completed"
        meta = task["output_meta"]
        assert (meta["width"], meta["height"], meta["has_audio"]) == (1920, 1080, True)
        assert meta["billing"] == {
            "billable_seconds": "5",
            "rate_per_second": "0.25",
            "cost": "1.25",
            "currency": "USD",
        }
        path = download(task["output"]["video"], tmp_path / "clouds.mp4")
        assert_mp4(path, width=1920, height=1080, duration=5.0, fps=24, audio=True)
    finally:
        server.stop()


def test_async_submit_answers_202_then_the_task_completes(api: httpx.Client, tmp_path: Path) -> None:
    response = api.post(TINY_RUN, params={"wait": "false"}, json={**SMALL, "generate_audio": True})
    assert response.status_code == 202
    task = response.json()
    assert task["status"] in ("queued", "running")
    assert response.headers["location"] == f"/v1/tasks/{task['id']}"
    assert task["urls"]["get"].endswith(f"/v1/tasks/{task['id']}")
    done = wait_until(api, task["id"], finished)
    assert done["status"] == "completed", done
    path = download(done["output"]["video"], tmp_path / "out.mp4")
    assert_mp4(path, width=720, height=720, duration=0.5, fps=24, audio=True)


def test_prefer_respond_async_and_a_short_wait_answer_202(api: httpx.Client) -> None:
    response = api.post(TINY_RUN, headers={"Prefer": "respond-async"}, json=SMALL)
    assert response.status_code == 202
    response = api.post(TINY_RUN, headers={"Prefer": "wait=0"}, json=SMALL)
    assert response.status_code == 202
    for task_id in {response.json()["id"]}:
        wait_until(api, task_id, finished)


def test_sse_streams_progress_to_the_final_task_and_resumes(api: httpx.Client) -> None:
    task = api.post(TINY_RUN, params={"wait": "false"}, json=SMALL).json()
    events = sse_events(api, task["id"])
    kinds = [kind for _, kind, _ in events]
    assert kinds[0] == "status" and events[0][2] == {"status": "queued"}
    assert ("status", {"status": "running"}) in [(k, d) for _, k, d in events]
    steps = [d for _, k, d in events if k == "progress" and d["stage"] == "denoise"]
    assert [s["step"] for s in steps] == list(range(steps[0]["total"] + 1))
    assert any(k == "log" for k in kinds)
    assert kinds[-1] == "task" and events[-1][2]["status"] == "completed"
    assert events[-1][2]["output"]["video"].startswith("http://127.0.0.1")
    ids = [int(i) for i, _, _ in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    # Resume from the middle: only later events come, ending with the final task again.
    middle = events[len(events) // 2][0]
    resumed = sse_events(api, task["id"], last_event_id=middle)
    assert [e[0] for e in resumed[:-1]] == [e[0] for e in events if int(e[0]) > int(middle)][:-1]
    assert resumed[-1][1] == "task"
    # Resuming after the end still delivers the final task.
    after_end = sse_events(api, task["id"], last_event_id=events[-1][0])
    assert [kind for _, kind, _ in after_end] == ["task"]


def test_cancel_running_task_stops_it_and_stores_nothing(api: httpx.Client, live_server: LiveServer) -> None:
    body = {"prompt": "long", "resolution": "1080p", "duration": 3, "generate_audio": True}
    task = api.post(TINY_RUN, params={"wait": "false"}, json=body).json()
    wait_until(api, task["id"], lambda t: t["status"] == "running" and t["progress"] is not None)
    response = api.post(f"/v1/tasks/{task['id']}/cancel")
    assert response.status_code == 200
    ended = wait_until(api, task["id"], finished, timeout=30)
    assert ended["status"] == "cancelled"
    assert ended["error"]["code"] == "cancelled" and ended["output"] is None
    outputs = live_server.settings.outputs_dir
    assert not list(outputs.glob(f"{task['id']}*"))  # no output under any of its keys
    assert not list((outputs / ".staging").glob("*"))
    # a finished task cannot be cancelled again
    again = api.post(f"/v1/tasks/{task['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"


def test_cancel_queued_task_never_starts(api: httpx.Client) -> None:
    first = api.post(TINY_RUN, params={"wait": "false"}, json={**SMALL, "resolution": "1080p"}).json()
    second = api.post(TINY_RUN, params={"wait": "false"}, json=SMALL).json()
    cancelled = api.post(f"/v1/tasks/{second['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    wait_until(api, first["id"], finished)
    time.sleep(0.3)
    later = api.get(f"/v1/tasks/{second['id']}").json()
    assert later["status"] == "cancelled" and later["started_at"] is None
    events = sse_events(api, second["id"])
    assert "running" not in [d.get("status") for _, k, d in events if k == "status"]


def test_twenty_concurrent_submissions_all_complete(api: httpx.Client) -> None:
    body = {"prompt": "many", "aspect_ratio": "1:1", "duration": 0.1}
    ids: list[str] = []
    lock = threading.Lock()

    def submit(n: int) -> None:
        response = api.post(TINY_RUN, params={"wait": "false"}, json={**body, "seed": n})
        assert response.status_code == 202
        with lock:
            ids.append(response.json()["id"])

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 20
    for task_id in ids:
        assert wait_until(api, task_id, finished)["status"] == "completed"
    listed = api.get("/v1/tasks", params={"limit": 100, "status": "completed"}).json()["data"]
    assert set(ids) <= {t["id"] for t in listed}


def test_api_stays_responsive_while_a_task_runs(api: httpx.Client) -> None:
    body = {"prompt": "busy", "resolution": "1080p", "duration": 1}
    task = api.post(TINY_RUN, params={"wait": "false"}, json=body).json()
    wait_until(api, task["id"], lambda t: t["status"] == "running")
    slowest = 0.0
    while api.get(f"/v1/tasks/{task['id']}").json()["status"] == "running":
        started = time.perf_counter()
        assert api.get("/healthz").status_code == 200
        slowest = max(slowest, time.perf_counter() - started)
        time.sleep(0.05)
    assert slowest < 1.0


def test_uploaded_image_drives_image_to_video(api: httpx.Client, tmp_path: Path) -> None:
    import base64

    from tests.conftest import png_data_uri

    png = base64.b64decode(png_data_uri(90, 160).split(",", 1)[1])
    upload = api.post("/v1/files", files={"file": ("portrait.png", png, "application/octet-stream")})
    assert upload.status_code == 201, upload.text
    info = upload.json()
    assert info["content_type"] == "image/png" and info["size_bytes"] == len(png)
    assert httpx.get(info["url"]).content == png
    response = api.post(TINY_RUN, json={"prompt": "zoom", "image": info["id"], "duration": 0.5})
    task = response.json()
    assert task["status"] == "completed", task
    assert task["output_meta"]["aspect_ratio"] == "9:16"
    path = download(task["output"]["video"], tmp_path / "i2v.mp4")
    assert_mp4(path, width=720, height=1280, duration=0.5, fps=24, audio=False)


def test_output_url_supports_range_requests_and_rejects_tampering(api: httpx.Client) -> None:
    task = api.post(TINY_RUN, json=SMALL).json()
    url = task["output"]["video"]
    whole = httpx.get(url).content
    part = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-199/{len(whole)}"
    assert part.content == whole[100:200]
    tampered = url.replace("signature=", "signature=0")
    response = httpx.get(tampered)
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    expired = httpx.get(url.split("?")[0], params={"expires": 1, "signature": "0" * 64})
    assert expired.status_code == 403


def test_app_without_usable_weights_is_refused_at_submit_without_internals(
    settings: Settings, warm: WarmModels, tmp_path: Path
) -> None:
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    served = server_settings(settings, model_paths={"lightricks/ltx-2-fast": str(broken)})
    server = LiveServer(served, warm).start()
    try:
        with server.client() as api:
            response = api.post("/v1/apps/lightricks/ltx-2-fast/run", json={"prompt": "x", "duration": 1})
            tasks = api.get("/v1/tasks").json()["data"]
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "app_unavailable" and "weights" in error["message"]
        assert "Traceback" not in error["message"]
        assert str(broken) not in error["message"]  # server paths stay on the server
        assert tasks == []  # refused before queueing
    finally:
        server.stop()

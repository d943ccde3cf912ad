"""The API's contract at its edges: auth, every error status and body, catalogue, OpenAPI, health, metrics."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest

from kinema.engines.cache import WarmModels
from kinema.settings import Settings
from kinema.storage.local import LocalStorage
from tests.conftest import LiveServer, png_data_uri, server_settings

TINY_RUN = "/v1/apps/kinema/tiny/run"


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert the status and the one error shape; return the error object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", TINY_RUN),
        ("GET", "/v1/tasks"),
        ("GET", "/v1/tasks/tsk_x"),
        ("POST", "/v1/tasks/tsk_x/cancel"),
        ("GET", "/v1/tasks/tsk_x/events"),
        ("GET", "/v1/apps"),
        ("GET", "/v1/apps/kinema/tiny"),
        ("POST", "/v1/files"),
        ("GET", "/v1/files/file_x"),
    ],
)
def test_every_v1_route_needs_a_valid_bearer_key(live_server: LiveServer, method: str, path: str) -> None:
    missing = httpx.request(method, live_server.url + path, json={"prompt": "x"})
    assert error_of(missing, 401)["code"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.request(
        method, live_server.url + path, json={"prompt": "x"}, headers={"Authorization": "Bearer kin_wrong"}
    )
    assert error_of(wrong, 401)["message"] == "invalid API key"
    basic = httpx.request(method, live_server.url + path, headers={"Authorization": "Basic eDp5"})
    assert basic.status_code == 401


def test_malformed_json_is_a_400(api: httpx.Client) -> None:
    response = api.post(TINY_RUN, content=b'{"prompt": ', headers={"Content-Type": "application/json"})
    error = error_of(response, 400)
    assert error["code"] == "bad_request" and "JSON" in error["message"]


def test_form_encoded_body_is_a_415(api: httpx.Client) -> None:
    response = api.post(
        TINY_RUN, content=b"prompt=x", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert error_of(response, 415)["code"] == "unsupported_media_type"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": 3}, "prompt"),
        ({"prompt": "x", "resolution": "8K"}, "resolution"),
        ({"prompt": "x", "duration": "long"}, "duration"),
        ({"prompt": "x", "duration": 99}, "duration"),
        ({"prompt": "x", "generate_audio": "yes"}, "generate_audio"),
        ({"prompt": "x", "colour": "red"}, "colour"),
        ({"prompt": "   "}, "prompt"),
        ({}, "prompt"),
        ([1, 2], "body"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(api: httpx.Client, body: Any, field: str) -> None:
    error = error_of(api.post(TINY_RUN, json=body), 422)
    assert error["code"] == "invalid_input"
    assert field in error["message"]
    assert any(d["field"] == field for d in error["details"])
    assert api.get("/v1/tasks").json()["data"] == []  # nothing was queued


def test_unknown_field_is_called_unknown(api: httpx.Client) -> None:
    error = error_of(api.post(TINY_RUN, json={"prompt": "x", "colour": "red"}), 422)
    assert "colour: unknown field" in error["message"]


def test_image_file_id_that_does_not_exist_is_a_422(api: httpx.Client) -> None:
    error = error_of(api.post(TINY_RUN, json={"prompt": "x", "image": "file_nope"}), 422)
    assert "image" in error["message"]


def test_oversize_json_body_is_a_413(settings: Settings, warm: WarmModels) -> None:
    server = LiveServer(server_settings(settings, request_max_bytes=1000), warm).start()
    try:
        with server.client() as api:
            big = {"prompt": "x" * 2000}
            assert error_of(api.post(TINY_RUN, json=big), 413)["code"] == "payload_too_large"

            def chunks() -> Any:  # no Content-Length: the limit is enforced while streaming
                yield b'{"prompt": "'
                for _ in range(20):
                    yield b"y" * 100
                yield b'"}'

            streamed = api.post(TINY_RUN, content=chunks(), headers={"Content-Type": "application/json"})
            assert error_of(streamed, 413)["code"] == "payload_too_large"
    finally:
        server.stop()


def test_upload_limits_and_sniffing(settings: Settings, warm: WarmModels, tmp_path: Path) -> None:
    server = LiveServer(server_settings(settings, upload_max_bytes=5000), warm).start()
    try:
        with server.client() as api:
            text = api.post("/v1/files", files={"file": ("photo.png", b"not an image at all", "image/png")})
            error = error_of(text, 415)
            assert error["code"] == "unsupported_media_type" and "image/png" in error["details"]["accepted"]
            big = api.post("/v1/files", files={"file": ("big.png", b"\x89PNG" + b"0" * 6000, "image/png")})
            assert error_of(big, 413)["code"] == "payload_too_large"
            huge = api.post("/v1/files", files={"file": ("huge.png", b"0" * 200_000, "image/png")})
            assert error_of(huge, 413)["code"] == "payload_too_large"
            missing = api.post("/v1/files", files={"other": ("a.png", b"x", "image/png")})
            assert error_of(missing, 422)["code"] == "invalid_input"
            png = base64.b64decode(png_data_uri(8, 8).split(",", 1)[1])
            ok = api.post("/v1/files", files={"file": ("../../etc/passwd", png, "text/plain")})
            assert ok.status_code == 201
            assert ok.json()["filename"] == "passwd" and ok.json()["content_type"] == "image/png"
            assert api.get(f"/v1/files/{ok.json()['id']}").json()["size_bytes"] == len(png)
            assert error_of(api.get("/v1/files/file_missing"), 404)["code"] == "not_found"
    finally:
        server.stop()


def test_unknown_task_app_and_route_are_404(api: httpx.Client) -> None:
    assert error_of(api.get("/v1/tasks/tsk_missing"), 404)["code"] == "not_found"
    assert error_of(api.post("/v1/tasks/tsk_missing/cancel"), 404)["code"] == "not_found"
    assert error_of(api.get("/v1/tasks/tsk_missing/events"), 404)["code"] == "not_found"
    assert (
        error_of(api.post("/v1/apps/acme/nothing/run", json={"prompt": "x"}), 404)["code"] == "app_not_found"
    )
    assert error_of(api.get("/v1/apps/acme/nothing"), 404)["code"] == "app_not_found"
    assert error_of(api.get("/v1/nothing"), 404)["code"] == "not_found"
    assert error_of(api.delete("/v1/tasks"), 405)["code"] == "method_not_allowed"


def test_bad_query_parameters_are_4xx(api: httpx.Client) -> None:
    assert error_of(api.get("/v1/tasks", params={"limit": 0}), 422)["code"] == "invalid_input"
    assert error_of(api.get("/v1/tasks", params={"status": "sleeping"}), 422)["code"] == "invalid_input"
    assert error_of(api.get("/v1/tasks", params={"cursor": "garbage!"}), 400)["code"] == "bad_request"
    assert error_of(api.post(TINY_RUN, params={"wait": "maybe"}, json={"prompt": "x"}), 422)


def test_signed_url_check(live_server: LiveServer) -> None:
    response = httpx.get(f"{live_server.url}/files/file_x")
    assert error_of(response, 422)["code"] == "invalid_input"  # expires and signature are required


class BucketLikeStorage(LocalStorage):
    """Local files that have URLs of their own, as a bucket's presigned ones (the S3 backend's way)."""

    def url_for(
        self, key: str, *, expires_s: int, filename: str | None = None, content_type: str | None = None
    ) -> str:
        return f"https://bucket.example/{key}?expires_in={expires_s}&type={content_type}"


def test_downloads_redirect_to_a_storage_url_when_storage_has_one(
    live_server: LiveServer, api: httpx.Client
) -> None:
    png = base64.b64decode(png_data_uri(4, 4).split(",", 1)[1])
    uploaded = api.post("/v1/files", files={"file": ("a.png", png)}).json()
    st = live_server.state
    local, st.storage = st.storage, BucketLikeStorage(live_server.settings.outputs_dir)
    try:
        direct = f"https://bucket.example/uploads/{uploaded['id']}?expires_in=3600&type=image/png"
        assert api.get(f"/v1/files/{uploaded['id']}").json()["url"] == direct
        response = httpx.get(uploaded["url"])  # a signed URL issued before still works: it redirects
        assert response.status_code == 307 and response.headers["location"] == direct
        assert error_of(httpx.get(uploaded["url"] + "0"), 403)["code"] == "forbidden"  # checked first
    finally:
        st.storage = local
    served = httpx.get(uploaded["url"])
    assert served.status_code == 200 and served.content == png


def test_app_catalogue_has_schema_pricing_and_examples(api: httpx.Client) -> None:
    apps = api.get("/v1/apps").json()["data"]
    assert apps[0]["id"] == "lightricks/ltx-2-fast"
    assert {"kinema/tiny", "lightricks/ltx-2"} <= {a["id"] for a in apps}
    detail = api.get("/v1/apps/lightricks/ltx-2-fast").json()
    props = detail["input_schema"]["properties"]
    assert detail["input_schema"]["required"] == ["prompt"]
    assert props["resolution"]["default"] == "720p"
    assert props["duration"]["maximum"] == 20.0
    assert detail["pricing"]["per_second"]["720p/1080p video+audio"] == "0.25"
    assert detail["examples"]


def test_openapi_documents_every_app_body_and_the_error_shape(live_server: LiveServer) -> None:
    spec = httpx.get(live_server.url + "/openapi.json").json()
    paths = spec["paths"]
    for app_id in ("lightricks/ltx-2-fast", "lightricks/ltx-2", "kinema/tiny"):
        operation = paths[f"/v1/apps/{app_id}/run"]["post"]
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        schema = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
        assert schema["additionalProperties"] is False and "prompt" in schema["properties"]
        assert {"200", "202", "401", "422"} <= set(operation["responses"])
        assert operation["security"] == [{"HTTPBearer": []}]
    for path in (
        "/v1/tasks",
        "/v1/tasks/{task_id}",
        "/v1/tasks/{task_id}/cancel",
        "/v1/tasks/{task_id}/events",
        "/v1/files",
        "/v1/files/{file_id}",
        "/files/{file_id}",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
    assert "ErrorBody" in spec["components"]["schemas"]
    assert httpx.get(live_server.url + "/docs").status_code == 200


def test_health_readiness_and_metrics(api: httpx.Client, live_server: LiveServer) -> None:
    assert api.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = api.get("/readyz").json()
    assert ready["status"] == "ready" and ready["checks"] == {
        "database": "ok",
        "storage": "ok",
        "workers": "ok",
    }
    task = api.post(TINY_RUN, json={"prompt": "m", "aspect_ratio": "1:1", "duration": 0.1}).json()
    assert task["status"] == "completed"
    metrics = api.get("/metrics").text
    assert 'kinema_tasks{status="completed"} 1.0' in metrics
    assert 'kinema_queue_depth{app="kinema/tiny"} 0.0' in metrics  # per app: what an autoscaler watches
    assert 'kinema_tasks_running{app="lightricks/ltx-2-fast"} 0.0' in metrics
    assert 'kinema_stage_seconds_count{app="kinema/tiny",stage="denoise"} 1.0' in metrics
    assert 'kinema_tasks_finished_total{app="kinema/tiny",status="completed"} 1.0' in metrics
    assert (
        'kinema_http_request_duration_seconds_count{method="POST",route="/v1/apps/kinema/tiny/run"' in metrics
    )
    live_server.state.runner.stop(timeout=5)  # a dead worker makes the server not ready
    not_ready = api.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["checks"]["workers"] != "ok"


def test_generated_admin_key_is_announced_once_and_works(settings: Settings, warm: WarmModels) -> None:
    first = LiveServer(server_settings(settings, admin_key=None), warm).start()
    try:
        (key,) = first.announced
        assert key.startswith("kin_")
        with first.client(key) as api:
            assert api.get("/v1/apps").status_code == 200
    finally:
        first.stop()
    second = LiveServer(server_settings(settings, admin_key=None), warm).start()
    try:
        assert second.announced == []  # already made: never shown again
        with second.client(key) as api:
            assert api.get("/v1/apps").status_code == 200
        stored = Path(settings.data_dir / "kinema.db").read_bytes()
        assert key.encode() not in stored  # only its hash is kept
    finally:
        second.stop()


def test_local_path_image_is_refused_by_the_server(api: httpx.Client) -> None:
    error = error_of(api.post(TINY_RUN, json={"prompt": "x", "image": "/etc/passwd"}), 422)
    assert "local paths" in error["message"] and error["details"][0]["field"] == "image"


def test_api_docs_work_offline(live_server: LiveServer) -> None:
    import re

    for page in ("/docs", "/redoc"):
        html = httpx.get(live_server.url + page).text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and all(a.startswith("/") for a in assets), assets  # nothing from a CDN
        for asset in assets:
            assert httpx.get(live_server.url + asset).status_code == 200, asset


def test_waiting_runs_and_event_streams_are_woken_by_commits_not_by_polling(
    settings: Settings, warm: WarmModels
) -> None:
    import json
    import threading
    import time

    from kinema.domain.tasks import TaskStatus

    server = LiveServer(server_settings(settings, workers=0, remote_workers=0), warm).start()
    st = server.state
    reads: list[str] = []
    get = st.store.tasks.get
    st.store.tasks.get = lambda task_id, **kw: (reads.append(task_id), get(task_id, **kw))[1]
    try:
        with server.client() as api:
            started = time.monotonic()
            waited = api.post(TINY_RUN, json={"prompt": "nobody runs me"}, headers={"Prefer": "wait=2"})
            assert waited.status_code == 202 and time.monotonic() - started >= 2
            assert len(reads) <= 4  # once at the start, then every fallback_s (1 s): polling read 20 times
            task_id = waited.json()["id"]
            seen: list[tuple[str, float]] = []

            def follow() -> None:
                with api.stream("GET", f"/v1/tasks/{task_id}/events") as stream:
                    kind = ""
                    for line in stream.iter_lines():
                        if line.startswith("event:"):
                            kind = line[6:].strip()
                        elif line.startswith("data:"):
                            seen.append((kind, time.monotonic()))
                            if kind == "task":
                                assert json.loads(line[5:])["status"] == "completed"

            thread = threading.Thread(target=follow)
            thread.start()
            time.sleep(0.5)
            claimed = st.store.tasks.claim_next("elsewhere")  # a worker somewhere runs it
            assert claimed is not None
            st.store.tasks.log(task_id, "halfway")
            logged = time.monotonic()
            claimed.status = TaskStatus.completed
            st.store.tasks.finish(claimed)
            thread.join(10)
            assert [kind for kind, _ in seen] == ["status", "status", "log", "status", "task"]
            halfway = next(at for kind, at in seen if kind == "log")
            assert halfway - logged < 0.5  # woken by the commit, not by a timer
    finally:
        server.stop()

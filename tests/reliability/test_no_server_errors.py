"""No request produces a 5xx other than a documented 503: the cases that used to crash, and storage faults."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from kinema.engines.cache import WarmModels
from tests.conftest import LiveServer
from tests.reliability.servers import error_of, fields_of, running_server

TINY_RUN = "/v1/apps/kinema/tiny/run"


@pytest.fixture(scope="module")
def api(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_decompression_bomb_upload_is_a_413_not_a_500(api: httpx.Client) -> None:
    bomb = png(Image.new("1", (20000, 20000)))  # 400 MP of pixels in a small file
    response = api.post("/v1/files", files={"file": ("bomb.png", bomb, "image/png")})
    error = error_of(response, 413)
    assert error["code"] == "image_too_large"
    assert api.get("/v1/tasks").status_code == 200  # the server is fine


def test_upload_over_the_pixel_limit_is_a_413(api: httpx.Client) -> None:
    wide = png(Image.new("L", (9000, 5000)))  # 45 MP, over the 40 MP limit but under PIL's bomb limit
    assert (
        error_of(api.post("/v1/files", files={"file": ("wide.png", wide)}), 413)["code"] == "image_too_large"
    )


def test_truncated_image_upload_is_a_415(api: httpx.Client) -> None:
    broken = png(Image.new("RGB", (64, 64)))[:30]
    response = api.post("/v1/files", files={"file": ("broken.png", broken)})
    assert error_of(response, 415)["code"] == "unsupported_media_type"


@pytest.mark.parametrize(
    "webhook",
    ["http://127.0.0.1:99999/", "http://127.0.0.1:abc/", "http://[::1/", "http://[::1]:0/", "http://"],
)
def test_webhook_with_bad_port_or_syntax_is_a_422(api: httpx.Client, webhook: str) -> None:
    response = api.post(TINY_RUN, params={"wait": "false", "webhook": webhook}, json={"prompt": "x"})
    assert fields_of(error_of(response, 422)) == {"webhook"}


@pytest.mark.parametrize("signature", ["é", "ü" * 64, "\u2603", "%00", "a" * 5000])
def test_file_url_with_odd_signature_is_a_403(api: httpx.Client, signature: str) -> None:
    response = api.get("/files/file_x", params={"expires": "9999999999", "signature": signature})
    assert error_of(response, 403)["code"] == "forbidden"


def test_file_url_with_huge_expiry_is_a_4xx(api: httpx.Client) -> None:
    response = api.get("/files/file_x", params={"expires": "9" * 400, "signature": "x"})
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"].startswith("application/json")


def test_stored_file_missing_on_disk_is_a_404(server: LiveServer, api: httpx.Client) -> None:
    uploaded = api.post("/v1/files", files={"file": ("a.png", png(Image.new("RGB", (8, 8))))}).json()
    (server.settings.outputs_dir / "uploads" / uploaded["id"]).unlink()
    assert error_of(httpx.get(uploaded["url"]), 404)["code"] == "not_found"


def break_storage(root: Path) -> None:
    """Make the storage directory unusable even for root: its staging directory is replaced by a file.

    (A read-only mount needs privileges tests do not have, and root ignores permission bits.)
    """
    staging = root / ".staging"
    if staging.is_dir():
        shutil.rmtree(staging)
    root.mkdir(parents=True, exist_ok=True)
    staging.write_bytes(b"")


def test_upload_when_storage_cannot_write_is_a_507_storage_error(
    tmp_path: Path, tiny_model_dir: Path, warm: WarmModels
) -> None:
    with (
        running_server(tmp_path, tiny_model_dir, warm, workers=0, remote_workers=0) as live,
        live.client() as api,
    ):
        break_storage(live.settings.outputs_dir)
        response = api.post("/v1/files", files={"file": ("a.png", png(Image.new("RGB", (8, 8))))})
        error = error_of(response, 507)
        assert error["code"] == "storage_error"
        assert str(live.settings.outputs_dir) not in error["message"]  # no server paths
        assert api.get("/readyz").status_code == 503
        # A data: image is stored at submit, so the same fault refuses the run before it is queued.
        from tests.conftest import png_data_uri

        run = api.post(TINY_RUN, params={"wait": "false"}, json={"prompt": "x", "image": png_data_uri(8, 8)})
        assert error_of(run, 507)["code"] == "storage_error"
        assert api.get("/v1/tasks").json()["data"] == []


def test_task_output_when_storage_cannot_write_fails_as_storage_error(
    tmp_path: Path, tiny_model_dir: Path, warm: WarmModels
) -> None:
    with running_server(tmp_path, tiny_model_dir, warm) as live, live.client() as api:
        break_storage(live.settings.outputs_dir)
        task = api.post(TINY_RUN, json={"prompt": "x", "duration": 0.25}).json()
        assert task["status"] == "failed"
        assert task["error"]["code"] == "storage_error"
        assert str(live.settings.outputs_dir) not in task["error"]["message"]

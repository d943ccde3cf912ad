"""A data: image is stored once as a file and the task refers to it; listing tasks stays small."""

from __future__ import annotations

import base64
import io
import os

import httpx
from PIL import Image

from tests.conftest import LiveServer

TINY_RUN = "/v1/apps/kinema/tiny/run"


def noise_png(size: int) -> bytes:
    image = Image.frombytes("RGB", (size, size), os.urandom(size * size * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_data_uri_is_stored_once_as_a_file_and_listing_stays_small(server: LiveServer) -> None:
    data = noise_png(600)  # about 1 MB
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    with server.client() as api:
        first = api.post(TINY_RUN, params={"wait": "false"}, json={"prompt": "x", "image": uri})
        assert first.status_code == 202, first.text
        file_id = first.json()["input"]["image"]
        assert file_id.startswith("file_")
        assert len(first.content) < 4000
        again = api.post(TINY_RUN, params={"wait": "false"}, json={"prompt": "y", "image": uri}).json()
        assert again["input"]["image"] == file_id  # the same image is stored once
        stored = api.get(f"/v1/files/{file_id}").json()
        assert (stored["content_type"], stored["size_bytes"], stored["purpose"]) == (
            "image/png",
            len(data),
            "input",
        )
        assert httpx.get(stored["url"]).content == data
        listing = api.get("/v1/tasks", params={"limit": 100})
        assert len(listing.json()["data"]) == 2
        assert len(listing.content) < 10_000  # two tasks, not two megabytes
        assert api.get(f"/v1/tasks/{first.json()['id']}").json()["input"]["image"] == file_id


def test_idempotent_retry_with_a_data_uri_returns_the_same_task(server: LiveServer) -> None:
    uri = "data:image/png;base64," + base64.b64encode(noise_png(32)).decode()
    with server.client() as api:
        headers = {"Idempotency-Key": "compact-retry"}
        body = {"prompt": "x", "image": uri}
        first = api.post(TINY_RUN, params={"wait": "false"}, json=body, headers=headers)
        second = api.post(TINY_RUN, params={"wait": "false"}, json=body, headers=headers)
        assert first.json()["id"] == second.json()["id"]
        assert second.headers.get("Idempotent-Replayed") == "true"
        other = api.post(TINY_RUN, params={"wait": "false"}, json={**body, "prompt": "z"}, headers=headers)
        assert other.status_code == 409


def test_another_account_cannot_use_the_stored_image(server: LiveServer) -> None:
    uri = "data:image/png;base64," + base64.b64encode(noise_png(24)).decode()
    with server.client() as admin:
        file_id = admin.post(TINY_RUN, params={"wait": "false"}, json={"prompt": "x", "image": uri}).json()[
            "input"
        ]["image"]
        key = admin.post("/v1/admin/users", json={"name": "other"}).json()["key"]
    with server.client(key) as other:
        refused = other.post(TINY_RUN, params={"wait": "false"}, json={"prompt": "x", "image": file_id})
        assert refused.status_code == 422
        # The same bytes sent by the other account become that account's own file.
        own = other.post(TINY_RUN, params={"wait": "false"}, json={"prompt": "x", "image": uri}).json()
        assert own["input"]["image"] != file_id

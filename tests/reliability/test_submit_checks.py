"""Everything checkable is checked at submit, before hold or queue; bad input is a 4xx naming the field."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from kinema.engines.cache import WarmModels
from tests.conftest import LiveServer, png_data_uri
from tests.reliability.servers import error_of, fake_dns, fields_of, loopback_only, new_user, running_server

TINY_RUN = "/v1/apps/kinema/tiny/run"
VEO_RUN = "/v1/apps/google/veo-3-1-fast/run"
ASYNC = {"wait": "false"}
IMAGE_MAX_BYTES = 64_000


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, warm: WarmModels
) -> Iterator[LiveServer]:
    """An API-only server with billing on: a task that got through stays queued, holding its cost."""
    with (
        loopback_only(),
        running_server(
            tmp_path_factory.mktemp("submit"),
            tiny_model_dir,
            warm,
            workers=0,
            remote_workers=0,
            billing_enabled=True,
            image_max_bytes=IMAGE_MAX_BYTES,
            google_api_key=SecretStr("fake-key-for-schema-checks"),
        ) as live,
    ):
        yield live


@pytest.fixture(scope="module")
def user(server: LiveServer) -> Iterator[httpx.Client]:
    """An account with 5.00 of credit whose every submit in this module is refused."""
    with server.client() as admin:
        key = new_user(admin, "refused", credit="5.00")
    with server.client(key) as client:
        yield client


def assert_nothing_queued_or_held(client: httpx.Client) -> None:
    assert client.get("/v1/tasks").json()["data"] == []
    me = client.get("/v1/me").json()
    assert (me["balance"], me["held"], me["available"]) == ("5.00", "0.00", "5.00")


def noise_png(width: int, height: int) -> bytes:
    """A PNG that does not compress (random pixels), for size limits."""
    import os

    image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


BAD_IMAGES = {
    "unclosed IPv6 bracket": ("https://[::1/a.png", "invalid_image"),
    "empty punycode label": ("https://xn--/a.png", "invalid_image"),
    "port out of range": ("https://example.com:99999/a.png", "invalid_image"),
    "port not a number": ("https://example.com:abc/a.png", "invalid_image"),
    "no host": ("https:///a.png", "invalid_image"),
    "loopback address": ("https://127.0.0.1/a.png", "unsafe_url"),
    "loopback name": ("https://localhost/a.png", "unsafe_url"),
    "IPv6 loopback": ("https://[::1]/a.png", "unsafe_url"),
    "IPv4-mapped loopback": ("https://[::ffff:127.0.0.1]/a.png", "unsafe_url"),
    "private address": ("https://10.0.0.1/a.png", "unsafe_url"),
    "link-local metadata": ("https://169.254.169.254/latest/meta-data/", "unsafe_url"),
    "plain http": ("http://93.184.215.14/a.png", "unsafe_url"),
    "userinfo": ("https://user:pw@93.184.215.14/a.png", "unsafe_url"),
    "backslash userinfo trick": ("http://127.0.0.1\\@1.2.3.4/", "unsafe_url"),
    "backslash userinfo trick, https": ("https://127.0.0.1\\@1.2.3.4/", "unsafe_url"),
    "unknown scheme": ("ftp://example.com/a.png", "invalid_input"),
    "local path": ("/etc/passwd", "invalid_input"),
    "data URI not base64": ("data:image/png,abc", "invalid_image"),
    "data URI not an image type": ("data:text/plain;base64,aGVsbG8=", "invalid_image"),
    "data URI bad base64": ("data:image/png;base64,!!!!", "invalid_image"),
    "data URI not an image": (
        "data:image/png;base64," + base64.b64encode(b"not an image").decode(),
        "invalid_image",
    ),
    "data URI truncated PNG": (data_uri(noise_png(16, 16)[:60]), "invalid_image"),
}


@pytest.mark.parametrize("image,code", list(BAD_IMAGES.values()), ids=list(BAD_IMAGES))
def test_bad_image_is_refused_at_submit_naming_the_field(user: httpx.Client, image: str, code: str) -> None:
    with loopback_only() as connections:
        error = error_of(user.post(TINY_RUN, params=ASYNC, json={"prompt": "x", "image": image}), 422)
    assert error["code"] == code
    assert fields_of(error) == {"image"}
    assert error["message"].startswith("image: ")
    assert "pw" not in error["message"]
    assert not [c for c in connections if c != "127.0.0.1"]  # only the test's own call to the server
    assert_nothing_queued_or_held(user)


def test_oversized_data_uri_is_refused_at_submit(user: httpx.Client) -> None:
    big = data_uri(noise_png(160, 160))  # about 77 kB of PNG, over the 64 kB limit
    error = error_of(user.post(TINY_RUN, params=ASYNC, json={"prompt": "x", "image": big}), 413)
    assert error["code"] == "image_too_large"
    assert fields_of(error) == {"image"}
    assert_nothing_queued_or_held(user)


def test_decompression_bomb_data_uri_is_refused_at_submit(user: httpx.Client) -> None:
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG")  # 400 MP in about 50 kB
    error = error_of(
        user.post(TINY_RUN, params=ASYNC, json={"prompt": "x", "image": data_uri(buffer.getvalue())}), 413
    )
    assert error["code"] == "image_too_large"
    assert fields_of(error) == {"image"}
    assert_nothing_queued_or_held(user)


def test_url_resolving_to_a_private_address_is_refused_at_submit(user: httpx.Client) -> None:
    with fake_dns({"rebind.example": ["10.1.2.3"]}):
        error = error_of(
            user.post(TINY_RUN, params=ASYNC, json={"prompt": "x", "image": "https://rebind.example/a.png"}),
            422,
        )
    assert error["code"] == "unsafe_url" and fields_of(error) == {"image"}
    assert "10.1.2.3" in error["message"]
    assert_nothing_queued_or_held(user)


WRONG_TYPES: dict[str, tuple[str, Any]] = {
    "duration true": ("duration", True),
    "duration string": ("duration", "1"),
    "duration null": ("duration", None),
    "seed true": ("seed", True),
    "seed string": ("seed", "7"),
    "seed float": ("seed", 7.5),
    "generate_audio string": ("generate_audio", "true"),
    "generate_audio 1": ("generate_audio", 1),
    "prompt number": ("prompt", 5),
    "image number": ("image", 5),
}


@pytest.mark.parametrize("field,value", list(WRONG_TYPES.values()), ids=list(WRONG_TYPES))
def test_wrong_type_is_refused_not_coerced(user: httpx.Client, field: str, value: Any) -> None:
    error = error_of(user.post(TINY_RUN, params=ASYNC, json={"prompt": "x", field: value}), 422)
    assert error["code"] == "invalid_input"
    assert field in fields_of(error)
    assert_nothing_queued_or_held(user)


@pytest.mark.parametrize("field,value", [("duration", True), ("duration", "8"), ("seed", "7")])
def test_wrong_type_is_refused_by_the_veo_apps_too(user: httpx.Client, field: str, value: Any) -> None:
    error = error_of(user.post(VEO_RUN, params=ASYNC, json={"prompt": "x", field: value}), 422)
    assert field in fields_of(error)
    assert_nothing_queued_or_held(user)


@pytest.mark.parametrize(
    "webhook",
    [
        "http://127.0.0.1:99999/",
        "http://127.0.0.1:abc/",
        "http://[::1/",
        "http://127.0.0.1\\@1.2.3.4/",
        "http://user@93.184.215.14/",
        "http://10.0.0.1/hook",
        "gopher://93.184.215.14/",
    ],
)
def test_bad_webhook_is_refused_at_submit(user: httpx.Client, webhook: str) -> None:
    with loopback_only() as connections:
        response = user.post(TINY_RUN, params={**ASYNC, "webhook": webhook}, json={"prompt": "x"})
    error = error_of(response, 422)
    assert fields_of(error) == {"webhook"}
    assert not [c for c in connections if c != "127.0.0.1"]
    assert_nothing_queued_or_held(user)


def test_integer_duration_is_still_a_number(server: LiveServer) -> None:
    with server.client() as admin:
        key = new_user(admin, "integers", credit="5.00")
    with server.client(key) as client:
        response = client.post(TINY_RUN, params=ASYNC, json={"prompt": "x", "duration": 1, "seed": 7})
        assert response.status_code == 202, response.text
        assert response.json()["input"]["duration"] == 1.0
        assert client.get("/v1/me").json()["held"] != "0.00"  # the hold is placed for a good run


def test_public_image_url_is_resolved_at_submit_and_accepted_without_connecting(server: LiveServer) -> None:
    with server.client() as admin:
        key = new_user(admin, "public-url", credit="5.00")
    with (
        server.client(key) as client,
        fake_dns({"images.example": ["93.184.215.14"]}),
        loopback_only() as seen,
    ):
        image = "https://images.example/cat.png"
        response = client.post(TINY_RUN, params=ASYNC, json={"prompt": "x", "image": image})
    assert response.status_code == 202, response.text
    assert response.json()["input"]["image"] == image
    assert set(seen) == {"127.0.0.1"}  # resolved, never fetched: no worker here, and no fetch at submit


def test_json_body_without_content_type_is_read_as_json(server: LiveServer) -> None:
    with server.client() as admin:
        key = new_user(admin, "no-content-type", credit="5.00")
    with server.client(key) as client:
        body = json.dumps({"prompt": "x", "duration": 1}).encode()
        request = client.build_request("POST", TINY_RUN, params=ASYNC, content=body)
        assert "content-type" not in request.headers
        response = client.send(request)
        assert response.status_code == 202, response.text
        assert response.json()["input"]["prompt"] == "x"
        form = client.post(
            TINY_RUN,
            params=ASYNC,
            content=b"prompt=x",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert error_of(form, 415)["code"] == "unsupported_media_type"
        broken = client.build_request("POST", TINY_RUN, params=ASYNC, content=b'{"prompt": ')
        assert error_of(client.send(broken), 400)["code"] == "bad_request"


def test_small_data_uri_passes_the_submit_checks(server: LiveServer) -> None:
    with server.client() as admin:
        key = new_user(admin, "small-image", credit="5.00")
    with server.client(key) as client:
        response = client.post(TINY_RUN, params=ASYNC, json={"prompt": "x", "image": png_data_uri(64, 48)})
        assert response.status_code == 202, response.text

"""Range requests follow RFC 9110, and every error body (on /files and elsewhere) is JSON."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
from PIL import Image

from kinema.api.ranges import byte_ranges
from kinema.errors import RangeNotSatisfiable
from tests.conftest import LiveServer
from tests.reliability.servers import error_of


@pytest.fixture(scope="module")
def stored(server: LiveServer) -> dict[str, Any]:
    """An uploaded PNG: its signed URL and its bytes."""
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buffer, format="PNG")
    data = buffer.getvalue()
    with server.client() as api:
        info = api.post("/v1/files", files={"file": ("g.png", data)}).json()
    return {"url": info["url"], "data": data, "size": len(data)}


def get(stored: dict[str, Any], range_header: str, **headers: str) -> httpx.Response:
    return httpx.get(stored["url"], headers={"Range": range_header, **headers})


@pytest.mark.parametrize(
    "header",
    [
        "items=0-1",
        "bytes",
        "bytes=",
        "bytes=abc",
        "bytes=5-2",
        "bytes=0-1,5-2",
        "bytes=--1",
        "bytes=1-2-3",
        "pages=1",
    ],
)
def test_unknown_unit_or_invalid_range_is_ignored(stored: dict[str, Any], header: str) -> None:
    response = get(stored, header)
    assert response.status_code == 200, response.text
    assert response.content == stored["data"]


def test_a_byte_range_is_served_as_206(stored: dict[str, Any]) -> None:
    response = get(stored, "bytes=0-9")
    assert response.status_code == 206
    assert response.content == stored["data"][:10]
    assert response.headers["content-range"] == f"bytes 0-9/{stored['size']}"
    tail = get(stored, "bytes=-5")
    assert tail.status_code == 206 and tail.content == stored["data"][-5:]
    past_end = get(stored, f"bytes=10-{stored['size'] * 2}")
    assert past_end.status_code == 206 and past_end.content == stored["data"][10:]


def test_several_ranges_with_one_unsatisfiable_serve_the_rest(stored: dict[str, Any]) -> None:
    response = get(stored, f"bytes=0-3,{stored['size'] + 10}-")
    assert response.status_code == 206
    assert response.content == stored["data"][:4]


def test_multiple_ranges_are_multipart(stored: dict[str, Any]) -> None:
    response = get(stored, "bytes=0-1,6-7")
    assert response.status_code == 206
    assert response.headers["content-type"].startswith("multipart/byteranges")


@pytest.mark.parametrize("header", ["bytes={size}-", "bytes={size}-{size}", "bytes=-0", "bytes={big}-"])
def test_unsatisfiable_range_is_a_json_416_with_the_length(stored: dict[str, Any], header: str) -> None:
    response = get(stored, header.format(size=stored["size"], big=10**30))
    error = error_of(response, 416)
    assert error["code"] == "range_not_satisfiable"
    assert response.headers["content-range"] == f"bytes */{stored['size']}"


def test_if_range_with_a_stale_validator_sends_the_whole_file(stored: dict[str, Any]) -> None:
    response = get(stored, f"bytes={stored['size']}-", **{"If-Range": '"stale-etag"'})
    assert response.status_code == 200 and response.content == stored["data"]


def test_byte_ranges_follows_rfc_9110() -> None:
    assert byte_ranges(None, 100) == []
    assert byte_ranges("items=0-1", 100) == []
    assert byte_ranges("bytes=5-2", 100) == []
    assert byte_ranges("bytes=0-0", 100) == [(0, 1)]
    assert byte_ranges("BYTES=1-", 100) == [(1, 100)]  # the unit is case-insensitive
    assert byte_ranges("bytes=-150", 100) == [(0, 100)]
    assert byte_ranges("bytes=0-1, 3-4", 100) == [(0, 2), (3, 5)]
    with pytest.raises(RangeNotSatisfiable):
        byte_ranges("bytes=100-", 100)
    with pytest.raises(RangeNotSatisfiable):
        byte_ranges("bytes=-1", 0)
    with pytest.raises(RangeNotSatisfiable):
        byte_ranges("bytes=" + "9" * 5000 + "-", 100)  # past Python's int() digit limit: no ValueError
    assert byte_ranges("bytes=0-" + "9" * 5000, 100) == [(0, 100)]
    assert byte_ranges("bytes=-" + "9" * 5000, 100) == [(0, 100)]


@pytest.mark.parametrize(
    "method,path,params,status",
    [
        ("GET", "/files/file_x", {}, 422),  # no signature
        ("GET", "/files/file_x", {"expires": "soon", "signature": "x"}, 422),
        ("GET", "/files/file_x", {"expires": "1", "signature": "x"}, 403),
        ("POST", "/files/file_x", {}, 405),
        ("GET", "/no/such/route", {}, 404),
        ("DELETE", "/v1/tasks", {}, 405),
        ("GET", "/v1/tasks", {"limit": "1000"}, 401),
    ],
)
def test_every_error_body_is_json(
    server: LiveServer, method: str, path: str, params: dict[str, str], status: int
) -> None:
    response = httpx.request(method, server.url + path, params=params)
    error_of(response, status)

"""Downloads read through Storage answer exactly as Starlette's FileResponse on the same file did."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from kinema.api.ranges import StoredFileResponse, served_ranges
from kinema.storage.local import LocalStorage

KEY = "tsk_ä b.mp4"  # a name Content-Disposition must quote
SIZE = 200_000  # several 64 KiB reads


class FileWithKinemaRanges(FileResponse):
    """What /files sent before storage was an interface: FileResponse with kinema's range parsing."""

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        return served_ranges(http_range, file_size)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    storage = LocalStorage(tmp_path_factory.mktemp("store"))
    staging = storage.staging_file(".mp4")
    staging.write_bytes(os.urandom(SIZE))
    storage.put(staging, KEY)
    path: Path = storage.path_for(KEY)
    common = {"media_type": "video/mp4", "filename": "ä b.mp4", "headers": {"Cache-Control": "private"}}

    async def before(request: Request) -> Response:
        return FileWithKinemaRanges(
            path, **common, content_disposition_type="inline", stat_result=path.stat()
        )

    async def now(request: Request) -> Response:
        headers = request.headers
        return StoredFileResponse(
            storage,
            storage.stat(KEY),
            **common,
            range_header=headers.get("range"),
            if_range=headers.get("if-range"),
        )

    return TestClient(Starlette(routes=[Route("/before", before), Route("/now", now)]))


def without_boundary(response: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body with the random multipart boundary replaced by a fixed one."""
    status, headers, body = response.status_code, dict(response.headers), response.content
    if "boundary=" in headers["content-type"]:
        boundary = headers["content-type"].split("boundary=")[1]
        headers["content-type"] = headers["content-type"].replace(boundary, "B")
        body = body.replace(boundary.encode(), b"B")
    return status, headers, body


@pytest.mark.parametrize(
    ("request_headers", "status"),
    [
        ({}, 200),
        ({"range": "bytes=0-9"}, 206),  # the first bytes
        ({"range": "bytes=70000-140000"}, 206),  # the middle, across reads
        ({"range": "bytes=-5"}, 206),  # a suffix
        ({"range": f"bytes=100-{SIZE * 3}"}, 206),  # past the end: to the end
        ({"range": "bytes=0-1,6-7"}, 206),  # multipart
        ({"range": "bytes=0-70000,65000-140000,199990-"}, 206),  # overlapping ranges merge
        ({"range": "bytes=0-9", "if-range": "{etag}"}, 206),
        ({"range": "bytes=0-9", "if-range": "{last_modified}"}, 206),
        ({"range": "bytes=0-9", "if-range": '"stale"'}, 200),
        ({"range": "bytes=0-9", "if-range": "W/{etag}"}, 200),  # a weak validator never allows a range
        ({"range": "items=1-2"}, 200),
        ({"range": "bytes=5-2"}, 200),
    ],
)
def test_a_download_through_storage_matches_file_response(
    client: TestClient, request_headers: dict[str, str], status: int
) -> None:
    whole = client.get("/before")
    validators = {"etag": whole.headers["etag"], "last_modified": whole.headers["last-modified"]}
    sent = {name: value.format(**validators) for name, value in request_headers.items()}
    before = without_boundary(client.get("/before", headers=sent))
    assert before[0] == status
    assert without_boundary(client.get("/now", headers=sent)) == before

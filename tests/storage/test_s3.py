"""What only the S3 backend does, against moto's S3 server on loopback: multipart uploads that appear whole
or not at all, presigned URLs, downloads into staging, aborting a crash's uploads, and a server on a bucket.

The behaviour every backend shares is checked on this one too, in test_base.py.
"""

from __future__ import annotations

import base64
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from kinema.engines.cache import WarmModels
from kinema.errors import StorageError
from kinema.settings import Settings
from kinema.storage import open_storage
from kinema.storage.s3 import MAX_URL_TTL_S, S3Storage
from tests.conftest import LiveServer, assert_mp4, png_data_uri, server_settings
from tests.storage.conftest import SECRET_KEY, s3_settings

DATA = bytes(range(256)) * 40
MiB = 1024 * 1024


@pytest.fixture
def s3(tmp_path: Path, s3_endpoint: str, bucket: str) -> S3Storage:
    small_parts = {"s3_multipart_threshold_bytes": 5 * MiB, "s3_multipart_part_bytes": 5 * MiB}
    storage = open_storage(s3_settings(tmp_path, s3_endpoint, bucket, **small_parts))
    assert isinstance(storage, S3Storage)
    return storage


def names_in(s3_admin: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3_admin.list_objects_v2(Bucket=bucket).get("Contents", [])]


def uploads_in(s3_admin: Any, bucket: str) -> list[str]:
    return [u["Key"] for u in s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def staged(storage: S3Storage, data: bytes) -> Path:
    staging = storage.staging_file(".mp4")
    staging.write_bytes(data)
    return staging


def test_open_storage_picks_the_bucket_and_creates_nothing(
    tmp_path: Path, s3_endpoint: str, bucket: str, s3_admin: Any
) -> None:
    storage = open_storage(s3_settings(tmp_path, s3_endpoint, bucket))
    assert isinstance(storage, S3Storage) and storage.prefix == "kinema/"
    assert not (tmp_path / "staging").exists() and not (tmp_path / "data").exists()
    assert names_in(s3_admin, bucket) == []
    without_bucket = s3_settings(tmp_path, s3_endpoint, bucket, s3_bucket=None)
    with pytest.raises(StorageError, match="KINEMA_S3_BUCKET"):
        open_storage(without_bucket)


def test_put_uploads_under_the_prefix_with_its_content_type(
    s3: S3Storage, s3_admin: Any, bucket: str
) -> None:
    staging = staged(s3, DATA)
    result = s3.put(staging, "tsk_a/attempt-1.mp4")
    assert result.url == f"s3://{bucket}/kinema/tsk_a/attempt-1.mp4" and result.local_path is None
    assert names_in(s3_admin, bucket) == ["kinema/tsk_a/attempt-1.mp4"]
    head = s3_admin.head_object(Bucket=bucket, Key="kinema/tsk_a/attempt-1.mp4")
    assert head["ContentType"] == "video/mp4" and head["ContentLength"] == len(DATA)
    assert not staging.exists()


def test_a_large_put_goes_in_parts_and_is_invisible_until_complete(
    s3: S3Storage, s3_admin: Any, bucket: str
) -> None:
    data = bytes(range(256)) * (11 * MiB // 256)  # three parts of at most 5 MiB
    seen_while_uploading: list[int] = []

    def look(**_: Any) -> None:  # before each part is sent, a reader looks for the object
        try:
            s3_admin.head_object(Bucket=bucket, Key="kinema/big.mp4")
            seen_while_uploading.append(200)
        except ClientError as exc:
            seen_while_uploading.append(exc.response["ResponseMetadata"]["HTTPStatusCode"])

    s3.client.meta.events.register("before-call.s3.UploadPart", look)
    s3.put(staged(s3, data), "big.mp4")
    assert seen_while_uploading == [404, 404, 404]
    info = s3.stat("big.mp4")
    assert info.size_bytes == len(data) and info.etag.endswith('-3"')  # S3's mark of a 3-part object
    with s3.open("big.mp4", 5 * MiB - 10, 5 * MiB + 10) as stream:  # across a part boundary
        assert stream.read() == data[5 * MiB - 10 : 5 * MiB + 10]


def test_an_interrupted_multipart_upload_is_aborted_and_stores_nothing(
    s3: S3Storage, s3_admin: Any, bucket: str, s3_endpoint: str
) -> None:
    calls, lock = [], threading.Lock()

    def drop_the_second_part(**_: Any) -> None:
        with lock:
            calls.append(1)
            if len(calls) == 2:
                raise EndpointConnectionError(endpoint_url=s3_endpoint)

    s3.client.meta.events.register("before-call.s3.UploadPart", drop_the_second_part)
    staging = staged(s3, b"x" * (11 * MiB))
    with pytest.raises(StorageError) as raised:
        s3.put(staging, "tsk_b/attempt-1.mp4")
    assert raised.value.public_message == "cannot store the file: the object store cannot be reached"
    assert SECRET_KEY not in raised.value.message
    assert not s3.exists("tsk_b/attempt-1.mp4")
    assert uploads_in(s3_admin, bucket) == []  # aborted: no parts left behind in the bucket
    assert staging.exists()  # the caller discards it, as after any failed put
    calls.clear()
    with pytest.raises(StorageError):
        s3.write_bytes(b"y" * (11 * MiB), "uploads/file_c")
    assert [p.name for p in s3.staging_dir.iterdir()] == [staging.name]  # write_bytes discarded its own
    assert names_in(s3_admin, bucket) == [] and uploads_in(s3_admin, bucket) == []


def test_presigned_url_downloads_byte_exactly_with_ranges_and_headers(s3: S3Storage) -> None:
    s3.put(staged(s3, DATA), "tsk_a/attempt-1.mp4")
    url = s3.url_for("tsk_a/attempt-1.mp4", expires_s=120, filename="clip ä.mp4", content_type="video/mp4")
    assert url.startswith("http://127.0.0.1:") and SECRET_KEY not in url
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["120"]
    whole = httpx.get(url)
    assert whole.status_code == 200 and whole.content == DATA
    assert whole.headers["content-type"] == "video/mp4"
    assert whole.headers["content-disposition"] == "inline; filename*=utf-8''clip%20%C3%A4.mp4"
    part = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == DATA[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(DATA)}"
    suffix = httpx.get(url, headers={"Range": "bytes=-5"})
    assert suffix.status_code == 206 and suffix.content == DATA[-5:]
    forever = s3.url_for("tsk_a/attempt-1.mp4", expires_s=10**9)
    assert parse_qs(urlsplit(forever).query)["X-Amz-Expires"] == [str(MAX_URL_TTL_S)]


def test_local_file_downloads_into_staging_and_removes_it_even_on_error(s3: S3Storage) -> None:
    s3.put(staged(s3, DATA), "uploads/file_a")
    with s3.local_file("uploads/file_a") as path:
        assert path.parent == s3.staging_dir and path.read_bytes() == DATA
    assert not path.exists()
    with pytest.raises(RuntimeError), s3.local_file("uploads/file_a") as path:
        raise RuntimeError("the reader failed")
    assert not path.exists() and list(s3.staging_dir.iterdir()) == []


def test_sweep_aborts_a_crashed_process_multipart_upload_after_the_grace(
    s3: S3Storage, s3_admin: Any, bucket: str
) -> None:
    # moto says every upload began in 2010, so both are long past the grace
    s3_admin.create_multipart_upload(Bucket=bucket, Key="kinema/tsk_c/attempt-1.mp4")
    s3_admin.create_multipart_upload(Bucket=bucket, Key="elsewhere/not-ours.mp4")  # outside the prefix
    assert s3.sweep_staging(3600) == 1
    assert uploads_in(s3_admin, bucket) == ["elsewhere/not-ours.mp4"]
    assert s3.sweep_staging(3600) == 0


def test_failures_say_what_failed_but_name_no_credentials_or_endpoint(
    tmp_path: Path, s3_endpoint: str, s3: S3Storage
) -> None:
    with socket.socket() as closed:  # a loopback port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    unreachable = S3Storage(
        "kinema", staging_dir=tmp_path / "other", endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1"
    )
    with pytest.raises(StorageError) as raised:
        unreachable.exists("tsk_a.mp4")
    assert raised.value.public_message == "cannot read the stored file: the object store cannot be reached"
    assert SECRET_KEY not in raised.value.message
    missing = S3Storage("no-such-bucket", staging_dir=tmp_path / "other", endpoint_url=s3_endpoint)
    with pytest.raises(StorageError) as raised:
        missing.write_bytes(b"x", "uploads/file_a")
    assert raised.value.public_message == "cannot store the file: the object store refused it (NoSuchBucket)"
    assert SECRET_KEY not in raised.value.message


# A whole server on a bucket ---------------------------------------------------------------------------


def test_a_server_on_a_bucket_runs_the_tiny_app_and_its_link_downloads_the_mp4(
    settings: Settings, warm: WarmModels, tmp_path: Path, s3_endpoint: str, bucket: str, s3_admin: Any
) -> None:
    bucketed = s3_settings(tmp_path, s3_endpoint, bucket)
    served = server_settings(settings, **{name: getattr(bucketed, name) for name in S3_FIELDS})
    server = LiveServer(served, warm).start()
    try:
        with server.client() as api:
            png = base64.b64decode(png_data_uri(90, 160).split(",", 1)[1])
            upload = api.post("/v1/files", files={"file": ("portrait.png", png, "image/png")}).json()
            assert upload["url"].startswith(s3_endpoint)  # the bucket serves uploads itself
            assert httpx.get(upload["url"]).content == png
            task = api.post(
                "/v1/apps/kinema/tiny/run", json={"prompt": "zoom", "image": upload["id"], "duration": 0.5}
            ).json()  # the worker reads the image from the bucket (local_file) and stores the MP4 there
        assert task["status"] == "completed", task
        link = task["output"]["video"]
        assert link.startswith(server.url)  # the API's signed link, which hands the client to the bucket
        hop = httpx.get(link)
        assert hop.status_code == 307 and hop.headers["location"].startswith(s3_endpoint)
        video = httpx.get(link, follow_redirects=True)
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
        assert video.headers["content-disposition"] == f'inline; filename="{task["id"]}.mp4"'
        assert len(video.content) == task["output_meta"]["size_bytes"]
        path = tmp_path / "from-bucket.mp4"
        path.write_bytes(video.content)
        assert_mp4(path, width=720, height=1280, duration=0.5, fps=24, audio=False)
        tail = httpx.get(link, headers={"Range": "bytes=-100"}, follow_redirects=True)
        assert tail.status_code == 206 and tail.content == video.content[-100:]
    finally:
        server.stop()
    assert sorted(names_in(s3_admin, bucket)) == [
        f"kinema/{task['id']}/attempt-1.mp4",  # each start of a task has its own key: retries never collide
        f"kinema/uploads/{upload['id']}",
    ]
    assert list((tmp_path / "staging").iterdir()) == []  # the upload's download and the render's staging
    assert not settings.outputs_dir.exists()  # nothing went to local storage


S3_FIELDS = (
    "storage_backend",
    "s3_bucket",
    "s3_prefix",
    "s3_endpoint_url",
    "s3_region",
    "staging_dir",
)

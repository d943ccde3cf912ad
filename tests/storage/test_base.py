"""The Storage interface's behaviour, the same on every backend: a local directory and an S3 bucket."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from kinema.errors import NotFound, RangeNotSatisfiable, StorageError
from kinema.storage.base import Storage

STORAGE_METHODS = [name for name in vars(Storage) if not name.startswith("_")]
DATA = bytes(range(256)) * 40  # 10240 bytes, each position recognisable


def stored(storage: Storage, key: str = "tsk_a.mp4", data: bytes = DATA) -> str:
    staging = storage.staging_file(".mp4")
    staging.write_bytes(data)
    storage.put(staging, key)
    return key


def read(storage: Storage, key: str, start: int = 0, end: int | None = None) -> bytes:
    with storage.open(key, start, end) as stream:
        return stream.read()


def test_every_backend_has_every_storage_method(storage: Storage) -> None:
    # mypy checks the protocol on the classes; this checks the methods exist at runtime
    assert STORAGE_METHODS and all(callable(getattr(storage, name)) for name in STORAGE_METHODS)


def test_put_stores_the_staging_file_and_removes_it(storage: Storage) -> None:
    staging = storage.staging_file(".mp4")
    staging.write_bytes(DATA)
    assert not storage.exists("tsk_a.mp4")  # being written: not visible under its key
    result = storage.put(staging, "tsk_a.mp4")
    assert (result.key, result.size_bytes) == ("tsk_a.mp4", len(DATA))
    assert not staging.exists()
    assert read(storage, "tsk_a.mp4") == DATA


def test_put_over_an_object_leaves_open_readers_the_whole_old_one(storage: Storage) -> None:
    stored(storage, data=b"old" * 1000)
    with storage.open("tsk_a.mp4") as reader:
        stored(storage, data=b"new" * 2000)
        assert reader.read() == b"old" * 1000
    assert read(storage, "tsk_a.mp4") == b"new" * 2000


@pytest.mark.parametrize("key", ["../escape.mp4", "/abs.mp4", "a/../../b", ""])
def test_keys_cannot_escape_the_root(storage: Storage, key: str) -> None:
    staging = storage.staging_file(".mp4")
    with pytest.raises(StorageError):
        storage.put(staging, key)


@pytest.mark.parametrize("key", ["../escape.mp4", "/abs.mp4", "a/../../b", ""])
def test_no_method_reaches_outside_the_root(storage: Storage, key: str) -> None:
    for call in (storage.exists, storage.stat, storage.open, storage.delete):
        with pytest.raises(StorageError):
            call(key)
    with pytest.raises(StorageError):
        storage.url_for(key, expires_s=60)
    with pytest.raises(StorageError), storage.local_file(key):
        pass


def test_discard_removes_staging(storage: Storage) -> None:
    staging = storage.staging_file(".mp4")
    storage.discard(staging)
    assert not staging.exists()


def test_write_bytes_stores_through_staging(storage: Storage) -> None:
    result = storage.write_bytes(b"png bytes", "uploads/file_a", suffix=".upload")
    assert (result.key, result.size_bytes) == ("uploads/file_a", 9)
    assert read(storage, "uploads/file_a") == b"png bytes"
    probe = storage.staging_file(".probe")
    assert list(probe.parent.iterdir()) == [probe]  # write_bytes left nothing in staging


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, None, DATA),  # the whole object
        (0, 10, DATA[:10]),  # the first bytes
        (1000, 1100, DATA[1000:1100]),  # the middle
        (len(DATA) - 5, None, DATA[-5:]),  # a suffix
        (10, 10 * len(DATA), DATA[10:]),  # an end past the object stops at its end
        (len(DATA), None, b""),  # empty, at the very end
        (500, 500, b""),  # an empty range inside the object
    ],
)
def test_open_reads_byte_ranges(storage: Storage, start: int, end: int | None, expected: bytes) -> None:
    key = stored(storage)
    assert read(storage, key, start, end) == expected


def test_a_range_stream_ends_at_its_range_read_in_small_pieces(storage: Storage) -> None:
    key = stored(storage)
    pieces = []
    with storage.open(key, 100, 1100) as stream:
        while piece := stream.read(64):
            pieces.append(piece)
    assert b"".join(pieces) == DATA[100:1100]
    assert stream.closed


def test_open_refuses_ranges_outside_the_object(storage: Storage) -> None:
    key = stored(storage)
    for start, end in ((len(DATA) + 1, None), (len(DATA) + 1, len(DATA) + 1), (len(DATA) + 1, 10**9)):
        with pytest.raises(RangeNotSatisfiable) as raised:
            storage.open(key, start, end)
        assert raised.value.details == {"size_bytes": len(DATA)}
    with pytest.raises(ValueError):
        storage.open(key, -1)
    with pytest.raises(ValueError):
        storage.open(key, 10, 5)


def test_an_empty_object_reads_as_empty(storage: Storage) -> None:
    key = stored(storage, "uploads/empty", b"")
    assert storage.stat(key).size_bytes == 0
    assert read(storage, key) == read(storage, key, 0, 10) == b""
    with pytest.raises(RangeNotSatisfiable):
        storage.open(key, 1)


def test_reading_a_missing_key_is_not_found(storage: Storage) -> None:
    with pytest.raises(NotFound):
        storage.open("tsk_missing.mp4")
    with pytest.raises(NotFound):
        storage.open("tsk_missing.mp4", 10, 20)
    with pytest.raises(NotFound):
        storage.stat("tsk_missing.mp4")
    with pytest.raises(NotFound), storage.local_file("tsk_missing.mp4"):
        pass
    stored(storage, "uploads/file_a")
    with pytest.raises(NotFound):  # a directory (a key's prefix) is no object
        storage.stat("uploads")


def test_stat_gives_size_time_and_an_etag_that_changes_with_the_bytes(storage: Storage) -> None:
    key = stored(storage)
    info = storage.stat(key)
    assert (info.key, info.size_bytes) == (key, len(DATA))
    assert abs(info.modified - time.time()) < 60
    assert info.etag.startswith('"') and info.etag.endswith('"')
    assert storage.stat(key) == info
    stored(storage, data=b"other")
    assert storage.stat(key).etag != info.etag


def test_exists_and_delete(storage: Storage) -> None:
    assert not storage.exists("tsk_a.mp4")
    assert storage.delete("tsk_a.mp4") is False  # deleting what is not there is no error
    key = stored(storage)
    assert storage.exists(key)
    assert storage.delete(key) is True
    assert not storage.exists(key)
    with pytest.raises(NotFound):
        storage.open(key)


def test_local_file_holds_the_objects_bytes_and_leaves_the_object(storage: Storage) -> None:
    key = stored(storage, "uploads/file_a")
    with storage.local_file(key) as path:
        assert path.read_bytes() == DATA
    assert storage.exists(key)


def test_sweep_removes_a_crashed_process_staging_file_but_keeps_a_live_ones(storage: Storage) -> None:
    mine = storage.staging_file(".mp4")  # this process: alive
    staging_dir = mine.parent
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            host = mine.name.split("~", 1)[0]
            live = staging_dir / f"{host}~{other.pid}~live.mp4"
            live.write_bytes(b"partial")
            assert storage.sweep_staging(3600) == 0  # both writers are running
        finally:
            other.kill()
    crashed = staging_dir / f"{host}~{other.pid}~crashed.mp4"
    crashed.write_bytes(b"partial")
    assert storage.sweep_staging(3600) == 2  # the writer is gone: its files go at once, grace or not
    assert [p.name for p in staging_dir.iterdir()] == [mine.name]


def test_staging_files_are_local_whatever_the_backend(storage: Storage, tmp_path: Path) -> None:
    staging = storage.staging_file(".mp4")
    assert staging.is_file() and staging.stat().st_size == 0
    assert staging.is_relative_to(tmp_path)

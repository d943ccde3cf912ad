from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kinema.errors import NotFound, RangeNotSatisfiable, StorageError
from kinema.storage.base import Storage
from kinema.storage.local import LocalStorage, copy_atomically

STORAGE_METHODS = [name for name in vars(Storage) if not name.startswith("_")]


def test_put_moves_a_finished_file_into_place(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "out")
    staging = storage.staging_file(".mp4")
    staging.write_bytes(b"data")
    stored = storage.put(staging, "abc.mp4")
    assert stored.local_path == storage.path_for("abc.mp4")
    assert stored.local_path is not None and stored.local_path.read_bytes() == b"data"
    assert stored.size_bytes == 4
    assert stored.url.startswith("file://")
    assert not staging.exists()


@pytest.mark.parametrize("key", ["../escape.mp4", "/abs.mp4", "a/../../b", ""])
def test_keys_cannot_escape_the_root(tmp_path: Path, key: str) -> None:
    storage = LocalStorage(tmp_path)
    staging = storage.staging_file(".mp4")
    with pytest.raises(StorageError):
        storage.put(staging, key)


def test_discard_removes_staging(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    staging = storage.staging_file(".mp4")
    storage.discard(staging)
    assert not staging.exists()


def test_copy_atomically_leaves_no_partial_file_on_failure(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        copy_atomically(tmp_path / "missing.mp4", tmp_path / "dest" / "out.mp4")
    assert list((tmp_path / "dest").iterdir()) == []
    source = tmp_path / "src.mp4"
    source.write_bytes(b"x" * 10)
    copy_atomically(source, tmp_path / "dest" / "out.mp4")
    assert (tmp_path / "dest" / "out.mp4").read_bytes() == b"x" * 10


# The Storage interface on a local directory ---------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


DATA = bytes(range(256)) * 40  # 10240 bytes, each position recognisable


def stored(storage: LocalStorage, key: str = "tsk_a.mp4", data: bytes = DATA) -> str:
    staging = storage.staging_file(".mp4")
    staging.write_bytes(data)
    storage.put(staging, key)
    return key


def read(storage: LocalStorage, key: str, start: int = 0, end: int | None = None) -> bytes:
    with storage.open(key, start, end) as stream:
        return stream.read()


def test_local_storage_is_a_storage(storage: LocalStorage) -> None:
    typed: Storage = storage  # mypy checks the protocol; this checks the methods exist at runtime
    assert STORAGE_METHODS and all(callable(getattr(typed, name)) for name in STORAGE_METHODS)


def test_put_renames_the_staging_file_so_no_reader_sees_a_partial_object(storage: LocalStorage) -> None:
    staging = storage.staging_file(".mp4")
    staging.write_bytes(DATA)
    inode = staging.stat().st_ino
    assert not storage.exists("tsk_a.mp4")  # being written: not visible under its key
    storage.put(staging, "tsk_a.mp4")
    assert storage.path_for("tsk_a.mp4").stat().st_ino == inode  # the same file, renamed: no copy
    assert read(storage, "tsk_a.mp4") == DATA


def test_put_over_an_object_leaves_open_readers_the_whole_old_one(storage: LocalStorage) -> None:
    stored(storage, data=b"old" * 1000)
    with storage.open("tsk_a.mp4") as reader:
        stored(storage, data=b"new" * 2000)
        assert reader.read() == b"old" * 1000
    assert read(storage, "tsk_a.mp4") == b"new" * 2000


def test_a_failed_put_stores_nothing(storage: LocalStorage) -> None:
    stored(storage, "taken")  # a file where put needs a directory: storage cannot take the object
    staging = storage.staging_file(".mp4")
    staging.write_bytes(DATA)
    with pytest.raises(StorageError):
        storage.put(staging, "taken/tsk_b.mp4")
    assert not storage.exists("taken/tsk_b.mp4")
    with pytest.raises(StorageError):
        storage.write_bytes(DATA, "taken/file_c", suffix=".upload")
    assert [p.name for p in storage.staging_dir.iterdir()] == [staging.name]  # write_bytes discarded its own


def test_write_bytes_stores_through_staging(storage: LocalStorage) -> None:
    result = storage.write_bytes(b"png bytes", "uploads/file_a", suffix=".upload")
    assert (result.key, result.size_bytes) == ("uploads/file_a", 9)
    assert read(storage, "uploads/file_a") == b"png bytes"
    assert list(storage.staging_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, None, DATA),  # the whole object
        (0, 10, DATA[:10]),  # the first bytes
        (1000, 1100, DATA[1000:1100]),  # the middle
        (len(DATA) - 5, None, DATA[-5:]),  # a suffix
        (10, 10 * len(DATA), DATA[10:]),  # an end past the object stops at its end
        (len(DATA), None, b""),  # empty, at the very end
    ],
)
def test_open_reads_byte_ranges(storage: LocalStorage, start: int, end: int | None, expected: bytes) -> None:
    key = stored(storage)
    assert read(storage, key, start, end) == expected


def test_a_range_stream_ends_at_its_range_read_in_small_pieces(storage: LocalStorage) -> None:
    key = stored(storage)
    pieces = []
    with storage.open(key, 100, 1100) as stream:
        while piece := stream.read(64):
            pieces.append(piece)
    assert b"".join(pieces) == DATA[100:1100]
    assert stream.closed


def test_open_refuses_ranges_outside_the_object(storage: LocalStorage) -> None:
    key = stored(storage)
    with pytest.raises(RangeNotSatisfiable) as raised:
        storage.open(key, len(DATA) + 1)
    assert raised.value.details == {"size_bytes": len(DATA)}
    with pytest.raises(ValueError):
        storage.open(key, -1)
    with pytest.raises(ValueError):
        storage.open(key, 10, 5)


def test_reading_a_missing_key_is_not_found(storage: LocalStorage) -> None:
    with pytest.raises(NotFound):
        storage.open("tsk_missing.mp4")
    with pytest.raises(NotFound):
        storage.stat("tsk_missing.mp4")
    with pytest.raises(NotFound), storage.local_file("tsk_missing.mp4"):
        pass
    stored(storage, "uploads/file_a")
    with pytest.raises(NotFound):  # a directory is no object
        storage.stat("uploads")


def test_stat_gives_size_time_and_an_etag_that_changes_with_the_bytes(storage: LocalStorage) -> None:
    key = stored(storage)
    info = storage.stat(key)
    assert (info.key, info.size_bytes) == (key, len(DATA))
    assert info.modified == pytest.approx(storage.path_for(key).stat().st_mtime)
    assert info.etag.startswith('"') and info.etag.endswith('"')
    assert storage.stat(key) == info
    stored(storage, data=b"other")
    assert storage.stat(key).etag != info.etag


def test_exists_and_delete(storage: LocalStorage) -> None:
    assert not storage.exists("tsk_a.mp4")
    assert storage.delete("tsk_a.mp4") is False  # deleting what is not there is no error
    key = stored(storage)
    assert storage.exists(key)
    assert storage.delete(key) is True
    assert not storage.exists(key)
    with pytest.raises(NotFound):
        storage.open(key)


def test_local_file_is_the_stored_file_itself(storage: LocalStorage) -> None:
    key = stored(storage, "uploads/file_a")
    with storage.local_file(key) as path:
        assert path == storage.path_for(key) and path.read_bytes() == DATA
    assert storage.exists(key)  # nothing to clean up: it was no copy


def test_url_for_is_none_so_the_api_serves_local_files(storage: LocalStorage) -> None:
    key = stored(storage)
    assert storage.url_for(key, expires_s=60, filename="a.mp4", content_type="video/mp4") is None


@pytest.mark.parametrize("key", ["../escape.mp4", "/abs.mp4", "a/../../b", ""])
def test_no_method_reaches_outside_the_root(storage: LocalStorage, key: str) -> None:
    for call in (storage.exists, storage.stat, storage.open, storage.delete):
        with pytest.raises(StorageError):
            call(key)


def test_sweep_removes_a_crashed_process_staging_file_but_keeps_a_live_ones(storage: LocalStorage) -> None:
    mine = storage.staging_file(".mp4")  # this process: alive
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            host = mine.name.split("~", 1)[0]
            live = storage.staging_dir / f"{host}~{other.pid}~live.mp4"
            live.write_bytes(b"partial")
            assert storage.sweep_staging(3600) == 0  # both writers are running
        finally:
            other.kill()
    crashed = storage.staging_dir / f"{host}~{other.pid}~crashed.mp4"
    crashed.write_bytes(b"partial")
    assert storage.sweep_staging(3600) == 2  # the writer is gone: its files go at once, grace or not
    assert [p.name for p in storage.staging_dir.iterdir()] == [mine.name]

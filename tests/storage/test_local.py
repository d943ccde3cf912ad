"""What only the local directory backend does: renames into place, no URLs of its own, file:// links."""

from __future__ import annotations

from pathlib import Path

import pytest

from kinema.errors import StorageError
from kinema.storage.local import LocalStorage, copy_atomically

DATA = bytes(range(256)) * 40  # 10240 bytes, each position recognisable


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


def test_copy_atomically_leaves_no_partial_file_on_failure(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        copy_atomically(tmp_path / "missing.mp4", tmp_path / "dest" / "out.mp4")
    assert list((tmp_path / "dest").iterdir()) == []
    source = tmp_path / "src.mp4"
    source.write_bytes(b"x" * 10)
    copy_atomically(source, tmp_path / "dest" / "out.mp4")
    assert (tmp_path / "dest" / "out.mp4").read_bytes() == b"x" * 10


# What only a local directory does ------------------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


def stored(storage: LocalStorage, key: str = "tsk_a.mp4", data: bytes = DATA) -> str:
    staging = storage.staging_file(".mp4")
    staging.write_bytes(data)
    storage.put(staging, key)
    return key


def test_put_renames_the_staging_file_so_no_reader_sees_a_partial_object(storage: LocalStorage) -> None:
    staging = storage.staging_file(".mp4")
    staging.write_bytes(DATA)
    inode = staging.stat().st_ino
    storage.put(staging, "tsk_a.mp4")
    assert storage.path_for("tsk_a.mp4").stat().st_ino == inode  # the same file, renamed: no copy
    assert storage.path_for("tsk_a.mp4").read_bytes() == DATA


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


def test_stat_time_is_the_files_modification_time(storage: LocalStorage) -> None:
    key = stored(storage)
    assert storage.stat(key).modified == pytest.approx(storage.path_for(key).stat().st_mtime)


def test_local_file_is_the_stored_file_itself(storage: LocalStorage) -> None:
    key = stored(storage, "uploads/file_a")
    with storage.local_file(key) as path:
        assert path == storage.path_for(key) and path.read_bytes() == DATA
    assert storage.exists(key)  # nothing to clean up: it was no copy


def test_url_for_is_none_so_the_api_serves_local_files(storage: LocalStorage) -> None:
    key = stored(storage)
    assert storage.url_for(key, expires_s=60, filename="a.mp4", content_type="video/mp4") is None

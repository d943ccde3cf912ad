from __future__ import annotations

from pathlib import Path

import pytest

from kinema.errors import StorageError
from kinema.storage.local import LocalStorage, copy_atomically


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

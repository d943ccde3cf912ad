from __future__ import annotations

import io
from pathlib import Path

import pytest

from kinema.storage.files import write_atomically


class Broken(io.BytesIO):
    """A stream that fails after its first read, like a connection dropped mid-download."""

    def read(self, size: int | None = -1, /) -> bytes:
        if self.tell():
            raise OSError("connection lost")
        return super().read(4)


def test_write_atomically_leaves_the_target_whole_or_absent(tmp_path: Path) -> None:
    target = tmp_path / "out" / "clip.mp4"
    with pytest.raises(OSError):
        write_atomically(Broken(b"0123456789"), target)
    assert list(target.parent.iterdir()) == []
    write_atomically(io.BytesIO(b"0123456789"), target)
    assert target.read_bytes() == b"0123456789"
    assert [p.name for p in target.parent.iterdir()] == ["clip.mp4"]

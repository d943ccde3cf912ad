from __future__ import annotations

from pathlib import Path

from kinema.settings import Settings
from kinema.storage import open_storage


def test_open_storage_uses_the_configured_directory_and_creates_nothing(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", storage_dir=tmp_path / "store", _env_file=None)  # type: ignore[call-arg]
    storage = open_storage(settings)
    assert not (tmp_path / "store").exists()  # a refused run must leave no directories behind
    storage.write_bytes(b"x", "uploads/file_a")
    assert (tmp_path / "store" / "uploads" / "file_a").read_bytes() == b"x"

"""Local-directory storage: outputs are renamed into place, so a reader never sees half a file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath

from kinema.errors import StorageError
from kinema.storage.base import StoredObject


def _safe_key(key: str) -> PurePosixPath:
    path = PurePosixPath(key)
    if path.is_absolute() or not path.parts or any(part in ("..", "") for part in path.parts):
        raise StorageError(f"invalid storage key {key!r}")
    return path


class LocalStorage:
    """Files under a root directory; staging files live in root/.staging on the same filesystem."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.staging_dir = self.root / ".staging"

    def staging_file(self, suffix: str) -> Path:
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(suffix=suffix, dir=self.staging_dir)
        os.close(fd)
        return Path(name)

    def put(self, source: Path, key: str) -> StoredObject:
        target = self.root.joinpath(*_safe_key(key).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(source, target)
        return StoredObject(key=key, size_bytes=target.stat().st_size, url=target.as_uri(), local_path=target)

    def discard(self, staging: Path) -> None:
        staging.unlink(missing_ok=True)

    def path_for(self, key: str) -> Path:
        """The local path of a stored key."""
        return self.root.joinpath(*_safe_key(key).parts)


def copy_atomically(source: Path, target: Path) -> None:
    """Copy a file to target via a temporary sibling and rename, so target is whole or absent."""
    import shutil

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

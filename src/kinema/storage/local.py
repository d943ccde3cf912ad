"""Local-directory storage: outputs are renamed into place, so a reader never sees half a file."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from stat import S_ISREG
from typing import TYPE_CHECKING, BinaryIO

from kinema.errors import NotFound, RangeNotSatisfiable, StorageError
from kinema.storage.base import ObjectInfo, StoredObject
from kinema.storage.files import copy_atomically, is_storage_fault, storage_fault
from kinema.storage.keys import checked_key
from kinema.storage.staging import StagingDir

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

# Shared helpers that used to live here; importers of kinema.storage.local keep working.
__all__ = ["LocalStorage", "copy_atomically", "is_storage_fault", "storage_fault"]


class LocalStorage:
    """Files under a root directory; staging files live in root/.staging on the same filesystem."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.staging_dir = self.root / ".staging"  # on the same filesystem, so put is a rename
        self._staging = StagingDir(self.staging_dir)

    def staging_file(self, suffix: str) -> Path:
        """A fresh empty file in the staging directory, named for this host and process; StorageError."""
        return self._staging.new_file(suffix)

    def put(self, source: Path, key: str) -> StoredObject:
        """Move a finished staging file into place under key (fsync, then rename); StorageError."""
        target = self.path_for(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(source, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(source, target)
            size = target.stat().st_size
        except OSError as exc:
            raise storage_fault(exc, "cannot store the file") from exc
        return StoredObject(key=key, size_bytes=size, url=target.as_uri(), local_path=target)

    def write_bytes(self, data: bytes, key: str, *, suffix: str = "") -> StoredObject:
        """Store bytes under key through a staging file; StorageError when storage cannot take them."""
        staging = self.staging_file(suffix)
        try:
            staging.write_bytes(data)
        except OSError as exc:
            self.discard(staging)
            raise storage_fault(exc, "cannot write the file") from exc
        try:
            return self.put(staging, key)
        except BaseException:
            self.discard(staging)
            raise

    def discard(self, staging: Path) -> None:
        """Remove a staging file (a failure to remove it is left to the next start's sweep)."""
        self._staging.discard(staging)

    def sweep_staging(self, grace_s: float) -> int:
        """Remove staging files a crashed process left behind (see StagingDir.sweep); the number removed."""
        return self._staging.sweep(grace_s)

    def delete(self, key: str) -> bool:
        """Remove a stored file; whether there was one; StorageError when it cannot be removed."""
        try:
            self.path_for(key).unlink()
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise storage_fault(exc, "cannot delete the file") from exc
        return True

    def exists(self, key: str) -> bool:
        """Whether a file is stored under key."""
        return self.path_for(key).is_file()

    def stat(self, key: str) -> ObjectInfo:
        """Size, modification time and an ETag in Starlette's FileResponse form (clients' validators hold)."""
        path = self.path_for(key)
        try:
            status = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise _missing(key) from None
        except OSError as exc:
            raise _read_fault(exc) from exc
        if not S_ISREG(status.st_mode):  # a directory under a key is no stored object
            raise _missing(key)
        validator = f"{status.st_mtime}-{status.st_size}".encode()
        etag = f'"{hashlib.md5(validator, usedforsecurity=False).hexdigest()}"'
        return ObjectInfo(key=key, size_bytes=status.st_size, modified=status.st_mtime, etag=etag)

    def open(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        """Bytes [start, end) of a stored file as a stream; NotFound, RangeNotSatisfiable, ValueError."""
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"invalid byte range [{start}, {end})")
        try:
            handle = self.path_for(key).open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise _missing(key) from None
        except OSError as exc:
            raise _read_fault(exc) from exc
        try:
            size = os.fstat(handle.fileno()).st_size
            if start > size:
                raise RangeNotSatisfiable(size)
            stop = size if end is None else min(end, size)
            if start == 0 and stop == size:
                return handle
            handle.seek(start)
            return io.BufferedReader(_Window(handle, stop - start))
        except BaseException:
            handle.close()
            raise

    @contextlib.contextmanager
    def local_file(self, key: str) -> Iterator[Path]:
        """The stored file itself (no copy): the block must only read it; NotFound when absent."""
        path = self.path_for(key)
        if not path.is_file():
            raise _missing(key)
        yield path

    def url_for(
        self, key: str, *, expires_s: int, filename: str | None = None, content_type: str | None = None
    ) -> str | None:
        """None: a local directory has no URL of its own, so the API's signed /files route serves it."""
        checked_key(key)  # a bad key is refused here as by every other method (and every backend)
        return None

    def path_for(self, key: str) -> Path:
        """The local path of a stored key (this backend's own business: callers use the Storage methods)."""
        return self.root.joinpath(*checked_key(key).parts)


class _Window(io.RawIOBase):
    """The next length bytes of an open file, as a stream that ends there (and closes the file)."""

    def __init__(self, handle: BinaryIO, length: int) -> None:
        super().__init__()
        self._handle, self._left = handle, length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self._handle.read(min(len(view), self._left))
        view[: len(data)] = data
        self._left -= len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._handle.close()
        super().close()


def _missing(key: str) -> NotFound:
    return NotFound(f"nothing is stored under {key!r}")


def _read_fault(exc: OSError) -> StorageError:
    """A StorageError for a failed read, naming no server path in its public message."""
    public = f"cannot read the stored file: {exc.strerror or type(exc).__name__}"
    return StorageError(f"cannot read the stored file: {exc}", public_message=public)

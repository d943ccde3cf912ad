"""Local-file helpers every backend and caller share: filesystem faults as StorageError, atomic copies.

Staging files are local whatever the backend, so a full or read-only disk is reported the same way.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from kinema.errors import StorageError

_FAULTS = {
    errno.EROFS: "the storage is read-only",
    errno.ENOSPC: "the storage is full",
    errno.EDQUOT: "the storage quota is used up",
    errno.EACCES: "the storage is not writable (permission denied)",
    errno.EPERM: "the storage is not writable (permission denied)",
}


def is_storage_fault(exc: OSError) -> bool:
    """Whether a filesystem error means storage cannot take more (read-only, full, not writable)."""
    return exc.errno in _FAULTS


def storage_fault(exc: OSError, doing: str) -> StorageError:
    """A StorageError for a failed filesystem call, with a public message that names no server path."""
    reason = _FAULTS.get(exc.errno or 0, f"the storage failed ({exc.strerror or type(exc).__name__})")
    return StorageError(f"{doing}: {reason}: {exc}", public_message=f"{doing}: {reason}")


def write_atomically(source: BinaryIO, target: Path) -> None:
    """Write a stream's bytes to target via a temporary sibling and rename, so target is whole or absent."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            shutil.copyfileobj(source, handle)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def copy_atomically(source: Path, target: Path) -> None:
    """Copy a file to target via a temporary sibling and rename, so target is whole or absent."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as stream:
        write_atomically(stream, target)


def content_disposition(kind: str, filename: str) -> str:
    """Content-Disposition as the API's /files route (Starlette) writes it: RFC 5987 filename* when needed."""
    quoted = quote(filename)
    if quoted != filename:
        return f"{kind}; filename*=utf-8''{quoted}"
    return f'{kind}; filename="{filename}"'

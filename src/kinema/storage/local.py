"""Local-directory storage: outputs are renamed into place, so a reader never sees half a file."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import tempfile
import time
from pathlib import Path, PurePosixPath

from kinema.errors import StorageError
from kinema.storage.base import StoredObject

log = logging.getLogger(__name__)

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


def _owner_tag() -> str:
    """The host and process that own a staging file, in its name (so a restart can tell its own orphans)."""
    host = "".join(c if c.isalnum() or c in "-." else "_" for c in socket.gethostname())[:64] or "host"
    return f"{host}~{os.getpid()}~"


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
        """A fresh empty file in the staging directory, named for this host and process; StorageError."""
        try:
            self.staging_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=_owner_tag(), suffix=suffix, dir=self.staging_dir)
        except OSError as exc:
            raise storage_fault(exc, "cannot create a staging file") from exc
        os.close(fd)
        return Path(name)

    def put(self, source: Path, key: str) -> StoredObject:
        """Move a finished staging file into place under key (fsync, then rename); StorageError."""
        target = self.root.joinpath(*_safe_key(key).parts)
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
        with contextlib.suppress(OSError):
            staging.unlink(missing_ok=True)

    def sweep_staging(self, grace_s: float) -> int:
        """Remove staging files a crashed process left behind; the number removed.

        A file is an orphan when this host's process that made it is gone, or, whoever made it, when it
        has not changed for grace_s: servers on other hosts may share this directory, and only age tells
        their live files from their orphans.
        """
        try:
            entries = list(os.scandir(self.staging_dir))
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("cannot read the staging directory: %s", exc)
            return 0
        host_tag, now, removed = _owner_tag().split("~", 1)[0], time.time(), 0
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                host, _, rest = entry.name.partition("~")
                pid_text = rest.partition("~")[0]
                dead_here = host == host_tag and pid_text.isdigit() and not _process_alive(int(pid_text))
                if dead_here or now - entry.stat(follow_symlinks=False).st_mtime > grace_s:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue  # another server swept it first
            except OSError as exc:
                log.warning("cannot remove staging file %s: %s", entry.name, exc)
        if removed:
            log.info("removed %d staging file(s) left by stopped processes", removed)
        return removed

    def path_for(self, key: str) -> Path:
        """The local path of a stored key."""
        return self.root.joinpath(*_safe_key(key).parts)


def _process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists but belongs to someone else
    return True


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

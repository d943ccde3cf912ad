"""Staging: local files a run writes before storage takes them, named for the host and process that made them.

Every backend stages on local disk (a bucket cannot be written a piece at a time and then renamed), so the
naming, the clean-up after a failure and the sweep of a crash's leftovers live here, once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import time
from pathlib import Path

from kinema.storage.files import storage_fault

log = logging.getLogger(__name__)


def owner_tag() -> str:
    """The host and process that own a staging file, in its name (so a restart can tell its own orphans)."""
    host = "".join(c if c.isalnum() or c in "-." else "_" for c in socket.gethostname())[:64] or "host"
    return f"{host}~{os.getpid()}~"


class StagingDir:
    """One local directory of staging files; created on the first file, not before."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def new_file(self, suffix: str) -> Path:
        """A fresh empty file in the directory, named for this host and process; StorageError."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=owner_tag(), suffix=suffix, dir=self.path)
        except OSError as exc:
            raise storage_fault(exc, "cannot create a staging file") from exc
        os.close(fd)
        return Path(name)

    def discard(self, staging: Path) -> None:
        """Remove a staging file (a failure to remove it is left to the next start's sweep)."""
        with contextlib.suppress(OSError):
            staging.unlink(missing_ok=True)

    def sweep(self, grace_s: float) -> int:
        """Remove staging files a crashed process left behind; the number removed.

        A file is an orphan when this host's process that made it is gone, or, whoever made it, when it
        has not changed for grace_s: servers on other hosts may share this directory, and only age tells
        their live files from their orphans.
        """
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("cannot read the staging directory: %s", exc)
            return 0
        host_tag, now, removed = owner_tag().split("~", 1)[0], time.time(), 0
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                host, _, rest = entry.name.partition("~")
                pid_text = rest.partition("~")[0]
                dead_here = host == host_tag and pid_text.isdigit() and not process_alive(int(pid_text))
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


def process_alive(pid: int) -> bool:
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

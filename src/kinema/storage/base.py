"""Where finished outputs go: an interface so local disk and S3 are interchangeable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class StoredObject:
    """A stored output: its key, size, and where a client can get it."""

    key: str
    size_bytes: int
    url: str
    local_path: Path | None = None


class Storage(Protocol):
    """Puts finished files in place atomically; never exposes a partial object."""

    def staging_file(self, suffix: str) -> Path:
        """A fresh temporary path to write into; discarded unless put() succeeds."""
        ...

    def put(self, source: Path, key: str) -> StoredObject:
        """Move a finished file into storage under key, atomically."""
        ...

    def discard(self, staging: Path) -> None:
        """Remove a staging file after a failure."""
        ...

"""Where finished outputs and uploads go: one interface so local disk and S3 are interchangeable.

Writes go through a local staging file: a run writes into staging_file(), then put() moves the finished
file into storage under its key in one step, so nobody ever reads half an object. Reads name the key and
an optional byte range. Keys come from kinema.storage.keys; the files table records each object's key, so
readers use the stored key rather than building it again.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class StoredObject:
    """A stored output: its key, size, and where a client can get it."""

    key: str
    size_bytes: int
    url: str
    local_path: Path | None = None


@dataclass(frozen=True)
class ObjectInfo:
    """What storage knows of an object without reading it: its size, last change and a validator.

    etag is a strong validator (quoted, as HTTP sends it) that changes whenever the bytes may have;
    HTTP's ETag, Last-Modified and If-Range are answered from these fields.
    """

    key: str
    size_bytes: int
    modified: float  # Unix time of the last write
    etag: str


class Storage(Protocol):
    """Puts finished files in place atomically; never exposes a partial object."""

    # Staging: local files a run writes before they are stored.

    def staging_file(self, suffix: str) -> Path:
        """A fresh empty local file to write into; discarded unless put() succeeds; StorageError."""
        ...

    def discard(self, staging: Path) -> None:
        """Remove a staging file after a failure (what cannot be removed is left to the next sweep)."""
        ...

    def sweep_staging(self, grace_s: float) -> int:
        """Remove staging files that crashed processes left behind; the number removed.

        Run once at start by every process that writes (the server, the runner). A file of a live process
        is kept; one whose owner cannot be checked from here goes only when unchanged for grace_s.
        """
        ...

    # Writing.

    def put(self, source: Path, key: str) -> StoredObject:
        """Move a finished staging file into storage under key, atomically; StorageError."""
        ...

    def write_bytes(self, data: bytes, key: str, *, suffix: str = "") -> StoredObject:
        """Store bytes under key (through a staging file, so just as atomically); StorageError."""
        ...

    def delete(self, key: str) -> bool:
        """Remove a stored object; whether there was one (deleting a missing key is not an error)."""
        ...

    # Reading.

    def exists(self, key: str) -> bool:
        """Whether an object is stored under key."""
        ...

    def stat(self, key: str) -> ObjectInfo:
        """The object's size, last change and validator; NotFound when nothing is stored under key."""
        ...

    def open(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        """A binary stream of bytes [start, end) of the object (end None or past the size: to its end).

        NotFound when nothing is stored under key; RangeNotSatisfiable when start is past the end;
        ValueError for a negative start or an end before start. The caller closes the stream.
        """
        ...

    def local_file(self, key: str) -> AbstractContextManager[Path]:
        """A local path holding the object's bytes while the block runs (for readers that need a file).

        A local backend yields the stored file itself: the block must only read it. A remote backend
        downloads into a staging file and discards it afterwards.
        """
        ...

    def url_for(
        self, key: str, *, expires_s: int, filename: str | None = None, content_type: str | None = None
    ) -> str | None:
        """A URL a client can fetch the object from directly, valid for expires_s; None: serve it via the API.

        None means the API's signed /files route streams the object (local disk). A bucket returns a
        presigned URL; filename and content_type let it answer with the headers /files would send.
        """
        ...

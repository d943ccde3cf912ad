"""Object keys, built here and nowhere else.

A key is written once, when the object is stored, and recorded in the files table; readers use the
recorded key. So a new key scheme applies to new objects only and older ones are still found.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from kinema.errors import StorageError


def upload_key(file_id: str) -> str:
    """Where an uploaded input file lives in storage."""
    return f"uploads/{file_id}"


def output_key(task_id: str, attempt: int | None = None) -> str:
    """Where a task's MP4 lives in storage.

    Without attempt: one key per task, as kinema has always stored outputs. With an attempt number each
    run of the task gets its own key, so a retry never overwrites (or deletes) what an earlier one stored.
    """
    if attempt is None:
        return f"{task_id}.mp4"
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, not {attempt}")
    return f"{task_id}/attempt-{attempt}.mp4"


def checked_key(key: str) -> PurePosixPath:
    """A key as a relative path that stays inside storage; StorageError for an empty, absolute or ../ key."""
    path = PurePosixPath(key)
    if path.is_absolute() or not path.parts or any(part in ("..", "") for part in path.parts):
        raise StorageError(f"invalid storage key {key!r}")
    return path

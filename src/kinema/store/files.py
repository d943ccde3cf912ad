"""Files: uploaded inputs and produced outputs, recorded with the storage key that holds their bytes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kinema.domain.tasks import new_id, utcnow
from kinema.store.db import Database, aware, owned
from kinema.store.schema import FileRow


@dataclass(frozen=True)
class StoredFile:
    id: str
    owner_id: str
    purpose: str
    key: str
    filename: str
    content_type: str
    size_bytes: int
    created_at: datetime


def file_from_row(row: FileRow) -> StoredFile:
    return StoredFile(
        id=row.id,
        owner_id=row.owner_id,
        purpose=row.purpose,
        key=row.key,
        filename=row.filename,
        content_type=row.content_type,
        size_bytes=row.size_bytes,
        created_at=aware(row.created_at) or utcnow(),
    )


class FileRepo:
    """Records of stored files; the bytes themselves live in storage."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self,
        *,
        owner: str,
        purpose: str,
        key: str,
        filename: str,
        content_type: str,
        size_bytes: int,
        file_id: str | None = None,
    ) -> StoredFile:
        row = FileRow(
            id=file_id or new_id("file"),
            owner_id=owner,
            purpose=purpose,
            key=key,
            filename=filename,
            content_type=content_type,
            size_bytes=size_bytes,
            created_at=utcnow(),
        )
        with self.db.session() as session:
            session.add(row)
        return file_from_row(row)

    def get(self, file_id: str, *, owner: str | None = None) -> StoredFile:
        """The file, if it exists and (when owner is given) belongs to owner; otherwise NotFound."""
        with self.db.session() as session:
            return file_from_row(owned(session.get(FileRow, file_id), owner, "file", file_id))

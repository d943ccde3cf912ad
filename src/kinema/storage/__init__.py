"""Storage for outputs and uploads: the Storage interface, and open_storage to build the configured one."""

from __future__ import annotations

from kinema.errors import StorageError
from kinema.settings import Settings
from kinema.storage.base import ObjectInfo, Storage, StoredObject
from kinema.storage.local import LocalStorage

__all__ = ["ObjectInfo", "Storage", "StoredObject", "open_storage"]


def open_storage(settings: Settings) -> Storage:
    """The storage backend the settings choose: a local directory (KINEMA_STORAGE_DIR) or a bucket.

    The only place that names a backend; everything else is typed against Storage. Nothing is created
    on disk or in a bucket until something is written; boto3 is imported only when a bucket is used.
    """
    if settings.storage_backend == "s3":
        try:
            from kinema.storage.s3 import S3Storage
        except ModuleNotFoundError as exc:
            if exc.name not in ("boto3", "botocore", "s3transfer"):
                raise
            raise StorageError("KINEMA_STORAGE=s3 needs boto3: pip install 'kinema[s3]'") from None
        return S3Storage.from_settings(settings)
    return LocalStorage(settings.outputs_dir)

"""Storage for outputs and uploads: the Storage interface, and open_storage to build the configured one."""

from __future__ import annotations

from kinema.settings import Settings
from kinema.storage.base import ObjectInfo, Storage, StoredObject
from kinema.storage.local import LocalStorage

__all__ = ["ObjectInfo", "Storage", "StoredObject", "open_storage"]


def open_storage(settings: Settings) -> Storage:
    """The storage backend the settings choose: today always a local directory (KINEMA_STORAGE_DIR).

    The only place that names a backend; everything else is typed against Storage. Nothing is created
    on disk until something is written.
    """
    return LocalStorage(settings.outputs_dir)

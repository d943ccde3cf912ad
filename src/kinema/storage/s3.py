"""S3-compatible bucket storage (AWS S3, MinIO, R2): uploads from local staging, ranged GETs, presigned URLs.

A bucket has no rename, so put uploads the finished staging file: in one PUT, or above the multipart
threshold in parts that S3 shows as an object only once the upload completes (a failed one is aborted). So
no reader ever sees part of an object, as with the local directory. Credentials come from boto3's own chain
(environment, profile, instance role) and are never logged; public messages name neither them, nor the
bucket, nor the endpoint.
"""

from __future__ import annotations

import contextlib
import io
import logging
import mimetypes
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
)

from kinema.errors import NotFound, RangeNotSatisfiable, StorageError
from kinema.settings import Settings
from kinema.storage.base import ObjectInfo, StoredObject
from kinema.storage.files import content_disposition, storage_fault
from kinema.storage.keys import checked_key
from kinema.storage.staging import StagingDir

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

MAX_URL_TTL_S = 7 * 24 * 3600  # the longest a SigV4 presigned URL may be valid
READ_BUFFER = 64 * 1024
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})  # not NoSuchBucket: that is a setup fault


class S3Storage:
    """Objects in a bucket under a key prefix; staging files in a local directory."""

    def __init__(
        self,
        bucket: str,
        *,
        staging_dir: Path,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: Literal["auto", "path", "virtual"] = "auto",
        multipart_threshold_bytes: int = 64 * 1024 * 1024,
        multipart_part_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.staging_dir = staging_dir
        self._staging = StagingDir(staging_dir)
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": addressing_style},
            retries={"mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
        )
        # A client is thread-safe (a session is not): one per storage, shared by every worker thread.
        self.client: S3Client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold_bytes,
            multipart_chunksize=multipart_part_bytes,
            max_concurrency=4,
            preferred_transfer_client="classic",  # s3transfer: aborts a multipart upload that fails
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        """The bucket the settings name (KINEMA_S3_*); StorageError without one."""
        if not settings.s3_bucket:
            raise StorageError("KINEMA_STORAGE=s3 needs a bucket: set KINEMA_S3_BUCKET")
        return cls(
            settings.s3_bucket,
            staging_dir=settings.s3_staging_dir,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            addressing_style=settings.s3_addressing_style,
            multipart_threshold_bytes=settings.s3_multipart_threshold_bytes,
            multipart_part_bytes=settings.s3_multipart_part_bytes,
        )

    # Staging: local, as for every backend.

    def staging_file(self, suffix: str) -> Path:
        """A fresh empty file in the local staging directory; StorageError."""
        return self._staging.new_file(suffix)

    def discard(self, staging: Path) -> None:
        """Remove a staging file (a failure to remove it is left to the next start's sweep)."""
        self._staging.discard(staging)

    def sweep_staging(self, grace_s: float) -> int:
        """Remove a crash's staging files and abort its multipart uploads older than grace_s; how many."""
        return self._staging.sweep(grace_s) + self._abort_stale_uploads(grace_s)

    # Writing.

    def put(self, source: Path, key: str) -> StoredObject:
        """Upload a finished staging file under key (in parts when large), then remove it; StorageError.

        The object appears whole or not at all: a failed multipart upload is aborted by s3transfer.
        """
        name = self.object_name(key)
        try:
            size = source.stat().st_size
            self.client.upload_file(
                str(source),
                self.bucket,
                name,
                ExtraArgs={"ContentType": mimetypes.guess_type(key)[0] or "application/octet-stream"},
                Config=self.transfer,
            )
        except (BotoCoreError, ClientError, Boto3Error) as exc:  # before OSError: some timeouts are both
            raise _fault(exc, "cannot store the file") from exc
        except OSError as exc:
            raise storage_fault(exc, "cannot store the file") from exc
        self._staging.discard(source)
        return StoredObject(key=key, size_bytes=size, url=f"s3://{self.bucket}/{name}")

    def write_bytes(self, data: bytes, key: str, *, suffix: str = "") -> StoredObject:
        """Store bytes under key through a staging file; StorageError when storage cannot take them."""
        staging = self.staging_file(suffix)
        try:
            staging.write_bytes(data)
            return self.put(staging, key)
        except OSError as exc:
            raise storage_fault(exc, "cannot write the file") from exc
        finally:
            self.discard(staging)  # put removed it when it succeeded

    def delete(self, key: str) -> bool:
        """Remove the object; whether there was one; StorageError when the bucket refuses."""
        if not self.exists(key):
            return False
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.object_name(key))
        except (BotoCoreError, ClientError) as exc:
            raise _fault(exc, "cannot delete the file") from exc
        return True

    # Reading.

    def exists(self, key: str) -> bool:
        """Whether an object is stored under key (a HEAD request)."""
        try:
            self.stat(key)
        except NotFound:
            return False
        return True

    def stat(self, key: str) -> ObjectInfo:
        """Size, last change and the bucket's ETag, from a HEAD request; NotFound when absent."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.object_name(key))
        except ClientError as exc:
            if _is_missing(exc):
                raise _missing(key) from None
            raise _fault(exc, "cannot read the stored file") from exc
        except BotoCoreError as exc:
            raise _fault(exc, "cannot read the stored file") from exc
        etag = head["ETag"] if head["ETag"].startswith('"') else f'"{head["ETag"]}"'
        return ObjectInfo(
            key=key, size_bytes=head["ContentLength"], modified=head["LastModified"].timestamp(), etag=etag
        )

    def open(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        """Bytes [start, end) as a stream from one ranged GET; NotFound, RangeNotSatisfiable, ValueError."""
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"invalid byte range [{start}, {end})")
        if end == start:  # HTTP has no empty range: check start against the size instead
            return self._empty_at(key, start)
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": self.object_name(key)}
        if start or end is not None:
            request["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            response = self.client.get_object(**request)
        except ClientError as exc:
            if _is_missing(exc):
                raise _missing(key) from None
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 416:
                # S3 refuses a range that starts at the end as well as past it; the former reads as empty
                size = self.stat(key).size_bytes
                if start > size:
                    raise RangeNotSatisfiable(size) from None
                if start == size:
                    return io.BytesIO(b"")
            raise _fault(exc, "cannot read the stored file") from exc  # (or it changed in between)
        except BotoCoreError as exc:
            raise _fault(exc, "cannot read the stored file") from exc
        return io.BufferedReader(_Body(response["Body"]), buffer_size=READ_BUFFER)

    @contextlib.contextmanager
    def local_file(self, key: str) -> Iterator[Path]:
        """The object downloaded into a staging file, removed when the block ends; NotFound when absent."""
        name = self.object_name(key)
        staging = self.staging_file(Path(key).suffix)
        try:
            try:
                self.client.download_file(self.bucket, name, str(staging), Config=self.transfer)
            except ClientError as exc:
                if _is_missing(exc):
                    raise _missing(key) from None
                raise _fault(exc, "cannot read the stored file") from exc
            except (BotoCoreError, Boto3Error) as exc:
                raise _fault(exc, "cannot read the stored file") from exc
            except OSError as exc:
                raise storage_fault(exc, "cannot download the stored file") from exc
            yield staging
        finally:
            self.discard(staging)

    def url_for(
        self, key: str, *, expires_s: int, filename: str | None = None, content_type: str | None = None
    ) -> str:
        """A presigned GET URL valid for expires_s (at most a week), answering with these headers."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.object_name(key)}
        if filename is not None:  # the headers the API's /files route would send
            params["ResponseContentDisposition"] = content_disposition("inline", filename)
        if content_type is not None:
            params["ResponseContentType"] = content_type
        try:
            return str(
                self.client.generate_presigned_url(
                    "get_object", Params=params, ExpiresIn=max(1, min(expires_s, MAX_URL_TTL_S))
                )
            )
        except BotoCoreError as exc:
            raise _fault(exc, "cannot sign a link to the file") from exc

    def object_name(self, key: str) -> str:
        """The object's name in the bucket: the prefix and the checked key; StorageError for a bad key."""
        return self.prefix + "/".join(checked_key(key).parts)

    # Helpers.

    def _empty_at(self, key: str, start: int) -> BinaryIO:
        """An empty stream at start; RangeNotSatisfiable when start is past the end, NotFound when absent."""
        size = self.stat(key).size_bytes
        if start > size:
            raise RangeNotSatisfiable(size)
        return io.BytesIO(b"")

    def _abort_stale_uploads(self, grace_s: float) -> int:
        """Abort multipart uploads under the prefix begun more than grace_s ago (a killed process's)."""
        cutoff, aborted = datetime.now(UTC) - timedelta(seconds=grace_s), 0
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] <= cutoff:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        aborted += 1
        except (BotoCoreError, ClientError) as exc:
            log.warning("cannot look for interrupted uploads in the bucket: %s", exc)
        if aborted:
            log.info("aborted %d multipart upload(s) left by stopped processes", aborted)
        return aborted


class _Body(io.RawIOBase):
    """A GET's streaming body as a raw stream; a dropped connection surfaces as OSError, as a disk's would."""

    def __init__(self, body: StreamingBody) -> None:
        super().__init__()
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        try:
            return int(self._body.readinto(buffer))  # type: ignore[arg-type]  # the stubs say IO; it is a buffer
        except BotoCoreError as exc:
            raise OSError(f"reading the stored object failed: {exc}") from exc

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def _is_missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in _MISSING_CODES


def _missing(key: str) -> NotFound:
    return NotFound(f"nothing is stored under {key!r}")


def _fault(exc: Exception, doing: str) -> StorageError:
    """A StorageError for a failed bucket call; the public message gives the reason, never the endpoint."""
    cause = exc if isinstance(exc, ClientError) else exc.__cause__ or exc.__context__
    if isinstance(cause, ClientError):
        reason = f"the object store refused it ({cause.response.get('Error', {}).get('Code', 'unknown')})"
    elif isinstance(exc, NoCredentialsError):
        reason = "no credentials for the object store"
    elif isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        reason = "the object store cannot be reached"
    else:
        reason = f"the object store failed ({type(exc).__name__})"
    return StorageError(f"{doing}: {exc}", public_message=f"{doing}: {reason}")

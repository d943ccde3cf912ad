"""The service every front end goes through: submit, read, list and cancel tasks."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from kinema.apps.registry import App
from kinema.apps.schema import VideoInput
from kinema.billing.pricing import bill, to_micros
from kinema.domain.sizing import plan_frames
from kinema.domain.tasks import Task, TaskStatus, new_id, utcnow
from kinema.errors import BadRequest, ImageTooLarge, InvalidImage, InvalidInput, KinemaError, NotFound
from kinema.media.images import EXTENSIONS, MIME_TYPES, check_image_url, read_data_uri
from kinema.settings import Settings
from kinema.storage.local import LocalStorage
from kinema.store import Store
from kinema.store.files import StoredFile
from kinema.store.tasks import Submission, TaskPage
from kinema.store.webhooks import WEBHOOK_EVENTS
from kinema.tasks.queue import TaskQueue
from kinema.tasks.runner import upload_key
from kinema.tasks.webhooks import check_webhook_url
from kinema.tasks.worker import image_limits

REMOTE_IMAGE_PREFIXES = ("https://", "http://", "data:", "file_")


def new_file_id() -> str:
    return new_id("file")


DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
TEMPORAL_MULTIPLE = 8  # LTX-2 generates 8k+1 frames; the delivered count is what is billed


def parse_duration(text: str) -> timedelta:
    """A Cancel-After value: seconds ("90") or units ("30s", "5m", "1h30m", "250ms"); BadRequest otherwise."""
    value = text.strip().lower()
    try:
        if value and value.replace(".", "", 1).isdigit():
            seconds = float(value)
        else:
            parts = DURATION_PART.findall(value)
            if not parts or "".join(n + u for n, u in parts) != value:
                raise ValueError(value)
            seconds = sum(float(n) * UNIT_SECONDS[u] for n, u in parts)
    except ValueError:
        raise BadRequest(f"Cancel-After {text!r} is not a duration such as 90, 30s, 5m or 1h30m") from None
    if seconds <= 0 or seconds > 7 * 24 * 3600:
        raise BadRequest("Cancel-After must be more than 0 and at most 7 days")
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class RunOptions:
    """What a run request adds to its input: webhook, deadline, idempotency."""

    webhook: str | None = None
    webhook_events: tuple[str, ...] | None = None
    cancel_after: str | None = None
    idempotency_key: str | None = None


def max_cost_micros(app: App, input: VideoInput) -> int:
    """The most a run can cost: the app's price for every requested frame at the requested configuration."""
    frames = plan_frames(input.duration, app.fps, TEMPORAL_MULTIPLE).frames
    billing = bill(
        app.pricing, resolution=input.resolution, has_audio=input.generate_audio, frames=frames, fps=app.fps
    )
    return to_micros(billing.cost)


def image_error(exc: InvalidImage) -> KinemaError:
    """An image refusal at submit, as a 4xx naming the field: 413 for an oversized one, 422 otherwise."""
    kind = type(exc) if isinstance(exc, ImageTooLarge) else InvalidInput
    error = kind(
        f"image: {exc.message}",
        details=[{"field": "image", "type": exc.code, "message": exc.message}],
        public_message=f"image: {exc.public_message}",
    )
    error.code = exc.code  # unsafe_url, invalid_image or image_too_large, as the worker would say
    return error


class TaskService:
    """Submit, read, list and cancel tasks; queued work reaches workers through the queue."""

    def __init__(
        self, store: Store, queue: TaskQueue, settings: Settings, storage: LocalStorage | None = None
    ) -> None:
        self.store, self.queue, self.settings = store, queue, settings
        self.storage = storage or LocalStorage(settings.outputs_dir)

    def submit(
        self, app: App, input: VideoInput, *, owner: str, options: RunOptions | None = None
    ) -> Submission:
        """Queue a validated input with its hold, webhook, deadline and idempotency key.

        Everything that can be checked is checked before the hold and the queue: an uploaded image must
        exist and belong to the owner, an image URL must be well-formed and resolve to public addresses, a
        data: image must decode (it is then stored once as a file, and the task refers to that file),
        and a webhook must point at a public address.
        """
        options = options or RunOptions()
        image_data = self._check_image(input.image, owner)
        events = list(options.webhook_events) if options.webhook_events else None
        if events is not None and (unknown := sorted(set(events) - set(WEBHOOK_EVENTS))):
            raise InvalidInput(f"webhook_events_filter: unknown events {unknown}; use {list(WEBHOOK_EVENTS)}")
        if options.webhook is not None:
            check_webhook_url(options.webhook, allow_private=self.settings.webhook_allow_private)
        deadline: datetime | None = None
        if options.cancel_after is not None:
            deadline = utcnow() + parse_duration(options.cancel_after)
        body = input.model_dump(mode="json", exclude_none=True)
        request = {"app": app.id, "input": body, "webhook": options.webhook, "events": events,
                   "cancel_after": options.cancel_after}  # fmt: skip
        request_hash = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
        if image_data is not None:
            body["image"] = self.store_image(owner, *image_data).id
        submission = self.store.tasks.submit(
            owner=owner,
            app=app.id,
            version=app.version,
            input=body,
            hold_micros=max_cost_micros(app, input) if self.settings.billing_enabled else None,
            currency=app.pricing.currency,
            webhook_url=options.webhook,
            webhook_events=events,
            deadline_at=deadline,
            idempotency_key=options.idempotency_key,
            request_hash=request_hash,
            idempotency_ttl_s=self.settings.idempotency_ttl_s,
        )
        if not submission.replayed:
            self.queue.wake()
        return submission

    def _check_image(self, image: str | None, owner: str) -> tuple[bytes, str] | None:
        """Refuse a bad image reference now; a data: image's bytes and format, to store as a file."""
        if image is None:
            return None
        if not image.startswith(REMOTE_IMAGE_PREFIXES):
            raise InvalidInput(
                "image: must be an https:// URL, a data: URI or an uploaded file id (file_...); "
                "local paths work only in the CLI's local mode",
                details=[{"field": "image", "type": "image_reference", "message": "not a URL or file id"}],
            )
        if image.startswith("file_"):
            try:
                self.store.files.get(image, owner=owner)
            except NotFound:
                raise InvalidInput(
                    f"image: no uploaded file {image!r}",
                    details=[{"field": "image", "type": "file_not_found", "message": "no such file"}],
                ) from None
            return None
        limits = image_limits(self.settings)
        try:
            if image.startswith("data:"):
                return read_data_uri(image, limits)
            check_image_url(image, limits)
        except InvalidImage as exc:
            raise image_error(exc) from None
        return None

    def store_image(self, owner: str, data: bytes, fmt: str) -> StoredFile:
        """An input image stored once per owner and content (a resubmitted data: image reuses its file)."""
        digest = hashlib.sha256(owner.encode() + b"\0" + data).hexdigest()
        file_id = f"file_{digest[:20]}"
        try:
            return self.store.files.get(file_id, owner=owner)
        except NotFound:
            pass
        try:
            return self.add_upload(owner, data, f"image.{EXTENSIONS[fmt]}", MIME_TYPES[fmt], file_id=file_id)
        except Exception:
            try:  # a concurrent submit of the same image stored it first
                return self.store.files.get(file_id, owner=owner)
            except NotFound:
                pass
            raise

    def add_upload(
        self, owner: str, data: bytes, filename: str, content_type: str, *, file_id: str | None = None
    ) -> StoredFile:
        """Store an input file and record it; StorageError (507) when storage cannot take it."""
        file_id = file_id or new_file_id()
        self.storage.write_bytes(data, upload_key(file_id), suffix=".upload")
        return self.store.files.add(
            file_id=file_id,
            owner=owner,
            purpose="input",
            key=upload_key(file_id),
            filename=filename,
            content_type=content_type,
            size_bytes=len(data),
        )

    def get(self, task_id: str, *, owner: str) -> Task:
        return self.store.tasks.get(task_id, owner=owner)

    def list(
        self,
        *,
        owner: str,
        status: Sequence[TaskStatus] = (),
        app: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> TaskPage:
        return self.store.tasks.page(owner=owner, status=status, app=app, limit=limit, cursor=cursor)

    def cancel(self, task_id: str, *, owner: str) -> Task:
        """Cancel queued work at once; running work stops at its next step. Finished tasks: Conflict."""
        return self.queue.request_cancel(task_id, owner=owner)

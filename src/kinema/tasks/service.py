"""The service every front end goes through: submit, read, list and cancel tasks."""

from __future__ import annotations

from collections.abc import Sequence

from kinema.apps.registry import App
from kinema.apps.schema import VideoInput
from kinema.errors import InvalidInput, NotFound
from kinema.store.repo import TaskPage, TaskStore
from kinema.tasks.models import Task, TaskStatus
from kinema.tasks.runner import Runner

REMOTE_IMAGE_PREFIXES = ("https://", "http://", "data:", "file_")


class TaskService:
    def __init__(self, store: TaskStore, runner: Runner | None) -> None:
        self.store, self.runner = store, runner

    def submit(self, app: App, input: VideoInput, *, owner: str) -> Task:
        """Queue a validated input; an uploaded image must exist and belong to the owner."""
        if input.image is not None and not input.image.startswith(REMOTE_IMAGE_PREFIXES):
            raise InvalidInput(
                "image: must be an https:// URL, a data: URI or an uploaded file id (file_...); "
                "local paths work only in the CLI's local mode",
                details=[{"field": "image", "type": "image_reference", "message": "not a URL or file id"}],
            )
        if input.image is not None and input.image.startswith("file_"):
            try:
                self.store.get_file(input.image, owner=owner)
            except NotFound:
                raise InvalidInput(
                    f"image: no uploaded file {input.image!r}",
                    details=[{"field": "image", "type": "file_not_found", "message": "no such file"}],
                ) from None
        task = self.store.create_task(
            owner=owner,
            app=app.id,
            version=app.version,
            input=input.model_dump(mode="json", exclude_none=True),
        )
        if self.runner is not None:
            self.runner.wake()
        return task

    def get(self, task_id: str, *, owner: str) -> Task:
        return self.store.get_task(task_id, owner=owner)

    def list(
        self,
        *,
        owner: str,
        status: Sequence[TaskStatus] = (),
        app: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> TaskPage:
        return self.store.list_tasks(owner=owner, status=status, app=app, limit=limit, cursor=cursor)

    def cancel(self, task_id: str, *, owner: str) -> Task:
        """Cancel queued work at once; running work stops at its next step. Finished tasks: Conflict."""
        task = self.store.request_cancel(task_id, owner=owner)
        if self.runner is not None:
            self.runner.cancel(task_id)
        return task

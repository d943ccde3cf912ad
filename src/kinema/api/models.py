"""What the HTTP API returns, as pydantic models (so /docs shows exactly these shapes)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from kinema.apps.schema import OutputMeta, VideoOutput
from kinema.tasks.models import TaskError, TaskProgress, TaskStatus


class TaskLinks(BaseModel):
    get: str
    cancel: str
    events: str


class TaskOut(BaseModel):
    """A task as clients see it; output.video is a signed URL that expires (read the task again for more)."""

    id: str
    app: str
    version: str
    status: TaskStatus
    input: dict[str, Any]
    output: VideoOutput | None = None
    output_meta: OutputMeta | None = None
    error: TaskError | None = None
    progress: TaskProgress | None = None
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    urls: TaskLinks


class TaskList(BaseModel):
    data: list[TaskOut]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next (older) page; null at the end."
    )


class AppSummary(BaseModel):
    id: str
    version: str
    title: str
    description: str


class AppList(BaseModel):
    data: list[AppSummary]


class AppDetail(BaseModel):
    id: str
    owner: str
    name: str
    version: str
    title: str
    description: str
    fps: int
    notes: list[str]
    input_schema: dict[str, Any]
    pricing: dict[str, Any]
    examples: list[dict[str, Any]]
    weights: str


class FileOut(BaseModel):
    id: str
    purpose: str
    filename: str
    content_type: str
    size_bytes: int
    created_at: datetime
    url: str = Field(description="Signed download URL (no key needed) that expires.")


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)

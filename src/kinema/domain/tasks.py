"""A task: one run of an app, from queued to completed, failed or cancelled."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from kinema.domain.outputs import OutputMeta, VideoOutput


class TaskStatus(StrEnum):
    queued = "queued"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({TaskStatus.completed, TaskStatus.failed, TaskStatus.cancelled})


class TaskProgress(BaseModel):
    stage: str
    step: int | None = None
    total: int | None = None


class TaskError(BaseModel):
    code: str
    message: str


def new_id(prefix: str) -> str:
    """A unique id with a kind prefix: tsk_, file_, key_, usr_, msg_."""
    return f"{prefix}_{secrets.token_hex(10)}"


def new_task_id() -> str:
    return new_id("tsk")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Task(BaseModel):
    """Everything known about one run; output_meta only when completed."""

    id: str = Field(default_factory=new_task_id)
    owner: str | None = Field(default=None, description="The account that submitted the task.")
    app: str
    version: str
    status: TaskStatus = TaskStatus.queued
    input: dict[str, Any]
    output: VideoOutput | None = None
    output_meta: OutputMeta | None = None
    error: TaskError | None = None
    progress: TaskProgress | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    # The stored MP4's file id (server mode); output.video is a signed URL made from it per request.
    output_file: str | None = Field(default=None, exclude=True)
    # Which start of the task this is (1, 2, ... as a queue claims it; None for a CLI run that no queue
    # holds): each start stores its output under its own key, so a retry never overwrites an earlier one,
    # and it is the fencing token of the start's writes (progress, finish, requeue), so a start whose lease
    # expired cannot record or charge the task after the next start took it.
    attempt: int | None = Field(default=None, ge=1, exclude=True)

"""The HTTP API's response shapes, shared by the server and the client.

The server declares its responses with these models (so its OpenAPI schema and /docs show exactly these
shapes, under these names) and the client reads the server's answers with the same models, so the two
sides cannot drift apart. Request bodies only the server reads stay in kinema.api.models.

The models are frozen: a response is a value, on either side of the wire.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kinema.domain.outputs import OutputMeta, VideoOutput
from kinema.domain.tasks import TaskError, TaskProgress, TaskStatus

# Tasks ------------------------------------------------------------------------------------------


class TaskLinks(BaseModel):
    model_config = ConfigDict(frozen=True)

    get: str
    cancel: str
    events: str


class TaskOut(BaseModel):
    """A task as clients see it; output.video is a signed URL that expires (read the task again for more)."""

    model_config = ConfigDict(frozen=True)

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

    @property
    def finished(self) -> bool:
        """Whether the task has completed, failed or been cancelled."""
        return self.status.finished


class TaskList(BaseModel):
    model_config = ConfigDict(frozen=True)

    data: list[TaskOut]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next (older) page; null at the end."
    )


# Apps -------------------------------------------------------------------------------------------


class WeightsOut(BaseModel):
    """A local app's weights on this server."""

    model_config = ConfigDict(frozen=True)

    source: str = Field(description="The Hugging Face repo, `builtin:tiny`, or `local directory`.")
    variant: str | None = Field(default=None, description="`distilled` (fast app) or `full`.")
    present: bool = Field(description="Whether the files this app needs are on this server.")
    generation: str | None = Field(
        default=None, description="The generation the weights hold (e.g. `2.5` for LTX-2.5), when known."
    )
    download_bytes: int | None = Field(default=None, description="What a download would fetch, when absent.")
    download_size: str | None = Field(default=None, description="download_bytes for people, e.g. `72.0 GB`.")
    download_estimated: bool = Field(
        default=False, description="download_bytes is an estimate (the repo's file list is not cached here)."
    )


class AppSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    version: str
    title: str
    description: str
    available: bool = Field(default=True, description="Whether this server can run the app now.")
    unavailable_reason: str | None = Field(
        default=None, description="Why not, and how to fix it (e.g. the provider API key is not set)."
    )
    weights: WeightsOut | None = Field(
        default=None, description="Local apps: their weights here; null otherwise."
    )


class AppList(BaseModel):
    model_config = ConfigDict(frozen=True)

    data: list[AppSummary]


class StageOut(BaseModel):
    """A stage a run of the app reports in `progress.stage`, with the label front ends show for it."""

    model_config = ConfigDict(frozen=True)

    name: str
    label: str


class AppDetail(BaseModel):
    model_config = ConfigDict(frozen=True)

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
    weights: WeightsOut | None = Field(
        description="Local apps: whether their weights are here, and the download size when not; null for "
        "provider apps."
    )
    engine: str = Field(description="`local` (a model on this server's GPU) or `remote` (a provider's API).")
    family: str = Field(description="The engine family that runs it: `ltx2`, `kandinsky6`, `veo`.")
    stages: list[StageOut] = Field(
        description="The stages a run reports, in order, with labels (the CLI and playground show these)."
    )
    provider: dict[str, Any] | None = Field(
        default=None, description="For remote apps: the provider, which of its APIs and which model it calls."
    )
    available: bool = Field(default=True, description="Whether this server can run the app now.")
    unavailable_reason: str | None = Field(default=None, description="Why not, and how to fix it.")


# Files ------------------------------------------------------------------------------------------


class FileOut(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    purpose: str
    filename: str
    content_type: str
    size_bytes: int
    created_at: datetime
    url: str = Field(description="Signed download URL (no key needed) that expires.")


# Accounts and keys ------------------------------------------------------------------------------


class UsageOut(BaseModel):
    model_config = ConfigDict(frozen=True)

    app: str
    day: str = Field(description="UTC date, YYYY-MM-DD.")
    tasks: int
    cost: str


class MeOut(BaseModel):
    """Your account: balance and holds from the ledger, and usage by app and day (last 30 days)."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    is_admin: bool
    billing_enabled: bool
    currency: str
    balance: str
    held: str = Field(description="Reserved by queued and running tasks.")
    available: str = Field(description="balance - held: what new runs can use.")
    usage: list[UsageOut]


class KeyOut(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    prefix: str | None = Field(description="The key's first characters, to recognise it.")
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="The secret key: shown only in this response; store it now.")


class KeyList(BaseModel):
    model_config = ConfigDict(frozen=True)

    data: list[KeyOut]

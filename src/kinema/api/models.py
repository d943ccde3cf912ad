"""What the HTTP API returns, as pydantic models (so /docs shows exactly these shapes)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from kinema.domain.outputs import OutputMeta, VideoOutput
from kinema.domain.tasks import TaskError, TaskProgress, TaskStatus


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


class WeightsOut(BaseModel):
    """A local app's weights on this server."""

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
    data: list[AppSummary]


class StageOut(BaseModel):
    """A stage a run of the app reports in `progress.stage`, with the label front ends show for it."""

    name: str
    label: str


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


class UsageOut(BaseModel):
    app: str
    day: str = Field(description="UTC date, YYYY-MM-DD.")
    tasks: int
    cost: str


class MeOut(BaseModel):
    """Your account: balance and holds from the ledger, and usage by app and day (last 30 days)."""

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
    id: str
    name: str
    prefix: str | None = Field(description="The key's first characters, to recognise it.")
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="The secret key: shown only in this response; store it now.")


class KeyList(BaseModel):
    data: list[KeyOut]


class KeyCreate(BaseModel):
    model_config = {"extra": "forbid"}

    name: str = Field(default="default", min_length=1, max_length=120)


class WebhookAttemptOut(BaseModel):
    attempt: int
    status_code: int | None
    error: str | None
    duration_ms: int
    created_at: datetime


class WebhookDeliveryOut(BaseModel):
    id: str = Field(description="The webhook-id header of every attempt.")
    event: str
    url: str
    status: str = Field(description="pending | delivered | failed")
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    history: list[WebhookAttemptOut]


class WebhookDeliveryList(BaseModel):
    data: list[WebhookDeliveryOut]


class WebhookSecret(BaseModel):
    key: str = Field(description="Standard Webhooks secret (whsec_...) that signs your webhooks.")


class UserCreate(BaseModel):
    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1, max_length=120, pattern=r"^[A-Za-z0-9_.@-]+$")
    is_admin: bool = False


class UserOut(BaseModel):
    id: str
    name: str
    is_admin: bool
    created_at: datetime


class UserCreated(UserOut):
    key: str = Field(description="The new user's first API key, shown only now.")


class UserList(BaseModel):
    data: list[UserOut]


class CreditIn(BaseModel):
    model_config = {"extra": "forbid"}

    amount: str = Field(
        pattern=r"^-?\d{1,12}(\.\d{1,6})?$", description='Exact decimal, e.g. "25.00" (negative to debit).'
    )
    note: str | None = Field(default=None, max_length=500)

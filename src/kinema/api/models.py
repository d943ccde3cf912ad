"""What the HTTP API reads and returns, as pydantic models (so /docs shows exactly these shapes).

The responses the client reads too live in kinema.domain.wire and are re-exported here, so the routes take
every model from this one module; what only the server reads or returns is declared below.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from kinema.domain.wire import (
    AppDetail,
    AppList,
    AppSummary,
    FileOut,
    KeyCreated,
    KeyList,
    KeyOut,
    MeOut,
    StageOut,
    TaskLinks,
    TaskList,
    TaskOut,
    UsageOut,
    WeightsOut,
)

__all__ = [
    "AppDetail",
    "AppList",
    "AppSummary",
    "CreditIn",
    "FileOut",
    "Health",
    "KeyCreate",
    "KeyCreated",
    "KeyList",
    "KeyOut",
    "MeOut",
    "StageOut",
    "TaskLinks",
    "TaskList",
    "TaskOut",
    "UsageOut",
    "UserCreate",
    "UserCreated",
    "UserList",
    "UserOut",
    "WebhookAttemptOut",
    "WebhookDeliveryList",
    "WebhookDeliveryOut",
    "WebhookSecret",
    "WeightsOut",
]


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


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

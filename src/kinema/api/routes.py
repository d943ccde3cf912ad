"""The HTTP routes. Each one is thin: authenticate, call the service/store in a thread, render."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Header, Query, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from kinema.api.errors import ErrorBody
from kinema.api.metrics import Metrics
from kinema.api.models import (
    AppDetail,
    AppList,
    AppSummary,
    CreditIn,
    FileOut,
    Health,
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyOut,
    MeOut,
    TaskLinks,
    TaskList,
    TaskOut,
    UsageOut,
    UserCreate,
    UserCreated,
    UserList,
    UserOut,
    WebhookAttemptOut,
    WebhookDeliveryList,
    WebhookDeliveryOut,
    WebhookSecret,
    WeightsOut,
)
from kinema.api.ranges import StoredFileResponse, byte_ranges
from kinema.api.security import Limiter, Signer, issue_key
from kinema.apps.registry import App, get_app, list_apps
from kinema.apps.schema import VideoInput
from kinema.billing.pricing import format_micros, to_micros
from kinema.domain.outputs import VideoOutput
from kinema.domain.tasks import Task, TaskStatus
from kinema.errors import (
    AppNotFound,
    BadRequest,
    Forbidden,
    ImageTooLarge,
    InvalidImage,
    NotFound,
    PayloadTooLarge,
    StorageError,
    Unauthorized,
    UnsupportedMediaType,
)
from kinema.media.images import MIME_TYPES, ImageLimits, check_image_size, image_format
from kinema.settings import Settings
from kinema.storage.base import Storage
from kinema.store import Store
from kinema.store.accounts import AccountSummary, ApiKey, ApiKeyInfo, User
from kinema.store.files import StoredFile
from kinema.tasks.runner import Runner
from kinema.tasks.service import RunOptions, TaskService
from kinema.tasks.signals import TaskSignals
from kinema.tasks.worker import image_limits

DISCONNECT_CHECK_S = 1.0  # how often a waiting run request checks that its client is still there


@dataclass
class ServerState:
    """Everything the routes share, built once by create_app's lifespan."""

    settings: Settings
    store: Store
    storage: Storage
    signer: Signer
    service: TaskService
    runner: Runner | None
    metrics: Metrics
    signals: TaskSignals = field(default_factory=TaskSignals)
    limiter: Limiter | None = None
    key_touched: dict[str, float] = field(default_factory=dict)


def state(request: Request) -> ServerState:
    return request.app.state.kinema  # type: ignore[no-any-return]


bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


async def principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> ApiKey:
    """The API key's owner; 401 when the key is missing or unknown."""
    if credentials is None:
        raise Unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
    st = state(request)
    key = await run_in_threadpool(st.store.accounts.find_key, st.signer.hash_key(credentials.credentials))
    if key is None:
        raise Unauthorized("invalid API key")
    if st.limiter is not None:
        if st.limiter.blocking:
            await run_in_threadpool(st.limiter.hit, key.id)
        else:
            st.limiter.hit(key.id)
    now = time.monotonic()
    if now - st.key_touched.get(key.id, -KEY_TOUCH_EVERY_S) >= KEY_TOUCH_EVERY_S:
        st.key_touched[key.id] = now  # last_used_at is written at most once a minute per key
        await run_in_threadpool(st.store.accounts.touch_key, key.id)
    return key


async def admin(key: Annotated[ApiKey, Depends(principal)]) -> ApiKey:
    """Only admin keys pass (403 for others)."""
    if not key.is_admin:
        raise Forbidden("this route needs an admin API key")
    return key


Principal = Annotated[ApiKey, Depends(principal)]
Admin = Annotated[ApiKey, Depends(admin)]
KEY_TOUCH_EVERY_S = 60.0


async def json_body(content_type: Annotated[str | None, Header(include_in_schema=False)] = None) -> None:
    """415 for a body that says it is not JSON (curl -d without -H sends a form type)."""
    if content_type and content_type.split(";")[0].strip().lower() not in ("application/json", ""):
        raise UnsupportedMediaType(
            f"the body must be JSON (Content-Type: application/json), not {content_type.split(';')[0]}"
        )


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 402, 404, 409, 413, 415, 422, 429, 503)
}


def base_url(request: Request) -> str:
    return state(request).settings.public_url or str(request.base_url)


def render_task(request: Request, task: Task) -> TaskOut:
    return task_out(state(request), base_url(request), task)


def task_out(st: ServerState, base: str, task: Task) -> TaskOut:
    """A task as the API shows it, with a fresh signed output URL under base."""
    base = base.rstrip("/")
    output = None
    if task.output_file is not None:
        output = VideoOutput(video=st.signer.file_url(base, task.output_file, st.settings.signed_url_ttl_s))
    return TaskOut(
        id=task.id,
        app=task.app,
        version=task.version,
        status=task.status,
        input=task.input,
        output=output,
        output_meta=task.output_meta,
        error=task.error,
        progress=task.progress,
        created_at=task.created_at,
        started_at=task.started_at,
        completed_at=task.completed_at,
        urls=TaskLinks(
            get=f"{base}/v1/tasks/{task.id}",
            cancel=f"{base}/v1/tasks/{task.id}/cancel",
            events=f"{base}/v1/tasks/{task.id}/events",
        ),
    )


def storage_url(st: ServerState, stored: StoredFile) -> str | None:
    """The storage's own URL for a file (a presigned bucket URL), or None when the API serves it."""
    return st.storage.url_for(
        stored.key,
        expires_s=st.settings.signed_url_ttl_s,
        filename=stored.filename,
        content_type=stored.content_type,
    )


def render_file(request: Request, stored: StoredFile) -> FileOut:
    st = state(request)
    return FileOut(
        id=stored.id,
        purpose=stored.purpose,
        filename=stored.filename,
        content_type=stored.content_type,
        size_bytes=stored.size_bytes,
        created_at=stored.created_at,
        url=storage_url(st, stored)
        or st.signer.file_url(base_url(request), stored.id, st.settings.signed_url_ttl_s),
    )


def task_response(request: Request, task: Task, status: int = 200) -> JSONResponse:
    body = render_task(request, task).model_dump(mode="json")
    return JSONResponse(body, status_code=status, headers={"Location": f"/v1/tasks/{task.id}"})


# Apps and runs -----------------------------------------------------------------------------------

router = APIRouter()
PREFER_WAIT = re.compile(r"(?:^|[;,\s])wait\s*=\s*(\d+)")


def wait_seconds(wait: bool, prefer: str | None, limit: float) -> float:
    """How long a run request waits: ?wait=false or Prefer: respond-async -> 0; Prefer: wait=N caps it."""
    if not wait:
        return 0.0
    if prefer:
        if "respond-async" in prefer.lower():
            return 0.0
        match = PREFER_WAIT.search(prefer.lower())
        if match:
            return min(float(match.group(1)), limit)
    return limit


async def wait_for(request: Request, task: Task, seconds: float) -> Task:
    """Wait until the task ends, the time is up, or the client goes away.

    The task is read again when its events change (a signal), not on a timer; without a signal, only every
    signals.fallback_s seconds.
    """
    st = state(request)
    deadline = time.monotonic() + seconds
    with st.signals.watch(task.id) as waiter:
        task = await run_in_threadpool(st.store.tasks.get, task.id)  # what changed before we watched
        reread = time.monotonic() + st.signals.fallback_s
        while not task.status.finished and (left := deadline - time.monotonic()) > 0:
            if await request.is_disconnected():
                break
            woken = await waiter.wait(min(left, DISCONNECT_CHECK_S, max(0.0, reread - time.monotonic())))
            if woken or time.monotonic() >= reread:
                task = await run_in_threadpool(st.store.tasks.get, task.id)
                reread = time.monotonic() + st.signals.fallback_s
    return task


def add_run_route(app_def: App) -> None:
    """POST /v1/apps/{owner}/{name}/run for one app, with the app's own input model as the body schema."""

    async def run(
        request: Request,
        body: VideoInput,
        key: Principal,
        wait: Annotated[
            bool,
            Query(description="Wait for the result (up to the server's limit); false answers 202 at once."),
        ] = True,
        prefer: Annotated[
            str | None, Header(description="`respond-async` answers 202 at once; `wait=N` waits N seconds.")
        ] = None,
        webhook: Annotated[
            str | None, Query(description="URL to POST task events to (Standard Webhooks signatures).")
        ] = None,
        webhook_events_filter: Annotated[
            list[str] | None,
            Query(description="Which events to send: start, progress, completed (repeatable; default all)."),
        ] = None,
        idempotency_key: Annotated[
            str | None,
            Header(max_length=255, description="Retries with the same key and body return the same task."),
        ] = None,
        cancel_after: Annotated[
            str | None, Header(description="Cancel the task if it has not finished after this long, e.g. 5m.")
        ] = None,
    ) -> JSONResponse:
        st = state(request)
        app_def.check_input(body, st.settings)  # 503 without a key or weights, 422 for what a key refuses
        options = RunOptions(
            webhook=webhook,
            webhook_events=tuple(webhook_events_filter) if webhook_events_filter else None,
            cancel_after=cancel_after,
            idempotency_key=idempotency_key,
        )
        submission = await run_in_threadpool(
            st.service.submit, app_def, body, owner=key.owner_id, options=options
        )
        task = submission.task
        seconds = wait_seconds(wait, prefer, st.settings.run_wait_s)
        if seconds > 0:
            task = await wait_for(request, task, seconds)
        response = task_response(request, task, 200 if task.status.finished else 202)
        if submission.replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return response

    run.__annotations__["body"] = app_def.input_model
    router.add_api_route(
        f"/v1/apps/{app_def.owner}/{app_def.name}/run",
        run,
        methods=["POST"],
        tags=["apps"],
        name=f"run {app_def.id}",
        summary=f"Run {app_def.id}",
        description=f"{app_def.description}\n\nWaits for the result by default (200 with the finished task); "
        "answers 202 with the queued or running task when asked not to wait or when the wait limit passes. "
        "The task's URL is in the Location header.",
        response_model=TaskOut,
        responses={202: {"model": TaskOut, "description": "Accepted; still queued or running."}, **ERRORS},
        dependencies=[Depends(json_body)],
        strict_content_type=False,  # a JSON body sent without a Content-Type is read as JSON
    )


for _app in list_apps():
    add_run_route(_app)


@router.post("/v1/apps/{owner}/{name}/run", include_in_schema=False)
async def run_unknown_app(owner: str, name: str, key: Principal) -> None:
    raise AppNotFound(f"no app named '{owner}/{name}'; GET /v1/apps lists them")


@router.get("/v1/apps", tags=["apps"], response_model=AppList, responses=ERRORS)
async def apps_list(request: Request, key: Principal) -> AppList:
    """The catalogue of apps, each saying whether this server can run it (and if not, why), and for a local
    app whether its weights are here and how big the download is when they are not."""
    settings = state(request).settings
    data = []
    for a in list_apps():
        availability = a.availability(settings)
        weights = a.describe_weights(settings)
        data.append(
            AppSummary(
                id=a.id,
                version=a.version,
                title=a.title,
                description=a.description,
                available=availability.available,
                unavailable_reason=availability.reason,
                weights=WeightsOut.model_validate(weights) if weights is not None else None,
            )
        )
    return AppList(data=data)


@router.get("/v1/apps/{owner}/{name}", tags=["apps"], response_model=AppDetail, responses=ERRORS)
async def apps_get(request: Request, owner: str, name: str, key: Principal) -> AppDetail:
    """One app: input JSON Schema with defaults and bounds, pricing, examples, availability here."""
    return AppDetail.model_validate(get_app(f"{owner}/{name}").describe(state(request).settings))


# Tasks -------------------------------------------------------------------------------------------


@router.get("/v1/tasks/{task_id}", tags=["tasks"], response_model=TaskOut, responses=ERRORS)
async def tasks_get(request: Request, task_id: str, key: Principal) -> TaskOut:
    """One task, with a fresh signed output URL when it has completed."""
    task = await run_in_threadpool(state(request).service.get, task_id, owner=key.owner_id)
    return render_task(request, task)


@router.get("/v1/tasks", tags=["tasks"], response_model=TaskList, responses=ERRORS)
async def tasks_list(
    request: Request,
    key: Principal,
    status: Annotated[list[TaskStatus] | None, Query(description="Only these statuses (repeatable).")] = None,
    app: Annotated[str | None, Query(description="Only this app, e.g. lightricks/ltx-2-fast.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(description="next_cursor from the previous page.")] = None,
) -> TaskList:
    """Your tasks, newest first, a page at a time."""
    page = await run_in_threadpool(
        state(request).service.list,
        owner=key.owner_id,
        status=status or (),
        app=app,
        limit=limit,
        cursor=cursor,
    )
    return TaskList(data=[render_task(request, t) for t in page.tasks], next_cursor=page.next_cursor)


@router.post("/v1/tasks/{task_id}/cancel", tags=["tasks"], response_model=TaskOut, responses=ERRORS)
async def tasks_cancel(request: Request, task_id: str, key: Principal) -> TaskOut:
    """Cancel a task: queued work never starts, running work stops at its next step. 409 once it has ended."""
    task = await run_in_threadpool(state(request).service.cancel, task_id, owner=key.owner_id)
    return render_task(request, task)


@router.get(
    "/v1/tasks/{task_id}/events",
    tags=["tasks"],
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events."}, **ERRORS},
    response_class=EventSourceResponse,
)
async def tasks_events(
    request: Request,
    task_id: str,
    key: Principal,
    last_event_id: Annotated[str | None, Header(description="Resume after this event id.")] = None,
) -> EventSourceResponse:
    """The task's events as SSE: `status`, `progress`, `log`, then one `task` event with the final task.

    Every event has an id; reconnect with `Last-Event-ID` to resume where the stream stopped.
    """
    st = state(request)
    await run_in_threadpool(st.service.get, task_id, owner=key.owner_id)
    try:
        after = int(last_event_id) if last_event_id else 0
    except ValueError:
        raise BadRequest("Last-Event-ID must be an event id from this stream") from None
    return EventSourceResponse(task_events(request, task_id, after), ping=15, send_timeout=30)


async def task_events(request: Request, task_id: str, after: int) -> AsyncIterator[ServerSentEvent]:
    """The task's events after `after`, each read when a signal says new ones were committed."""
    st = state(request)
    with st.signals.watch(task_id) as waiter:
        check_finished = True
        while True:
            events = await run_in_threadpool(st.store.tasks.events_after, task_id, after)
            for event in events:
                after = event.id
                if event.kind == "done":
                    yield await final_event(request, task_id, event.id)
                    return
                yield ServerSentEvent(id=str(event.id), event=event.kind, data=json.dumps(event.data))
            if not events and check_finished:
                task = await run_in_threadpool(st.store.tasks.get, task_id)
                if task.status.finished:  # resumed after the end: send the final task again
                    yield await final_event(request, task_id, after)
                    return
            if not events:
                # a signal means new events; without one, read again (and check the end) after the fallback
                check_finished = not await waiter.wait(st.signals.fallback_s)


async def final_event(request: Request, task_id: str, event_id: int) -> ServerSentEvent:
    task = await run_in_threadpool(state(request).store.tasks.get, task_id)
    body = render_task(request, task).model_dump_json()
    return ServerSentEvent(id=str(event_id), event="task", data=body)


# Files -------------------------------------------------------------------------------------------


def sniff_image(data: bytes, limits: ImageLimits) -> str:
    """The image's MIME type from its content (never from the client's claim).

    415 when it is not an image kinema accepts; 413 when its pixels are over the limit (a decompression
    bomb is refused from its header, before its pixels are decoded).
    """
    fmt = image_format(data)
    if fmt is None:
        raise UnsupportedMediaType(
            "the file is not an image kinema accepts (PNG, JPEG, WebP, GIF or BMP)",
            details={"accepted": sorted(MIME_TYPES.values())},
        )
    try:
        check_image_size(data, limits, source="the file")
    except InvalidImage as exc:
        if isinstance(exc, ImageTooLarge):
            raise
        raise UnsupportedMediaType(f"the file is not a readable image: {exc.message}") from None
    return MIME_TYPES[fmt]


@router.post("/v1/files", tags=["files"], status_code=201, response_model=FileOut, responses=ERRORS)
async def files_upload(
    request: Request,
    key: Principal,
    file: Annotated[UploadFile, File(description="An input image (PNG, JPEG, WebP, GIF or BMP).")],
) -> FileOut:
    """Upload an input image; use its id as `image` in a run."""
    st = state(request)
    data = await file.read(st.settings.upload_max_bytes + 1)
    if len(data) > st.settings.upload_max_bytes:
        raise PayloadTooLarge(f"the file is larger than {st.settings.upload_max_bytes} bytes")
    content_type = await run_in_threadpool(sniff_image, data, image_limits(st.settings))
    name = (file.filename or "upload").rsplit("/", 1)[-1][:200] or "upload"
    stored = await run_in_threadpool(st.service.add_upload, key.owner_id, data, name, content_type)
    return render_file(request, stored)


@router.get("/v1/files/{file_id}", tags=["files"], response_model=FileOut, responses=ERRORS)
async def files_get(request: Request, file_id: str, key: Principal) -> FileOut:
    """A file's details and a fresh signed download URL."""
    stored = await run_in_threadpool(state(request).store.files.get, file_id, owner=key.owner_id)
    return render_file(request, stored)


@router.get(
    "/files/{file_id}",
    tags=["files"],
    response_class=StoredFileResponse,
    status_code=200,  # documented here: FastAPI would look for it in the response class's signature
    responses={
        200: {"content": {"video/mp4": {}, "image/*": {}}},
        206: {"description": "Partial content"},
        307: {"description": "The storage serves the file itself: fetch it from Location."},
        403: {"model": ErrorBody},
        404: {"model": ErrorBody},
        416: {"model": ErrorBody, "description": "No requested range overlaps the file."},
    },
)
async def files_download(
    request: Request,
    file_id: str,
    expires: Annotated[int, Query(description="Expiry (Unix time) from the signed URL.")],
    signature: Annotated[str, Query(description="Signature from the signed URL.")],
    range_header: Annotated[
        str | None, Header(alias="range", description="bytes=start-end (RFC 9110); other units are ignored.")
    ] = None,
    if_range: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """Download a stored file through its signed URL (no key needed). Supports Range requests."""
    st = state(request)
    st.signer.check_file_signature(file_id, expires, signature)
    stored = await run_in_threadpool(st.store.files.get, file_id)
    direct = storage_url(st, stored)
    if direct is not None:  # a bucket serves it (ranges included); the signature was checked here
        return RedirectResponse(direct, status_code=307)
    try:
        info = await run_in_threadpool(st.storage.stat, stored.key)
    except NotFound:
        raise NotFound(f"file {file_id} is no longer stored") from None
    if if_range is None:  # with If-Range, a stale validator means the whole file
        byte_ranges(range_header, info.size_bytes)  # RangeNotSatisfiable -> a JSON 416
    return StoredFileResponse(
        st.storage,
        info,
        media_type=stored.content_type,
        filename=stored.filename,
        range_header=range_header,
        if_range=if_range,
        headers={"Cache-Control": "private, max-age=3600"},
    )


# Accounts, keys, webhooks ------------------------------------------------------------------------


def money(micros: int) -> str:
    return format_micros(micros)


def me_out(st: ServerState, summary: AccountSummary) -> MeOut:
    """The account as /v1/me shows it."""
    return MeOut(
        id=summary.user.id,
        name=summary.user.name,
        is_admin=summary.user.is_admin,
        billing_enabled=st.settings.billing_enabled,
        currency="USD",
        balance=money(summary.balance.balance_micros),
        held=money(summary.balance.held_micros),
        available=money(summary.balance.available_micros),
        usage=[
            UsageOut(app=u.app, day=u.day, tasks=u.tasks, cost=money(u.cost_micros)) for u in summary.usage
        ],
    )


@router.get("/v1/me", tags=["account"], response_model=MeOut, responses=ERRORS)
async def me(request: Request, key: Principal) -> MeOut:
    """Your account: balance, holds and usage by app and day, all derived from the ledger."""
    st = state(request)
    summary = await run_in_threadpool(st.store.accounts.summary, key.owner_id)
    return me_out(st, summary)


def key_out(info: ApiKeyInfo) -> KeyOut:
    return KeyOut(
        id=info.id,
        name=info.name,
        prefix=info.prefix,
        created_at=info.created_at,
        last_used_at=info.last_used_at,
        revoked_at=info.revoked_at,
    )


@router.get("/v1/keys", tags=["account"], response_model=KeyList, responses=ERRORS)
async def keys_list(request: Request, key: Principal) -> KeyList:
    """Your API keys (never their secrets)."""
    infos = await run_in_threadpool(state(request).store.accounts.list_keys, key.owner_id)
    return KeyList(data=[key_out(i) for i in infos])


@router.post("/v1/keys", tags=["account"], status_code=201, response_model=KeyCreated, responses=ERRORS)
async def keys_create(request: Request, key: Principal, body: KeyCreate) -> KeyCreated:
    """Make a new API key for your account; the secret is in this response only."""
    st = state(request)
    secret, info = await run_in_threadpool(issue_key, st.store.accounts, st.signer, key.owner_id, body.name)
    return KeyCreated(**key_out(info).model_dump(), key=secret)


@router.delete("/v1/keys/{key_id}", tags=["account"], response_model=KeyOut, responses=ERRORS)
async def keys_revoke(request: Request, key_id: str, key: Principal) -> KeyOut:
    """Revoke one of your keys; it stops working at once."""
    info = await run_in_threadpool(state(request).store.accounts.revoke_key, key.owner_id, key_id)
    return key_out(info)


@router.get("/v1/webhooks/secret", tags=["account"], response_model=WebhookSecret, responses=ERRORS)
async def webhooks_secret(request: Request, key: Principal) -> WebhookSecret:
    """The secret your webhooks are signed with (verify with any Standard Webhooks library)."""
    return WebhookSecret(key=state(request).signer.webhook_secret(key.owner_id))


@router.get(
    "/v1/tasks/{task_id}/webhooks", tags=["tasks"], response_model=WebhookDeliveryList, responses=ERRORS
)
async def tasks_webhooks(request: Request, task_id: str, key: Principal) -> WebhookDeliveryList:
    """Every webhook delivery of a task and each attempt: status code, error, timing."""
    deliveries = await run_in_threadpool(state(request).store.webhooks.for_task, task_id, owner=key.owner_id)
    return WebhookDeliveryList(
        data=[
            WebhookDeliveryOut(
                id=d.id,
                event=d.event,
                url=d.url,
                status=d.status,
                attempts=d.attempts,
                next_attempt_at=d.next_attempt_at,
                created_at=d.created_at,
                delivered_at=d.delivered_at,
                history=[WebhookAttemptOut(**vars(a)) for a in d.history],
            )
            for d in deliveries
        ]
    )


def user_out(user: User) -> UserOut:
    return UserOut(id=user.id, name=user.name, is_admin=user.is_admin, created_at=user.created_at)


@router.get("/v1/admin/users", tags=["admin"], response_model=UserList, responses={403: {"model": ErrorBody}})
async def admin_users(request: Request, key: Admin) -> UserList:
    """Every account (admin only)."""
    users = await run_in_threadpool(state(request).store.accounts.list_users)
    return UserList(data=[user_out(u) for u in users])


@router.post(
    "/v1/admin/users",
    tags=["admin"],
    status_code=201,
    response_model=UserCreated,
    responses={403: {"model": ErrorBody}, 409: {"model": ErrorBody}},
)
async def admin_create_user(request: Request, key: Admin, body: UserCreate) -> UserCreated:
    """Create an account and its first API key (admin only)."""
    st = state(request)

    def create() -> tuple[User, str]:
        user = st.store.accounts.create_user(body.name, is_admin=body.is_admin)
        secret, _ = issue_key(st.store.accounts, st.signer, user.id, "first key")
        return user, secret

    user, secret = await run_in_threadpool(create)
    return UserCreated(**user_out(user).model_dump(), key=secret)


@router.post(
    "/v1/admin/users/{user}/credit",
    tags=["admin"],
    response_model=MeOut,
    responses={403: {"model": ErrorBody}, 404: {"model": ErrorBody}},
)
async def admin_credit(request: Request, user: str, key: Admin, body: CreditIn) -> MeOut:
    """Add (or with a negative amount, remove) credit; returns the account after the entry (admin only)."""
    st = state(request)

    def credit() -> str:
        account = st.store.accounts.get_user(user)
        st.store.accounts.credit(account.id, to_micros(body.amount), note=body.note)
        return account.id

    account_id = await run_in_threadpool(credit)
    summary = await run_in_threadpool(st.store.accounts.summary, account_id)
    return me_out(st, summary)


# Operations --------------------------------------------------------------------------------------


@router.get("/healthz", tags=["operations"], response_model=Health)
async def healthz() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get("/readyz", tags=["operations"], response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request) -> JSONResponse:
    """Readiness: the database answers, storage is writable and the workers are alive."""
    st = state(request)
    checks: dict[str, str] = {}

    def check() -> None:
        try:
            st.store.ping()
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"error: {type(exc).__name__}"
        try:
            staging = st.storage.staging_file(".ready")
            st.storage.discard(staging)
            checks["storage"] = "ok"
        except StorageError as exc:
            checks["storage"] = f"error: {exc.public_message}"
        checks["workers"] = "ok" if st.runner is None or st.runner.alive else "error: worker stopped"

    await run_in_threadpool(check)
    ready = all(v == "ok" for v in checks.values())
    body = Health(status="ready" if ready else "not ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    """Prometheus metrics."""
    output = await run_in_threadpool(generate_latest, state(request).metrics.registry)
    return PlainTextResponse(output, media_type=CONTENT_TYPE_LATEST)

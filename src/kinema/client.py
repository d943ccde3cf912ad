"""A Python client for a kinema server: submit runs, follow their events, download the MP4s.

Runs are submitted without waiting and then followed over the task's event stream, so a long generation
never depends on one long HTTP request: a dropped stream is resumed with Last-Event-ID, and when no
stream can be had the client polls the task instead.

Retries never duplicate work: connection attempts are retried by the transport (a request that never
reached the server), and only idempotent GETs are retried after the server may have seen them.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote

import httpx
from httpx_sse import ServerSentEvent, SSEError, aconnect_sse, connect_sse
from pydantic import BaseModel, ConfigDict, SecretStr

from kinema.api.models import KeyCreated as NewApiKey
from kinema.api.models import KeyOut as ApiKeyInfo
from kinema.api.models import MeOut as Account
from kinema.api.models import WeightsOut as AppWeights
from kinema.domain.outputs import OutputMeta, VideoOutput
from kinema.domain.tasks import TaskError, TaskProgress, TaskStatus
from kinema.errors import Conflict, InvalidInput, KinemaError

__all__ = [
    "ApiError",
    "AppDetail",
    "AppSummary",
    "AsyncClient",
    "Client",
    "ConnectionFailed",
    "Event",
    "FileInfo",
    "StreamUnavailable",
    "Task",
    "TaskPage",
    "WaitTimeout",
]

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 3
# The server pings idle event streams every 15 s; a stream silent for longer than this is dead.
STREAM_READ_TIMEOUT_S = 45.0
POLL_INTERVAL_S = 0.5
RETRY_STATUSES = frozenset({502, 503, 504})
# Errors after a connection was made: the server may have seen the request, so only GETs are retried.
TRANSIENT_ERRORS = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadTimeout)
UNREACHABLE_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)


# Errors ------------------------------------------------------------------------------------------


class ApiError(KinemaError):
    """An error answer from the server: its HTTP status, error code, message and details."""

    def __init__(self, message: str, *, status: int, code: str, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.status = status
        self.code = code


class ConnectionFailed(KinemaError):
    """The server could not be reached, or the connection broke, after the allowed retries."""

    code = "connection_failed"
    status = 503


class StreamUnavailable(KinemaError):
    """The server did not answer the events URL with an event stream (wait() then polls instead)."""

    code = "stream_unavailable"
    status = 502


class WaitTimeout(KinemaError, TimeoutError):
    """The task did not finish within the time the caller allowed; it keeps running on the server."""

    code = "wait_timeout"
    status = 408


# What the server returns -------------------------------------------------------------------------


class TaskLinks(BaseModel):
    model_config = ConfigDict(frozen=True)

    get: str
    cancel: str
    events: str


class Task(BaseModel):
    """A task as the server reports it; output.video is a signed URL that expires (get() renews it)."""

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
        return self.status.finished


class TaskPage(BaseModel):
    """One page of tasks, newest first; pass next_cursor to list() for the next (older) page."""

    model_config = ConfigDict(frozen=True)

    data: list[Task]
    next_cursor: str | None = None


class FileInfo(BaseModel):
    """An uploaded file; use its id as `image` in a run."""

    model_config = ConfigDict(frozen=True)

    id: str
    purpose: str
    filename: str
    content_type: str
    size_bytes: int
    created_at: datetime
    url: str


class AppSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    version: str
    title: str
    description: str
    available: bool = True
    unavailable_reason: str | None = None
    weights: AppWeights | None = None  # local apps: present here, or the download size


class AppDetail(AppSummary):
    """An app's input JSON Schema, pricing and examples."""

    owner: str
    name: str
    fps: int
    notes: list[str]
    input_schema: dict[str, Any]
    pricing: dict[str, Any]
    examples: list[dict[str, Any]]
    engine: str = "local"
    provider: dict[str, Any] | None = None


@dataclass(frozen=True)
class Event:
    """One event of a task's stream: `status`, `progress`, `log`, then a final `task` with the task."""

    id: str
    event: str
    data: dict[str, Any]
    task: Task | None = None

    @property
    def progress(self) -> TaskProgress | None:
        return TaskProgress.model_validate(self.data) if self.event == "progress" else None

    @property
    def message(self) -> str | None:
        return str(self.data.get("message", "")) if self.event == "log" else None


EventCallback = Callable[[Event], None]
Input = Mapping[str, Any] | BaseModel


# Shared by both clients --------------------------------------------------------------------------


def server_url(base_url: str) -> str:
    """The server's base URL without a trailing slash; InvalidInput unless it is http(s)."""
    if not base_url.startswith(("http://", "https://")):
        raise InvalidInput(f"the server URL must start with http:// or https://, not {base_url!r}")
    return base_url.rstrip("/")


def bearer(api_key: str | SecretStr) -> str:
    key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
    return f"Bearer {key}"


def user_agent() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"kinema-client/{version('kinema')}"
    except PackageNotFoundError:
        return "kinema-client"


def api_error(response: httpx.Response) -> ApiError:
    """The server's {"error": {...}} body as an ApiError (or a generic one for a non-kinema answer)."""
    try:
        body = response.json()
        error = body["error"]
        return ApiError(
            str(error["message"]),
            status=response.status_code,
            code=str(error["code"]),
            details=error.get("details"),
        )
    except (ValueError, KeyError, TypeError):
        text = response.text.strip().replace("\n", " ")[:200]
        message = f"HTTP {response.status_code} {response.reason_phrase}" + (f": {text}" if text else "")
        return ApiError(message, status=response.status_code, code="http_error")


def checked(response: httpx.Response) -> httpx.Response:
    """The response when it succeeded; its ApiError otherwise (the body must have been read)."""
    if response.is_error:
        raise api_error(response)
    return response


def connection_failed(base_url: str, exc: httpx.TransportError) -> ConnectionFailed:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, UNREACHABLE_ERRORS):
        return ConnectionFailed(f"cannot reach the kinema server at {base_url}: {reason}")
    return ConnectionFailed(f"lost the connection to the kinema server at {base_url}: {reason}")


def stream_failure(base_url: str, task_id: str, error: Exception | None) -> KinemaError:
    """What to raise once a task's event stream has failed too many times in a row."""
    if isinstance(error, httpx.TransportError):
        failure: KinemaError = connection_failed(base_url, error)
        failure.__cause__ = error
        return failure
    if isinstance(error, KinemaError):
        return error
    return StreamUnavailable(f"the event stream of task {task_id} keeps ending before the task does")


def retry_delay(attempt: int) -> float:
    """Backoff before retry number attempt (0-based): 0.2 s, 0.4 s, 0.8 s, ... at most 2 s."""
    return float(min(0.2 * 2**attempt, 2.0))


TransportT = TypeVar("TransportT", httpx.HTTPTransport, httpx.AsyncHTTPTransport)


def proxy_mounts(trust_env: bool, transport_for: Callable[[str], TransportT]) -> dict[str, TransportT | None]:
    """The environment's HTTP(S)_PROXY, ALL_PROXY and NO_PROXY as httpx's own mounts, with our retries.

    httpx reads these only when it builds its default transport; the clients pass their own (for connect
    retries), so they mount the proxies themselves, parsed by the function httpx uses. A None mount is a
    NO_PROXY host: it goes straight to the server through the default transport.
    """
    if not trust_env:
        return {}
    from httpx._utils import get_environment_proxies

    return {
        pattern: None if proxy is None else transport_for(proxy)
        for pattern, proxy in get_environment_proxies().items()
    }


def run_path(app: str) -> str:
    owner, sep, name = app.partition("/")
    if not sep or not owner or not name or "/" in name:
        raise InvalidInput(f"an app is named OWNER/NAME, e.g. kinema/tiny, not {app!r}")
    return f"/v1/apps/{quote(owner, safe='')}/{quote(name, safe='')}/run"


def task_path(task_id: str, suffix: str = "") -> str:
    return f"/v1/tasks/{quote(task_id, safe='')}{suffix}"


def file_path(file_id: str) -> str:
    return f"/v1/files/{quote(file_id, safe='')}"


def timed_out(task_id: str) -> WaitTimeout:
    return WaitTimeout(f"task {task_id} did not finish in time; it keeps running on the server")


def input_body(input: Input) -> dict[str, Any]:
    if isinstance(input, BaseModel):
        return input.model_dump(mode="json", exclude_none=True)
    return dict(input)


def list_params(
    status: TaskStatus | str | Sequence[TaskStatus | str] | None,
    app: str | None,
    limit: int,
    cursor: str | None,
) -> list[tuple[str, str | int]]:
    """The query of GET /v1/tasks (status may repeat)."""
    params: list[tuple[str, str | int]] = [("limit", limit)]
    statuses = [status] if isinstance(status, str) else list(status or ())
    params += [("status", str(s)) for s in statuses]
    if app:
        params.append(("app", app))
    if cursor:
        params.append(("cursor", cursor))
    return params


def stream_headers(last_event_id: str | None) -> dict[str, str]:
    return {"Last-Event-ID": last_event_id} if last_event_id else {}


def event_from(sse: ServerSentEvent) -> Event:
    try:
        data: Any = json.loads(sse.data)
    except ValueError:
        data = sse.data
    if not isinstance(data, dict):
        data = {"value": data}
    task = Task.model_validate(data) if sse.event == "task" else None
    return Event(id=sse.id, event=sse.event, data=data, task=task)


def progress_event(task: Task) -> Event | None:
    """A `progress` event made from a polled task (polling has no event ids)."""
    if task.progress is None:
        return None
    return Event(id="", event="progress", data=task.progress.model_dump(exclude_none=True))


def output_url(task_or_url: Task | str) -> str:
    if isinstance(task_or_url, str):
        return task_or_url
    if task_or_url.output is None:
        raise Conflict(
            f"task {task_or_url.id} has no output (it is {task_or_url.status.value})",
            details={"status": task_or_url.status.value},
        )
    return task_or_url.output.video


def partial_path(target: Path) -> Path:
    """A fresh temporary name beside target, so the final rename stays on one file system."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.part")


def read_timeout(deadline: float | None, idle: float | None) -> float:
    """How long one read on an event stream may block."""
    limit = idle if idle is not None else STREAM_READ_TIMEOUT_S
    if deadline is not None:
        limit = min(limit, max(deadline - time.monotonic(), 0.001))
    return limit


def past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


class _Sink:
    """A download's temporary file: bytes written so far, restartable when the server ignores Range."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file, self.written = file, 0

    def range_headers(self) -> dict[str, str]:
        return {"Range": f"bytes={self.written}-"} if self.written else {}

    def begin(self, response: httpx.Response) -> None:
        if self.written and response.status_code != 206:  # a full body after all: start over
            self.file.seek(0)
            self.file.truncate()
            self.written = 0

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.written += len(chunk)


# The synchronous client --------------------------------------------------------------------------


class Client:
    """A kinema server's API, synchronously: `with Client(url, key) as c: c.run("kinema/tiny", {...})`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | SecretStr,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        poll_interval: float = POLL_INTERVAL_S,
        trust_env: bool = True,
    ) -> None:
        """trust_env=False ignores the proxy environment variables (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY)."""
        self.base_url = server_url(base_url)
        self.timeout, self.retries, self.poll_interval = timeout, retries, poll_interval
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": bearer(api_key), "User-Agent": user_agent()},
            timeout=timeout,
            transport=httpx.HTTPTransport(retries=retries),
            mounts=proxy_mounts(trust_env, lambda proxy: httpx.HTTPTransport(retries=retries, proxy=proxy)),
            trust_env=trust_env,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Requests ------------------------------------------------------------------------------------

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One API call; a GET is retried on a broken connection or a gateway error, nothing else is."""
        attempts = self.retries if method == "GET" else 0
        for attempt in range(attempts + 1):
            try:
                response = self._http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                if attempt < attempts and isinstance(exc, TRANSIENT_ERRORS):
                    time.sleep(retry_delay(attempt))
                    continue
                raise connection_failed(self.base_url, exc) from exc
            if attempt < attempts and response.status_code in RETRY_STATUSES:
                time.sleep(retry_delay(attempt))
                continue
            return checked(response)
        raise AssertionError("unreachable")

    # Tasks ---------------------------------------------------------------------------------------

    def submit(self, app: str, input: Input) -> Task:
        """Queue a run of app (OWNER/NAME) and return the task at once, without waiting."""
        response = self._request(
            "POST",
            run_path(app),
            params={"wait": "false"},
            json=input_body(input),
            headers={"Prefer": "respond-async"},
        )
        return Task.model_validate_json(response.content)

    def run(
        self,
        app: str,
        input: Input,
        *,
        wait: bool = True,
        timeout: float | None = None,
        on_event: EventCallback | None = None,
    ) -> Task:
        """Submit a run and, with wait, follow it until it finishes (completed, failed or cancelled)."""
        task = self.submit(app, input)
        if not wait:
            return task
        return self.wait(task.id, timeout=timeout, on_event=on_event)

    def get(self, task_id: str) -> Task:
        """The task now, with a fresh signed output URL once it has completed."""
        return Task.model_validate_json(self._request("GET", task_path(task_id)).content)

    def list(
        self,
        status: TaskStatus | str | Sequence[TaskStatus | str] | None = None,
        app: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> TaskPage:
        """Your tasks, newest first, one page at a time."""
        params = list_params(status, app, limit, cursor)
        return TaskPage.model_validate_json(self._request("GET", "/v1/tasks", params=params).content)

    def cancel(self, task_id: str) -> Task:
        """Cancel a task: queued work never starts, running work stops at its next step."""
        return Task.model_validate_json(self._request("POST", task_path(task_id, "/cancel")).content)

    # Events --------------------------------------------------------------------------------------

    def stream(
        self, task_id: str, last_event_id: str | None = None, *, idle_timeout: float | None = None
    ) -> Iterator[Event]:
        """The task's events after last_event_id, in order, ending with the `task` event.

        A dropped connection is resumed after the last event seen. With idle_timeout the iteration also
        ends quietly when no event arrives for that many seconds.
        """
        return self._follow(task_id, last_event_id, deadline=None, idle=idle_timeout)

    def _follow(
        self, task_id: str, last_id: str | None, *, deadline: float | None, idle: float | None
    ) -> Iterator[Event]:
        failures = 0
        while True:
            try:
                for event in self._connect(task_id, last_id, read_timeout(deadline, idle)):
                    last_id, failures = event.id or last_id, 0
                    yield event
                    if event.task is not None:
                        return
                    if past(deadline):
                        raise timed_out(task_id)
            except httpx.ReadTimeout as exc:
                if idle is not None:
                    return
                if past(deadline):
                    raise timed_out(task_id) from exc
                error: Exception | None = exc
            except httpx.TransportError as exc:
                error = exc
            except ApiError as exc:
                if exc.status not in RETRY_STATUSES:
                    raise
                error = exc
            else:
                error = None  # the stream ended before the final event: resume it
            failures += 1
            if failures > self.retries:
                raise stream_failure(self.base_url, task_id, error)
            time.sleep(retry_delay(failures - 1))

    def _connect(self, task_id: str, last_id: str | None, read: float) -> Iterator[Event]:
        timeout = httpx.Timeout(self.timeout, read=read)
        url = task_path(task_id, "/events")
        with connect_sse(self._http, "GET", url, headers=stream_headers(last_id), timeout=timeout) as source:
            if source.response.is_error:
                source.response.read()
                raise api_error(source.response)
            try:
                for sse in source.iter_sse():
                    if sse.data:  # httpx-sse turns keep-alive comments into empty events; skip them
                        yield event_from(sse)
            except SSEError as exc:
                raise StreamUnavailable(
                    f"no event stream for task {task_id} (the server sent something else)"
                ) from exc

    def wait(
        self, task_id: str, timeout: float | None = None, *, on_event: EventCallback | None = None
    ) -> Task:
        """Follow the task until it finishes and return it; WaitTimeout after timeout seconds.

        Follows the event stream (resuming it when it drops) and falls back to polling when the stream
        cannot be had. on_event sees each event, including the final `task` event.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for event in self._follow(task_id, None, deadline=deadline, idle=None):
                if on_event is not None:
                    on_event(event)
                if event.task is not None:
                    return event.task
        except (StreamUnavailable, ConnectionFailed):
            pass
        return self._poll(task_id, deadline, on_event)

    def _poll(self, task_id: str, deadline: float | None, on_event: EventCallback | None) -> Task:
        seen: Event | None = None
        while True:
            task = self.get(task_id)
            if task.finished:
                return task
            event = progress_event(task)
            if on_event is not None and event is not None and event != seen:
                on_event(event)
            seen = event
            if past(deadline):
                raise timed_out(task_id)
            time.sleep(self.poll_interval)

    # Files ---------------------------------------------------------------------------------------

    def download(self, task_or_url: Task | str, path: str | os.PathLike[str]) -> Path:
        """Write a task's MP4 (or any signed file URL) to path, whole or not at all; returns the path.

        The file is written beside path under a temporary name and renamed into place; a broken
        connection resumes with a Range request; an expired URL is renewed when given the task.
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = partial_path(target)
        try:
            with partial.open("xb") as file:
                sink = _Sink(file)
                try:
                    self._fetch(output_url(task_or_url), sink)
                except ApiError as exc:
                    if exc.status != 403 or not isinstance(task_or_url, Task):
                        raise
                    self._fetch(output_url(self.get(task_or_url.id)), sink)  # the signed URL expired
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return target

    def _fetch(self, url: str, sink: _Sink) -> None:
        for attempt in range(self.retries + 1):
            try:
                # auth=None: a signed URL needs no key, and may point at another host (a CDN)
                with self._http.stream("GET", url, headers=sink.range_headers(), auth=None) as response:
                    if response.is_error:
                        response.read()
                        raise api_error(response)
                    sink.begin(response)
                    for chunk in response.iter_bytes():
                        sink.write(chunk)
                return
            except httpx.TransportError as exc:
                if attempt < self.retries and isinstance(exc, TRANSIENT_ERRORS):
                    time.sleep(retry_delay(attempt))
                    continue
                raise connection_failed(self.base_url, exc) from exc

    def upload(self, path: str | os.PathLike[str]) -> FileInfo:
        """Upload an input image; pass the returned id as `image` in a run."""
        source = Path(path)
        with source.open("rb") as file:
            response = self._request("POST", "/v1/files", files={"file": (source.name, file)})
        return FileInfo.model_validate_json(response.content)

    def file(self, file_id: str) -> FileInfo:
        """A file's details, with a fresh signed URL."""
        return FileInfo.model_validate_json(self._request("GET", file_path(file_id)).content)

    # Apps ----------------------------------------------------------------------------------------

    def apps(self) -> builtins.list[AppSummary]:
        """The server's catalogue of apps."""
        body = self._request("GET", "/v1/apps").json()
        return [AppSummary.model_validate(a) for a in body["data"]]

    def app(self, app: str) -> AppDetail:
        """One app's input schema, pricing and examples."""
        path = run_path(app).removesuffix("/run")
        return AppDetail.model_validate_json(self._request("GET", path).content)

    # Account -------------------------------------------------------------------------------------

    def me(self) -> Account:
        """Your account: balance, holds and usage by app and day."""
        return Account.model_validate_json(self._request("GET", "/v1/me").content)

    def keys(self) -> builtins.list[ApiKeyInfo]:
        """Your API keys (never their secrets)."""
        body = self._request("GET", "/v1/keys").json()
        return [ApiKeyInfo.model_validate(k) for k in body["data"]]

    def create_key(self, name: str = "default") -> NewApiKey:
        """A new API key; its secret is in the result only this once."""
        return NewApiKey.model_validate_json(self._request("POST", "/v1/keys", json={"name": name}).content)

    def revoke_key(self, key_id: str) -> ApiKeyInfo:
        """Revoke one of your keys."""
        return ApiKeyInfo.model_validate_json(
            self._request("DELETE", f"/v1/keys/{quote(key_id, safe='')}").content
        )


# The asynchronous client -------------------------------------------------------------------------


class AsyncClient:
    """The same API for asyncio: `async with AsyncClient(url, key) as c: await c.run(...)`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | SecretStr,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        poll_interval: float = POLL_INTERVAL_S,
        trust_env: bool = True,
    ) -> None:
        """trust_env=False ignores the proxy environment variables (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY)."""
        self.base_url = server_url(base_url)
        self.timeout, self.retries, self.poll_interval = timeout, retries, poll_interval
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": bearer(api_key), "User-Agent": user_agent()},
            timeout=timeout,
            transport=httpx.AsyncHTTPTransport(retries=retries),
            mounts=proxy_mounts(
                trust_env, lambda proxy: httpx.AsyncHTTPTransport(retries=retries, proxy=proxy)
            ),
            trust_env=trust_env,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One API call; a GET is retried on a broken connection or a gateway error, nothing else is."""
        attempts = self.retries if method == "GET" else 0
        for attempt in range(attempts + 1):
            try:
                response = await self._http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                if attempt < attempts and isinstance(exc, TRANSIENT_ERRORS):
                    await asyncio.sleep(retry_delay(attempt))
                    continue
                raise connection_failed(self.base_url, exc) from exc
            if attempt < attempts and response.status_code in RETRY_STATUSES:
                await asyncio.sleep(retry_delay(attempt))
                continue
            return checked(response)
        raise AssertionError("unreachable")

    async def submit(self, app: str, input: Input) -> Task:
        """Queue a run of app (OWNER/NAME) and return the task at once, without waiting."""
        response = await self._request(
            "POST",
            run_path(app),
            params={"wait": "false"},
            json=input_body(input),
            headers={"Prefer": "respond-async"},
        )
        return Task.model_validate_json(response.content)

    async def run(
        self,
        app: str,
        input: Input,
        *,
        wait: bool = True,
        timeout: float | None = None,
        on_event: EventCallback | None = None,
    ) -> Task:
        """Submit a run and, with wait, follow it until it finishes (completed, failed or cancelled)."""
        task = await self.submit(app, input)
        if not wait:
            return task
        return await self.wait(task.id, timeout=timeout, on_event=on_event)

    async def get(self, task_id: str) -> Task:
        """The task now, with a fresh signed output URL once it has completed."""
        return Task.model_validate_json((await self._request("GET", task_path(task_id))).content)

    async def list(
        self,
        status: TaskStatus | str | Sequence[TaskStatus | str] | None = None,
        app: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> TaskPage:
        """Your tasks, newest first, one page at a time."""
        params = list_params(status, app, limit, cursor)
        return TaskPage.model_validate_json((await self._request("GET", "/v1/tasks", params=params)).content)

    async def cancel(self, task_id: str) -> Task:
        """Cancel a task: queued work never starts, running work stops at its next step."""
        return Task.model_validate_json((await self._request("POST", task_path(task_id, "/cancel"))).content)

    def stream(
        self, task_id: str, last_event_id: str | None = None, *, idle_timeout: float | None = None
    ) -> AsyncIterator[Event]:
        """The task's events after last_event_id, in order, ending with the `task` event (see Client)."""
        return self._follow(task_id, last_event_id, deadline=None, idle=idle_timeout)

    async def _follow(
        self, task_id: str, last_id: str | None, *, deadline: float | None, idle: float | None
    ) -> AsyncIterator[Event]:
        failures = 0
        while True:
            try:
                async for event in self._connect(task_id, last_id, read_timeout(deadline, idle)):
                    last_id, failures = event.id or last_id, 0
                    yield event
                    if event.task is not None:
                        return
                    if past(deadline):
                        raise timed_out(task_id)
            except httpx.ReadTimeout as exc:
                if idle is not None:
                    return
                if past(deadline):
                    raise timed_out(task_id) from exc
                error: Exception | None = exc
            except httpx.TransportError as exc:
                error = exc
            except ApiError as exc:
                if exc.status not in RETRY_STATUSES:
                    raise
                error = exc
            else:
                error = None  # the stream ended before the final event: resume it
            failures += 1
            if failures > self.retries:
                raise stream_failure(self.base_url, task_id, error)
            await asyncio.sleep(retry_delay(failures - 1))

    async def _connect(self, task_id: str, last_id: str | None, read: float) -> AsyncIterator[Event]:
        timeout = httpx.Timeout(self.timeout, read=read)
        url = task_path(task_id, "/events")
        async with aconnect_sse(
            self._http, "GET", url, headers=stream_headers(last_id), timeout=timeout
        ) as source:
            if source.response.is_error:
                await source.response.aread()
                raise api_error(source.response)
            try:
                async for sse in source.aiter_sse():
                    if sse.data:  # httpx-sse turns keep-alive comments into empty events; skip them
                        yield event_from(sse)
            except SSEError as exc:
                raise StreamUnavailable(
                    f"no event stream for task {task_id} (the server sent something else)"
                ) from exc

    async def wait(
        self, task_id: str, timeout: float | None = None, *, on_event: EventCallback | None = None
    ) -> Task:
        """Follow the task until it finishes and return it; WaitTimeout after timeout seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            async for event in self._follow(task_id, None, deadline=deadline, idle=None):
                if on_event is not None:
                    on_event(event)
                if event.task is not None:
                    return event.task
        except (StreamUnavailable, ConnectionFailed):
            pass
        return await self._poll(task_id, deadline, on_event)

    async def _poll(self, task_id: str, deadline: float | None, on_event: EventCallback | None) -> Task:
        seen: Event | None = None
        while True:
            task = await self.get(task_id)
            if task.finished:
                return task
            event = progress_event(task)
            if on_event is not None and event is not None and event != seen:
                on_event(event)
            seen = event
            if past(deadline):
                raise timed_out(task_id)
            await asyncio.sleep(self.poll_interval)

    async def download(self, task_or_url: Task | str, path: str | os.PathLike[str]) -> Path:
        """Write a task's MP4 (or any signed file URL) to path, whole or not at all; returns the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = partial_path(target)
        try:
            with partial.open("xb") as file:
                sink = _Sink(file)
                try:
                    await self._fetch(output_url(task_or_url), sink)
                except ApiError as exc:
                    if exc.status != 403 or not isinstance(task_or_url, Task):
                        raise
                    await self._fetch(output_url(await self.get(task_or_url.id)), sink)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return target

    async def _fetch(self, url: str, sink: _Sink) -> None:
        for attempt in range(self.retries + 1):
            try:
                async with self._http.stream("GET", url, headers=sink.range_headers(), auth=None) as response:
                    if response.is_error:
                        await response.aread()
                        raise api_error(response)
                    sink.begin(response)
                    async for chunk in response.aiter_bytes():
                        sink.write(chunk)
                return
            except httpx.TransportError as exc:
                if attempt < self.retries and isinstance(exc, TRANSIENT_ERRORS):
                    await asyncio.sleep(retry_delay(attempt))
                    continue
                raise connection_failed(self.base_url, exc) from exc

    async def upload(self, path: str | os.PathLike[str]) -> FileInfo:
        """Upload an input image; pass the returned id as `image` in a run."""
        source = Path(path)
        content = await asyncio.to_thread(source.read_bytes)
        response = await self._request("POST", "/v1/files", files={"file": (source.name, content)})
        return FileInfo.model_validate_json(response.content)

    async def file(self, file_id: str) -> FileInfo:
        """A file's details, with a fresh signed URL."""
        response = await self._request("GET", file_path(file_id))
        return FileInfo.model_validate_json(response.content)

    async def apps(self) -> builtins.list[AppSummary]:
        """The server's catalogue of apps."""
        body = (await self._request("GET", "/v1/apps")).json()
        return [AppSummary.model_validate(a) for a in body["data"]]

    async def app(self, app: str) -> AppDetail:
        """One app's input schema, pricing and examples."""
        path = run_path(app).removesuffix("/run")
        return AppDetail.model_validate_json((await self._request("GET", path)).content)

    async def me(self) -> Account:
        """Your account: balance, holds and usage by app and day."""
        return Account.model_validate_json((await self._request("GET", "/v1/me")).content)

    async def keys(self) -> builtins.list[ApiKeyInfo]:
        """Your API keys (never their secrets)."""
        body = (await self._request("GET", "/v1/keys")).json()
        return [ApiKeyInfo.model_validate(k) for k in body["data"]]

    async def create_key(self, name: str = "default") -> NewApiKey:
        """A new API key; its secret is in the result only this once."""
        response = await self._request("POST", "/v1/keys", json={"name": name})
        return NewApiKey.model_validate_json(response.content)

    async def revoke_key(self, key_id: str) -> ApiKeyInfo:
        """Revoke one of your keys."""
        response = await self._request("DELETE", f"/v1/keys/{quote(key_id, safe='')}")
        return ApiKeyInfo.model_validate_json(response.content)

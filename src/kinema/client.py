"""A Python client for a kinema server: submit runs, follow their events, download the MP4s.

Runs are submitted without waiting and then followed over the task's event stream, so a long generation
never depends on one long HTTP request: a dropped stream is resumed with Last-Event-ID, and when no
stream can be had the client polls the task instead.

Retries never duplicate work: connection attempts are retried by the transport (a request that never
reached the server), and only idempotent GETs are retried after the server may have seen them.

Client and AsyncClient differ only in their I/O. Everything else is written once, here: each API request
as a Call (what to send, how to read the answer), the error mapping, the retry policy (Attempts), the
event stream's resume bookkeeping (EventStream), wait()'s polling fallback (Waiting) and the download's
temporary file (Download). The two clients send, sleep and read bytes, each in its own way.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from httpx_sse import ServerSentEvent, SSEError, aconnect_sse, connect_sse
from pydantic import BaseModel, SecretStr

from kinema.domain.tasks import TaskProgress, TaskStatus
from kinema.domain.wire import (
    AppDetail,
    AppList,
    AppSummary,
    FileOut,
    KeyCreated,
    KeyList,
    KeyOut,
    MeOut,
    TaskLinks,
    TaskList,
    TaskOut,
    WeightsOut,
)
from kinema.errors import Conflict, InvalidInput, KinemaError

__all__ = [
    "Account",
    "ApiError",
    "ApiKeyInfo",
    "AppDetail",
    "AppSummary",
    "AppWeights",
    "AsyncClient",
    "Client",
    "ConnectionFailed",
    "Event",
    "FileInfo",
    "NewApiKey",
    "StreamUnavailable",
    "Task",
    "TaskLinks",
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


def connection_failed(base_url: str, exc: httpx.TransportError) -> ConnectionFailed:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, UNREACHABLE_ERRORS):
        return ConnectionFailed(f"cannot reach the kinema server at {base_url}: {reason}")
    return ConnectionFailed(f"lost the connection to the kinema server at {base_url}: {reason}")


def timed_out(task_id: str) -> WaitTimeout:
    return WaitTimeout(f"task {task_id} did not finish in time; it keeps running on the server")


# What the server returns -------------------------------------------------------------------------

# The server's own response models (kinema.domain.wire), under the names this client has always used.
Task = TaskOut  # output.video is a signed URL that expires; get() renews it
TaskPage = TaskList  # newest first; pass next_cursor to list() for the next (older) page
FileInfo = FileOut  # an uploaded file: use its id as `image` in a run
Account = MeOut
ApiKeyInfo = KeyOut
NewApiKey = KeyCreated
AppWeights = WeightsOut


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


# The API's requests, built once ------------------------------------------------------------------

T = TypeVar("T")
FileContent = IO[bytes] | bytes


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request as data, the same for both clients, and how to read its successful answer."""

    method: str
    path: str
    read: Callable[[bytes], T]
    params: httpx.QueryParams | None = None
    json: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    files: dict[str, tuple[str, FileContent]] | None = None

    @property
    def idempotent(self) -> bool:
        """Whether sending it twice is harmless, so it may be retried after the server may have seen it."""
        return self.method == "GET"

    def answer(self, response: httpx.Response) -> T:
        """The parsed answer when the call succeeded; the server's error as an ApiError otherwise."""
        if response.is_error:
            raise api_error(response)
        return self.read(response.content)


def run_path(app: str) -> str:
    owner, sep, name = app.partition("/")
    if not sep or not owner or not name or "/" in name:
        raise InvalidInput(f"an app is named OWNER/NAME, e.g. kinema/tiny, not {app!r}")
    return f"/v1/apps/{quote(owner, safe='')}/{quote(name, safe='')}/run"


def task_path(task_id: str, suffix: str = "") -> str:
    return f"/v1/tasks/{quote(task_id, safe='')}{suffix}"


def input_body(input: Input) -> dict[str, Any]:
    if isinstance(input, BaseModel):
        return input.model_dump(mode="json", exclude_none=True)
    return dict(input)


def list_params(
    status: TaskStatus | str | Sequence[TaskStatus | str] | None,
    app: str | None,
    limit: int,
    cursor: str | None,
) -> httpx.QueryParams:
    """The query of GET /v1/tasks (status may repeat)."""
    params = [("limit", str(limit))]
    statuses = [status] if isinstance(status, str) else list(status or ())
    params += [("status", str(s)) for s in statuses]
    if app:
        params.append(("app", app))
    if cursor:
        params.append(("cursor", cursor))
    return httpx.QueryParams(tuple(params))


def submit_call(app: str, input: Input) -> Call[Task]:
    return Call(
        "POST",
        run_path(app),
        Task.model_validate_json,
        params=httpx.QueryParams({"wait": "false"}),
        json=input_body(input),
        headers={"Prefer": "respond-async"},
    )


def get_call(task_id: str) -> Call[Task]:
    return Call("GET", task_path(task_id), Task.model_validate_json)


def list_call(
    status: TaskStatus | str | Sequence[TaskStatus | str] | None,
    app: str | None,
    limit: int,
    cursor: str | None,
) -> Call[TaskPage]:
    return Call(
        "GET", "/v1/tasks", TaskPage.model_validate_json, params=list_params(status, app, limit, cursor)
    )


def cancel_call(task_id: str) -> Call[Task]:
    return Call("POST", task_path(task_id, "/cancel"), Task.model_validate_json)


def upload_call(filename: str, content: FileContent) -> Call[FileInfo]:
    return Call("POST", "/v1/files", FileInfo.model_validate_json, files={"file": (filename, content)})


def file_call(file_id: str) -> Call[FileInfo]:
    return Call("GET", f"/v1/files/{quote(file_id, safe='')}", FileInfo.model_validate_json)


def apps_call() -> Call[list[AppSummary]]:
    return Call("GET", "/v1/apps", lambda body: AppList.model_validate_json(body).data)


def app_call(app: str) -> Call[AppDetail]:
    return Call("GET", run_path(app).removesuffix("/run"), AppDetail.model_validate_json)


def me_call() -> Call[Account]:
    return Call("GET", "/v1/me", Account.model_validate_json)


def keys_call() -> Call[list[ApiKeyInfo]]:
    return Call("GET", "/v1/keys", lambda body: KeyList.model_validate_json(body).data)


def create_key_call(name: str) -> Call[NewApiKey]:
    return Call("POST", "/v1/keys", NewApiKey.model_validate_json, json={"name": name})


def revoke_key_call(key_id: str) -> Call[ApiKeyInfo]:
    return Call("DELETE", f"/v1/keys/{quote(key_id, safe='')}", ApiKeyInfo.model_validate_json)


# Policies and bookkeeping, shared by both clients ------------------------------------------------


def retry_delay(attempt: int) -> float:
    """Backoff before retry number attempt (0-based): 0.2 s, 0.4 s, 0.8 s, ... at most 2 s."""
    return float(min(0.2 * 2**attempt, 2.0))


def past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


@dataclass
class Attempts:
    """The retries left to one request, and the backoff before each.

    Connecting is retried by the transport (the request never left); after that the server may have
    seen the request, so only idempotent ones are given more tries: after a broken connection, and
    after a gateway error (502, 503, 504).
    """

    base_url: str
    left: int
    made: int = 0

    def after_error(self, exc: httpx.TransportError) -> float:
        """The backoff before trying again; ConnectionFailed when no try is left or the error is final."""
        if self.left > 0 and isinstance(exc, TRANSIENT_ERRORS):
            return self._next()
        raise connection_failed(self.base_url, exc) from exc

    def after_response(self, response: httpx.Response) -> float | None:
        """The backoff before trying again after a gateway error; None to take the response as it is."""
        if self.left > 0 and response.status_code in RETRY_STATUSES:
            return self._next()
        return None

    def _next(self) -> float:
        delay = retry_delay(self.made)
        self.left, self.made = self.left - 1, self.made + 1
        return delay


@dataclass
class EventStream:
    """Following one task's events across connections: where to resume, failures in a row, and limits.

    Each connection asks for the events after the last one seen (Last-Event-ID). A connection that
    breaks or ends before the final `task` event is resumed after a backoff, until `retries` fail in a
    row. With an idle limit, a silent stream ends quietly instead; past the deadline, WaitTimeout.
    """

    base_url: str
    task_id: str
    last_id: str | None
    deadline: float | None
    idle: float | None
    retries: int
    connect_timeout: float
    failures: int = 0

    @property
    def path(self) -> str:
        return task_path(self.task_id, "/events")

    def headers(self) -> dict[str, str]:
        return {"Last-Event-ID": self.last_id} if self.last_id else {}

    def timeout(self) -> httpx.Timeout:
        """The next connection's timeouts: one read may block until the idle limit or the deadline."""
        read = self.idle if self.idle is not None else STREAM_READ_TIMEOUT_S
        if self.deadline is not None:
            read = min(read, max(self.deadline - time.monotonic(), 0.001))
        return httpx.Timeout(self.connect_timeout, read=read)

    def event(self, sse: ServerSentEvent) -> Event | None:
        """The event in one SSE message, noted as the point to resume after; None for a keep-alive."""
        if not sse.data:  # httpx-sse turns keep-alive comments into empty events
            return None
        event = event_from(sse)
        self.last_id, self.failures = event.id or self.last_id, 0
        return event

    def is_final(self, event: Event) -> bool:
        """Whether event ends the stream (it carries the finished task); WaitTimeout past the deadline."""
        if event.task is not None:
            return True
        if past(self.deadline):
            raise timed_out(self.task_id)
        return False

    def not_a_stream(self) -> StreamUnavailable:
        return StreamUnavailable(f"no event stream for task {self.task_id} (the server sent something else)")

    def broken(self, error: httpx.TransportError | ApiError | None) -> float | None:
        """After a connection broke (error) or ended early (None): the backoff before resuming, or None to
        end quietly (the idle limit passed). Raises once following should stop."""
        if isinstance(error, httpx.ReadTimeout):
            if self.idle is not None:
                return None
            if past(self.deadline):
                raise timed_out(self.task_id) from error
        elif isinstance(error, ApiError) and error.status not in RETRY_STATUSES:
            raise error
        self.failures += 1
        if self.failures > self.retries:
            raise self._failure(error)
        return retry_delay(self.failures - 1)

    def _failure(self, error: httpx.TransportError | ApiError | None) -> KinemaError:
        """What to raise once the stream has failed too many times in a row."""
        if isinstance(error, httpx.TransportError):
            failure: KinemaError = connection_failed(self.base_url, error)
            failure.__cause__ = error
            return failure
        if error is not None:
            return error
        return StreamUnavailable(f"the event stream of task {self.task_id} keeps ending before the task does")


class Waiting:
    """One wait(): its deadline, the caller's on_event, and the progress polling last reported."""

    def __init__(self, task_id: str, timeout: float | None, on_event: EventCallback | None) -> None:
        self.task_id, self.on_event = task_id, on_event
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.seen: Event | None = None

    def streamed(self, event: Event) -> Task | None:
        """Hand a streamed event to on_event; the task once the final event brings it."""
        if self.on_event is not None:
            self.on_event(event)
        return event.task

    def polled(self, task: Task) -> Task | None:
        """The task once it has finished; until then new progress goes to on_event, and past the
        deadline WaitTimeout."""
        if task.finished:
            return task
        event = progress_event(task)
        if self.on_event is not None and event is not None and event != self.seen:
            self.on_event(event)
        self.seen = event
        if past(self.deadline):
            raise timed_out(self.task_id)
        return None


def output_url(task_or_url: Task | str) -> str:
    if isinstance(task_or_url, str):
        return task_or_url
    if task_or_url.output is None:
        raise Conflict(
            f"task {task_or_url.id} has no output (it is {task_or_url.status.value})",
            details={"status": task_or_url.status.value},
        )
    return task_or_url.output.video


def renewable_task(task_or_url: Task | str, error: ApiError) -> Task | None:
    """The task whose signed output URL was refused (403), so a fresh one can be had; None otherwise."""
    return task_or_url if error.status == 403 and isinstance(task_or_url, Task) else None


class Download:
    """A download's temporary file beside the target: renamed into place when whole, removed otherwise.

    A fresh name beside the target keeps the final rename on one file system. The bytes written so far
    let a broken connection resume with a Range request.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.target = Path(path)
        self.partial = self.target.with_name(f".{self.target.name}.{uuid.uuid4().hex[:12]}.part")
        self.written = 0

    def __enter__(self) -> Download:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.partial.open("xb")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        try:
            self.file.close()
            if exc_type is None:
                os.replace(self.partial, self.target)
        finally:
            self.partial.unlink(missing_ok=True)  # nothing left to remove once it was renamed

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


# The base both clients build on ------------------------------------------------------------------


class ApiKey(httpx.Auth):
    """The API key as a bearer token on API requests; requests sent with auth=None (signed file URLs,
    which may point at another host, such as a CDN or a bucket) go without it."""

    def __init__(self, key: str | SecretStr) -> None:
        secret = key.get_secret_value() if isinstance(key, SecretStr) else key
        self._header = f"Bearer {secret}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


def server_url(base_url: str) -> str:
    """The server's base URL without a trailing slash; InvalidInput unless it is http(s)."""
    if not base_url.startswith(("http://", "https://")):
        raise InvalidInput(f"the server URL must start with http:// or https://, not {base_url!r}")
    return base_url.rstrip("/")


def user_agent() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"kinema-client/{version('kinema')}"
    except PackageNotFoundError:
        return "kinema-client"


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


HttpT = TypeVar("HttpT", httpx.Client, httpx.AsyncClient)


class BaseClient(Generic[HttpT]):
    """What Client and AsyncClient share: the server, the key, the options, and the bookkeeping objects
    their I/O runs on; each opens its own httpx client (_open)."""

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
        self._auth = ApiKey(api_key)
        self._trust_env = trust_env
        self._http: HttpT = self._open()

    def _open(self) -> HttpT:
        """This side's httpx client, made with _http_options."""
        raise NotImplementedError

    def _http_options(self, transport: Callable[..., TransportT]) -> dict[str, Any]:
        """The httpx client's options: our key, headers and timeout, connect retries, the environment's
        proxies (transport is httpx's sync or async transport class)."""
        return {
            "base_url": self.base_url,
            "auth": self._auth,
            "headers": {"User-Agent": user_agent()},
            "timeout": self.timeout,
            "transport": transport(retries=self.retries),
            "mounts": proxy_mounts(
                self._trust_env, lambda proxy: transport(retries=self.retries, proxy=proxy)
            ),
            "trust_env": self._trust_env,
        }

    def _build_request(self, call: Call[Any]) -> httpx.Request:
        return self._http.build_request(
            call.method, call.path, params=call.params, json=call.json, headers=call.headers, files=call.files
        )

    def _attempts(self, idempotent: bool) -> Attempts:
        return Attempts(self.base_url, self.retries if idempotent else 0)

    def _event_stream(
        self,
        task_id: str,
        last_id: str | None = None,
        *,
        deadline: float | None = None,
        idle: float | None = None,
    ) -> EventStream:
        return EventStream(self.base_url, task_id, last_id, deadline, idle, self.retries, self.timeout)


# The synchronous client --------------------------------------------------------------------------


class Client(BaseClient[httpx.Client]):
    """A kinema server's API, synchronously: `with Client(url, key) as c: c.run("kinema/tiny", {...})`."""

    def _open(self) -> httpx.Client:
        return httpx.Client(**self._http_options(httpx.HTTPTransport))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, call: Call[T]) -> T:
        """One API call, retried as Attempts allows."""
        request, attempts = self._build_request(call), self._attempts(call.idempotent)
        while True:
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                time.sleep(attempts.after_error(exc))
                continue
            backoff = attempts.after_response(response)
            if backoff is None:
                return call.answer(response)
            time.sleep(backoff)

    # Tasks ---------------------------------------------------------------------------------------

    def submit(self, app: str, input: Input) -> Task:
        """Queue a run of app (OWNER/NAME) and return the task at once, without waiting."""
        return self._send(submit_call(app, input))

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
        return self._send(get_call(task_id))

    def list(
        self,
        status: TaskStatus | str | Sequence[TaskStatus | str] | None = None,
        app: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> TaskPage:
        """Your tasks, newest first, one page at a time."""
        return self._send(list_call(status, app, limit, cursor))

    def cancel(self, task_id: str) -> Task:
        """Cancel a task: queued work never starts, running work stops at its next step."""
        return self._send(cancel_call(task_id))

    # Events --------------------------------------------------------------------------------------

    def stream(
        self, task_id: str, last_event_id: str | None = None, *, idle_timeout: float | None = None
    ) -> Iterator[Event]:
        """The task's events after last_event_id, in order, ending with the `task` event.

        A dropped connection is resumed after the last event seen. With idle_timeout the iteration also
        ends quietly when no event arrives for that many seconds.
        """
        return self._follow(self._event_stream(task_id, last_event_id, idle=idle_timeout))

    def _follow(self, stream: EventStream) -> Iterator[Event]:
        while True:
            try:
                for event in self._connect(stream):
                    yield event
                    if stream.is_final(event):
                        return
            except (httpx.TransportError, ApiError) as exc:
                backoff = stream.broken(exc)
            else:
                backoff = stream.broken(None)  # the stream ended before the final event: resume it
            if backoff is None:
                return
            time.sleep(backoff)

    def _connect(self, stream: EventStream) -> Iterator[Event]:
        with connect_sse(
            self._http, "GET", stream.path, headers=stream.headers(), timeout=stream.timeout()
        ) as source:
            if source.response.is_error:
                source.response.read()
                raise api_error(source.response)
            try:
                for sse in source.iter_sse():
                    if (event := stream.event(sse)) is not None:
                        yield event
            except SSEError as exc:
                raise stream.not_a_stream() from exc

    def wait(
        self, task_id: str, timeout: float | None = None, *, on_event: EventCallback | None = None
    ) -> Task:
        """Follow the task until it finishes and return it; WaitTimeout after timeout seconds.

        Follows the event stream (resuming it when it drops) and falls back to polling when the stream
        cannot be had. on_event sees each event, including the final `task` event.
        """
        waiting = Waiting(task_id, timeout, on_event)
        try:
            for event in self._follow(self._event_stream(task_id, deadline=waiting.deadline)):
                if (task := waiting.streamed(event)) is not None:
                    return task
        except (StreamUnavailable, ConnectionFailed):
            pass  # no event stream to be had: poll instead
        while (task := waiting.polled(self.get(task_id))) is None:
            time.sleep(self.poll_interval)
        return task

    # Files ---------------------------------------------------------------------------------------

    def download(self, task_or_url: Task | str, path: str | os.PathLike[str]) -> Path:
        """Write a task's MP4 (or any signed file URL) to path, whole or not at all; returns the path.

        The file is written beside path under a temporary name and renamed into place; a broken
        connection resumes with a Range request; an expired URL is renewed when given the task.
        """
        with Download(path) as download:
            try:
                self._fetch(output_url(task_or_url), download)
            except ApiError as exc:
                if (task := renewable_task(task_or_url, exc)) is None:
                    raise
                self._fetch(output_url(self.get(task.id)), download)
        return download.target

    def _fetch(self, url: str, download: Download) -> None:
        attempts = self._attempts(idempotent=True)
        while True:
            try:
                # auth=None: a signed URL needs no key, and may point at another host
                with self._http.stream("GET", url, headers=download.range_headers(), auth=None) as response:
                    if response.is_error:
                        response.read()
                        raise api_error(response)
                    download.begin(response)
                    for chunk in response.iter_bytes():
                        download.write(chunk)
                return
            except httpx.TransportError as exc:
                time.sleep(attempts.after_error(exc))

    def upload(self, path: str | os.PathLike[str]) -> FileInfo:
        """Upload an input image; pass the returned id as `image` in a run."""
        source = Path(path)
        with source.open("rb") as file:
            return self._send(upload_call(source.name, file))

    def file(self, file_id: str) -> FileInfo:
        """A file's details, with a fresh signed URL."""
        return self._send(file_call(file_id))

    # Apps ----------------------------------------------------------------------------------------

    def apps(self) -> builtins.list[AppSummary]:
        """The server's catalogue of apps."""
        return self._send(apps_call())

    def app(self, app: str) -> AppDetail:
        """One app's input schema, pricing and examples."""
        return self._send(app_call(app))

    # Account -------------------------------------------------------------------------------------

    def me(self) -> Account:
        """Your account: balance, holds and usage by app and day."""
        return self._send(me_call())

    def keys(self) -> builtins.list[ApiKeyInfo]:
        """Your API keys (never their secrets)."""
        return self._send(keys_call())

    def create_key(self, name: str = "default") -> NewApiKey:
        """A new API key; its secret is in the result only this once."""
        return self._send(create_key_call(name))

    def revoke_key(self, key_id: str) -> ApiKeyInfo:
        """Revoke one of your keys."""
        return self._send(revoke_key_call(key_id))


# The asynchronous client -------------------------------------------------------------------------


class AsyncClient(BaseClient[httpx.AsyncClient]):
    """The same API for asyncio: `async with AsyncClient(url, key) as c: await c.run(...)`."""

    def _open(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(**self._http_options(httpx.AsyncHTTPTransport))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, call: Call[T]) -> T:
        """One API call, retried as Attempts allows."""
        request, attempts = self._build_request(call), self._attempts(call.idempotent)
        while True:
            try:
                response = await self._http.send(request)
            except httpx.TransportError as exc:
                await asyncio.sleep(attempts.after_error(exc))
                continue
            backoff = attempts.after_response(response)
            if backoff is None:
                return call.answer(response)
            await asyncio.sleep(backoff)

    # Tasks ---------------------------------------------------------------------------------------

    async def submit(self, app: str, input: Input) -> Task:
        """Queue a run of app (OWNER/NAME) and return the task at once, without waiting."""
        return await self._send(submit_call(app, input))

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
        return await self._send(get_call(task_id))

    async def list(
        self,
        status: TaskStatus | str | Sequence[TaskStatus | str] | None = None,
        app: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> TaskPage:
        """Your tasks, newest first, one page at a time."""
        return await self._send(list_call(status, app, limit, cursor))

    async def cancel(self, task_id: str) -> Task:
        """Cancel a task: queued work never starts, running work stops at its next step."""
        return await self._send(cancel_call(task_id))

    # Events --------------------------------------------------------------------------------------

    def stream(
        self, task_id: str, last_event_id: str | None = None, *, idle_timeout: float | None = None
    ) -> AsyncIterator[Event]:
        """The task's events after last_event_id, in order, ending with the `task` event (see Client)."""
        return self._follow(self._event_stream(task_id, last_event_id, idle=idle_timeout))

    async def _follow(self, stream: EventStream) -> AsyncIterator[Event]:
        while True:
            try:
                async for event in self._connect(stream):
                    yield event
                    if stream.is_final(event):
                        return
            except (httpx.TransportError, ApiError) as exc:
                backoff = stream.broken(exc)
            else:
                backoff = stream.broken(None)  # the stream ended before the final event: resume it
            if backoff is None:
                return
            await asyncio.sleep(backoff)

    async def _connect(self, stream: EventStream) -> AsyncIterator[Event]:
        async with aconnect_sse(
            self._http, "GET", stream.path, headers=stream.headers(), timeout=stream.timeout()
        ) as source:
            if source.response.is_error:
                await source.response.aread()
                raise api_error(source.response)
            try:
                async for sse in source.aiter_sse():
                    if (event := stream.event(sse)) is not None:
                        yield event
            except SSEError as exc:
                raise stream.not_a_stream() from exc

    async def wait(
        self, task_id: str, timeout: float | None = None, *, on_event: EventCallback | None = None
    ) -> Task:
        """Follow the task until it finishes and return it; WaitTimeout after timeout seconds (see Client)."""
        waiting = Waiting(task_id, timeout, on_event)
        try:
            async for event in self._follow(self._event_stream(task_id, deadline=waiting.deadline)):
                if (task := waiting.streamed(event)) is not None:
                    return task
        except (StreamUnavailable, ConnectionFailed):
            pass  # no event stream to be had: poll instead
        while (task := waiting.polled(await self.get(task_id))) is None:
            await asyncio.sleep(self.poll_interval)
        return task

    # Files ---------------------------------------------------------------------------------------

    async def download(self, task_or_url: Task | str, path: str | os.PathLike[str]) -> Path:
        """Write a task's MP4 (or any signed file URL) to path, whole or not at all; returns the path."""
        with Download(path) as download:
            try:
                await self._fetch(output_url(task_or_url), download)
            except ApiError as exc:
                if (task := renewable_task(task_or_url, exc)) is None:
                    raise
                await self._fetch(output_url(await self.get(task.id)), download)
        return download.target

    async def _fetch(self, url: str, download: Download) -> None:
        attempts = self._attempts(idempotent=True)
        while True:
            try:
                # auth=None: a signed URL needs no key, and may point at another host
                async with self._http.stream(
                    "GET", url, headers=download.range_headers(), auth=None
                ) as response:
                    if response.is_error:
                        await response.aread()
                        raise api_error(response)
                    download.begin(response)
                    async for chunk in response.aiter_bytes():
                        download.write(chunk)
                return
            except httpx.TransportError as exc:
                await asyncio.sleep(attempts.after_error(exc))

    async def upload(self, path: str | os.PathLike[str]) -> FileInfo:
        """Upload an input image; pass the returned id as `image` in a run."""
        source = Path(path)
        content = await asyncio.to_thread(source.read_bytes)
        return await self._send(upload_call(source.name, content))

    async def file(self, file_id: str) -> FileInfo:
        """A file's details, with a fresh signed URL."""
        return await self._send(file_call(file_id))

    # Apps ----------------------------------------------------------------------------------------

    async def apps(self) -> builtins.list[AppSummary]:
        """The server's catalogue of apps."""
        return await self._send(apps_call())

    async def app(self, app: str) -> AppDetail:
        """One app's input schema, pricing and examples."""
        return await self._send(app_call(app))

    # Account -------------------------------------------------------------------------------------

    async def me(self) -> Account:
        """Your account: balance, holds and usage by app and day."""
        return await self._send(me_call())

    async def keys(self) -> builtins.list[ApiKeyInfo]:
        """Your API keys (never their secrets)."""
        return await self._send(keys_call())

    async def create_key(self, name: str = "default") -> NewApiKey:
        """A new API key; its secret is in the result only this once."""
        return await self._send(create_key_call(name))

    async def revoke_key(self, key_id: str) -> ApiKeyInfo:
        """Revoke one of your keys."""
        return await self._send(revoke_key_call(key_id))

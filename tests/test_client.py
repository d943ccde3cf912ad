"""kinema.Client and kinema.AsyncClient against a live server: runs, events, cancels, downloads, retries.

Every test runs on both clients: the `connect` fixture opens a Client, or an AsyncClient driven through
BlockingAsyncClient, so each behaviour is written once and checked on both.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import inspect
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kinema import AsyncClient, Client
from kinema.client import ApiError, ConnectionFailed, Event, Task, TaskPage, WaitTimeout
from kinema.domain.tasks import TaskStatus
from kinema.errors import InvalidInput
from tests.conftest import ADMIN_KEY, LiveServer, assert_mp4, png_data_uri

SMALL = {"prompt": "A red kite over a beach", "aspect_ratio": "1:1", "duration": 0.5}
# Long enough on two CPU cores to still be running when the test cancels it.
LONG = {"prompt": "A long slow pan", "duration": 2, "resolution": "1080p"}

T = TypeVar("T")


class BlockingAsyncClient:
    """An AsyncClient called like a Client: its coroutines run to completion on an event loop of its own,
    its async iterators are iterated one item at a time on the same loop (httpx's pool stays on it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.runner = asyncio.Runner()
        self.client = AsyncClient(*args, **kwargs)

    def __enter__(self) -> BlockingAsyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.runner.run(self.client.aclose())
        finally:
            self.runner.close()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def blocking(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if inspect.iscoroutine(result):
                return self.runner.run(result)
            if isinstance(result, AsyncIterator):
                return self._iterate(result)
            return result

        return blocking

    def _iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        async def step() -> T:
            return await anext(items)

        try:
            while True:
                try:
                    item = self.runner.run(step())
                except StopAsyncIteration:
                    return
                yield item
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                self.runner.run(aclose())


AnyClient = Client | BlockingAsyncClient
Connect = Callable[..., AnyClient]


@pytest.fixture(scope="module", params=["Client", "AsyncClient"])
def connect(request: pytest.FixtureRequest) -> Connect:
    """Opens a client of one kind or the other, with Client's arguments: `with connect(url, key) as c`."""
    return Client if request.param == "Client" else BlockingAsyncClient


class FlakyProxy:
    """A TCP proxy in front of the server that breaks the connections it is told to, like a bad network.

    plan[n] says what happens to the n-th connection: None passes it through, 0 closes it at once, and
    N > 0 cuts it after N bytes of the server's answer. Connections past the plan pass through.
    """

    def __init__(self, target_port: int, plan: list[int | None]) -> None:
        self.target_port, self.plan = target_port, list(plan)
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            cut = self.plan[self.connections] if self.connections < len(self.plan) else None
            self.connections += 1
            threading.Thread(target=self._serve, args=(downstream, cut), daemon=True).start()

    def _serve(self, downstream: socket.socket, cut: int | None) -> None:
        if cut == 0:
            downstream.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        requests = threading.Thread(target=pump, args=(downstream, upstream, None), daemon=True)
        requests.start()
        pump(upstream, downstream, cut)
        requests.join(5)
        downstream.close()
        upstream.close()

    def close(self) -> None:
        self.listener.close()


def pump(source: socket.socket, sink: socket.socket, limit: int | None) -> None:
    """Copy bytes until either side closes or limit bytes have passed, then shut both sockets."""
    passed = 0
    try:
        while limit is None or passed < limit:
            chunk = source.recv(65536 if limit is None else min(65536, limit - passed))
            if not chunk:
                break
            sink.sendall(chunk)
            passed += len(chunk)
    except OSError:
        pass
    for sock in (source, sink):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@dataclass(frozen=True)
class Finished:
    task: Task
    events: list[Event]


@pytest.fixture(scope="module")
def finished(shared_server: LiveServer, connect: Connect) -> Finished:
    """A completed SMALL run on the shared server and the events run() saw while following it live."""
    events: list[Event] = []
    with connect(shared_server.url, ADMIN_KEY) as client:
        task = client.run("kinema/tiny", SMALL, on_event=events.append)
    return Finished(task, events)


@pytest.fixture
def shared(shared_server: LiveServer, connect: Connect) -> Iterator[AnyClient]:
    with connect(shared_server.url, ADMIN_KEY) as client:
        yield client


@pytest.fixture
def client(live_server: LiveServer, connect: Connect) -> Iterator[AnyClient]:
    """A client of a fresh server of the test's own."""
    with connect(live_server.url, ADMIN_KEY) as c:
        yield c


MakeProxy = Callable[[LiveServer, list[int | None]], FlakyProxy]


@pytest.fixture
def proxy_for() -> Iterator[MakeProxy]:
    """Make FlakyProxies in front of a server; all are closed after the test."""
    made: list[FlakyProxy] = []

    def make(server: LiveServer, plan: list[int | None]) -> FlakyProxy:
        made.append(FlakyProxy(server.port, plan))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


def via(proxy: FlakyProxy, server: LiveServer, url: str) -> str:
    """A signed URL of server, sent through proxy instead (the signature does not cover the host)."""
    return url.replace(f":{server.port}/", f":{proxy.port}/")


def partial_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.endswith(".part")]


# Runs and downloads ------------------------------------------------------------------------------


def test_run_waits_for_the_result_and_download_writes_the_mp4(
    finished: Finished, shared: AnyClient, tmp_path: Path
) -> None:
    task = finished.task
    assert task.status is TaskStatus.completed, task.error
    assert task.output is not None and task.output_meta is not None
    assert (task.output_meta.width, task.output_meta.height, task.output_meta.frames) == (720, 720, 12)
    assert task.output_meta.billing.currency == "USD"
    target = tmp_path / "clips" / "kite.mp4"
    assert shared.download(task, target) == target
    assert_mp4(target, width=720, height=720, duration=0.5, fps=24, audio=False)
    assert target.stat().st_size == task.output_meta.size_bytes
    assert partial_files(target.parent) == []


def test_list_filters_by_status_and_app(finished: Finished, shared: AnyClient) -> None:
    page = shared.list(status="completed", app="kinema/tiny")
    assert isinstance(page, TaskPage)
    assert finished.task.id in [t.id for t in page.data]
    assert finished.task.id not in [t.id for t in shared.list(status=[TaskStatus.failed, "cancelled"]).data]


def test_download_resumes_after_a_dropped_connection_and_never_leaves_a_partial_file(
    finished: Finished,
    shared: AnyClient,
    shared_server: LiveServer,
    connect: Connect,
    tmp_path: Path,
    proxy_for: MakeProxy,
) -> None:
    assert finished.task.output is not None
    whole = shared.download(finished.task, tmp_path / "direct.mp4").read_bytes()

    cut = proxy_for(shared_server, [4000])
    with connect(cut.url, ADMIN_KEY, retries=0) as fragile, pytest.raises(ConnectionFailed):
        fragile.download(via(cut, shared_server, finished.task.output.video), tmp_path / "broken.mp4")
    assert not (tmp_path / "broken.mp4").exists()
    assert partial_files(tmp_path) == []

    resumed = proxy_for(shared_server, [4000])
    with connect(resumed.url, ADMIN_KEY) as patient:
        url = via(resumed, shared_server, finished.task.output.video)
        assert patient.download(url, tmp_path / "resumed.mp4").read_bytes() == whole
    assert resumed.connections == 2
    assert partial_files(tmp_path) == []


def test_download_of_a_bad_url_raises_and_writes_nothing(
    shared: AnyClient, shared_server: LiveServer, tmp_path: Path
) -> None:
    target = tmp_path / "never.mp4"
    with pytest.raises(ApiError) as caught:
        shared.download(f"{shared_server.url}/files/file_nope?expires=1&signature=bad", target)
    assert caught.value.status == 403
    assert not target.exists()
    assert partial_files(tmp_path) == []


class FileHost:
    """Another host serving signed URLs' files, as a CDN or a bucket would: answers every GET with body and
    records the Authorization header each request came with."""

    def __init__(self, body: bytes) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        authorizations = self.authorizations = []  # type: list[str | None]

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                authorizations.append(self.headers.get("Authorization"))
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1})
        self.thread.daemon = True
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_download_of_a_signed_url_on_another_host_sends_no_api_key(shared: AnyClient, tmp_path: Path) -> None:
    host = FileHost(b"not really an mp4")
    try:
        target = shared.download(f"{host.url}/clip.mp4?expires=1&signature=sig", tmp_path / "cdn.mp4")
    finally:
        host.close()
    assert target.read_bytes() == b"not really an mp4"
    assert host.authorizations == [None]


# Events ------------------------------------------------------------------------------------------


def test_run_follows_the_events_in_order_ending_with_the_task(finished: Finished) -> None:
    events = finished.events
    ids = [int(e.id) for e in events]
    assert ids == sorted(set(ids))
    assert events[0].event == "status" and events[0].data == {"status": "queued"}
    assert {"status": "running"} in [e.data for e in events if e.event == "status"]
    steps = [e.progress for e in events if e.progress is not None and e.progress.stage == "denoise"]
    assert steps and steps[-1].step == steps[-1].total
    assert any(e.message and "denoising" in e.message.lower() for e in events)  # the stage label, "Denoising"
    final = events[-1]
    assert final.event == "task" and final.task == finished.task


def test_stream_replays_the_events_and_resumes_after_last_event_id(
    finished: Finished, shared: AnyClient
) -> None:
    events = list(shared.stream(finished.task.id))
    assert [e.id for e in events] == [e.id for e in finished.events]
    assert events[-1].task is not None and events[-1].task.status is TaskStatus.completed
    assert events[-1].task.model_dump(exclude={"output"}) == finished.task.model_dump(exclude={"output"})

    for resume_after in (2, len(events) // 2):
        later = list(shared.stream(finished.task.id, last_event_id=events[resume_after].id))
        assert [e.id for e in later] == [e.id for e in events[resume_after + 1 :]]


def test_wait_resumes_the_event_stream_after_the_connection_drops(
    finished: Finished, shared_server: LiveServer, connect: Connect, proxy_for: MakeProxy
) -> None:
    proxy = proxy_for(shared_server, [700])
    seen: list[Event] = []
    with connect(proxy.url, ADMIN_KEY) as flaky:
        done = flaky.wait(finished.task.id, on_event=seen.append)
    assert (done.id, done.status, done.output_meta) == (
        finished.task.id,
        TaskStatus.completed,
        finished.task.output_meta,
    )  # not the whole task: its signed URL names the proxy's port
    assert proxy.connections == 2
    assert [e.id for e in seen] == [e.id for e in finished.events]


def test_wait_falls_back_to_polling_when_the_event_stream_keeps_failing(
    finished: Finished, shared_server: LiveServer, connect: Connect, proxy_for: MakeProxy
) -> None:
    proxy = proxy_for(shared_server, [0, 0])  # both stream attempts (retries=1) die; the poll gets through
    with connect(proxy.url, ADMIN_KEY, retries=1) as flaky:
        done = flaky.wait(finished.task.id)
    assert (done.id, done.status, done.output_meta) == (
        finished.task.id,
        "completed",
        finished.task.output_meta,
    )
    assert proxy.connections == 3


# Cancelling --------------------------------------------------------------------------------------


def test_cancel_stops_queued_and_running_tasks_and_refuses_finished_ones(client: AnyClient) -> None:
    running = client.submit("kinema/tiny", LONG)
    queued = client.run("kinema/tiny", SMALL, wait=False)
    assert queued.status is TaskStatus.queued and queued.output is None
    assert queued.urls.events.endswith(f"/v1/tasks/{queued.id}/events")
    with pytest.raises(WaitTimeout):
        client.wait(queued.id, timeout=0.3)

    cancelled = client.cancel(queued.id)
    assert cancelled.status is TaskStatus.cancelled
    with pytest.raises(ApiError) as caught:
        client.cancel(queued.id)
    assert (caught.value.status, caught.value.code) == (409, "conflict")

    client.cancel(running.id)
    stopped = client.wait(running.id, timeout=60)
    assert stopped.status is TaskStatus.cancelled and stopped.output is None
    page = client.list(status=TaskStatus.cancelled)
    assert {t.id for t in page.data} == {running.id, queued.id}


# Errors ------------------------------------------------------------------------------------------


def test_a_wrong_key_is_a_401_api_error(shared_server: LiveServer, connect: Connect) -> None:
    with connect(shared_server.url, "kin_wrong") as client, pytest.raises(ApiError) as caught:
        client.list()
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")
    assert caught.value.message == "invalid API key"


def test_bad_input_is_a_422_api_error_with_the_servers_details(client: AnyClient) -> None:
    with pytest.raises(ApiError) as caught:
        client.submit("kinema/tiny", {"prompt": "x", "colour": "red"})
    assert (caught.value.status, caught.value.code) == (422, "invalid_input")
    assert "colour: unknown field" in caught.value.message
    assert caught.value.details[0]["field"] == "colour"
    assert client.list().data == []


def test_unknown_apps_and_malformed_names_are_errors(shared: AnyClient) -> None:
    with pytest.raises(ApiError) as caught:
        shared.submit("nobody/nothing", SMALL)
    assert (caught.value.status, caught.value.code) == (404, "app_not_found")
    with pytest.raises(InvalidInput):
        shared.submit("tiny", SMALL)


def test_apps_uploads_and_the_account(shared: AnyClient, tmp_path: Path) -> None:
    assert "kinema/tiny" in [a.id for a in shared.apps()]
    assert shared.app("kinema/tiny").fps == 24
    image = tmp_path / "red.png"
    image.write_bytes(base64.b64decode(png_data_uri(64, 48).split(",", 1)[1]))
    uploaded = shared.upload(image)
    assert (uploaded.filename, uploaded.content_type, uploaded.purpose) == ("red.png", "image/png", "input")
    assert shared.file(uploaded.id).size_bytes == image.stat().st_size
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ApiError) as caught:
        shared.upload(text)
    assert caught.value.status == 415
    assert shared.me().name == "admin"


def test_keys_are_created_listed_and_revoked(
    shared: AnyClient, shared_server: LiveServer, connect: Connect
) -> None:
    created = shared.create_key("ci")
    assert created.name == "ci" and created.revoked_at is None
    listed = shared.keys()
    assert created.id in [k.id for k in listed]
    with connect(shared_server.url, created.key) as by_new_key:
        assert by_new_key.me().name == "admin"
    revoked = shared.revoke_key(created.id)
    assert revoked.id == created.id and revoked.revoked_at is not None
    with connect(shared_server.url, created.key) as by_revoked_key, pytest.raises(ApiError) as caught:
        by_revoked_key.me()
    assert caught.value.status == 401


# Retries -----------------------------------------------------------------------------------------


def test_a_closed_port_raises_connection_failed_after_quick_retries(connect: Connect) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with (
        connect(f"http://127.0.0.1:{port}", ADMIN_KEY, retries=2) as client,
        pytest.raises(ConnectionFailed) as caught,
    ):
        client.get("tsk_missing")
    elapsed = time.monotonic() - started
    assert "cannot reach the kinema server" in caught.value.message
    assert 0.4 < elapsed < 5  # the transport retried (backoff 0 s, then 0.5 s) and then gave up


def test_gets_are_retried_after_a_dropped_connection_but_posts_are_not(
    client: AnyClient, live_server: LiveServer, connect: Connect, proxy_for: MakeProxy
) -> None:
    proxy = proxy_for(live_server, [0])
    with connect(proxy.url, ADMIN_KEY) as flaky:
        assert flaky.list().data == []
    assert proxy.connections == 2

    proxy = proxy_for(live_server, [0])
    with connect(proxy.url, ADMIN_KEY) as flaky, pytest.raises(ConnectionFailed):
        flaky.submit("kinema/tiny", SMALL)  # the server may have seen it: not sent again
    assert proxy.connections == 1
    assert client.list().data == []


# Proxies from the environment ---------------------------------------------------------------------

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer", "upgrade"}
)


class RecordingProxy:
    """A forward HTTP proxy on loopback that records each request line and forwards it, to loopback only."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        recorded = self.requests = []  # type: list[str]

        class Handler(BaseHTTPRequestHandler):
            def forward(self) -> None:
                import http.client
                from urllib.parse import urlsplit

                target = urlsplit(self.path)
                recorded.append(f"{self.command} {self.path}")
                if target.scheme != "http" or target.hostname != "127.0.0.1" or target.port is None:
                    self.send_error(502, "this test proxy forwards to 127.0.0.1 only")
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                upstream = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
                try:
                    path = target.path + (f"?{target.query}" if target.query else "")
                    upstream.request(self.command, path, body=body or None, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                finally:
                    upstream.close()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in HOP_HEADERS | {"content-length", "transfer-encoding"}:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = forward

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1})
        self.thread.daemon = True
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def env_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingProxy]:
    """A recording proxy named by HTTP_PROXY, with every other proxy variable cleared for the test."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    proxy = RecordingProxy()
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    try:
        yield proxy
    finally:
        proxy.close()


def test_the_clients_send_through_the_http_proxy_of_the_environment(
    env_proxy: RecordingProxy, shared_server: LiveServer, connect: Connect
) -> None:
    with connect(shared_server.url, ADMIN_KEY) as client:
        assert "kinema/tiny" in [a.id for a in client.apps()]
        with pytest.raises(ApiError) as caught:
            client.get("tsk_nope")
        assert caught.value.status == 404  # the server's own answer, relayed
        assert isinstance(client.list(limit=1), TaskPage)
    assert env_proxy.requests == [
        f"GET {shared_server.url}/v1/apps",
        f"GET {shared_server.url}/v1/tasks/tsk_nope",
        f"GET {shared_server.url}/v1/tasks?limit=1",
    ]


def test_no_proxy_and_trust_env_false_go_straight_to_the_server(
    env_proxy: RecordingProxy,
    shared_server: LiveServer,
    connect: Connect,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with connect(shared_server.url, ADMIN_KEY, trust_env=False) as client:
        client.apps()
    monkeypatch.setenv("NO_PROXY", "example.org,127.0.0.1")
    with connect(shared_server.url, ADMIN_KEY) as client:
        client.apps()
    assert env_proxy.requests == []

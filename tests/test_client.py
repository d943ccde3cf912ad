"""kinema.Client and kinema.AsyncClient against a live server: runs, events, cancels, downloads, retries."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kinema import AsyncClient, Client
from kinema.client import ApiError, ConnectionFailed, Event, Task, TaskPage, WaitTimeout
from kinema.errors import InvalidInput
from kinema.tasks.models import TaskStatus
from tests.conftest import ADMIN_KEY, LiveServer, assert_mp4, png_data_uri

SMALL = {"prompt": "A red kite over a beach", "aspect_ratio": "1:1", "duration": 0.5}
TINY = {"prompt": "A blink", "aspect_ratio": "1:1", "duration": 0.1}
# Long enough on two CPU cores to still be running when the test cancels it.
LONG = {"prompt": "A long slow pan", "duration": 2, "resolution": "1080p"}


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
def finished(shared_server: LiveServer) -> Finished:
    """A completed SMALL run on the shared server and the events run() saw while following it live."""
    events: list[Event] = []
    with Client(shared_server.url, ADMIN_KEY) as client:
        task = client.run("kinema/tiny", SMALL, on_event=events.append)
    return Finished(task, events)


@pytest.fixture
def shared(shared_server: LiveServer) -> Iterator[Client]:
    with Client(shared_server.url, ADMIN_KEY) as client:
        yield client


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[Client]:
    """A client of a fresh server of the test's own."""
    with Client(live_server.url, ADMIN_KEY) as c:
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
    finished: Finished, shared: Client, tmp_path: Path
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


def test_async_client_runs_lists_and_downloads(shared_server: LiveServer, tmp_path: Path) -> None:
    async def main() -> tuple[Task, Path, TaskPage, list[Event]]:
        async with AsyncClient(shared_server.url, ADMIN_KEY) as client:
            seen: list[Event] = []
            task = await client.run("kinema/tiny", TINY, on_event=seen.append)
            path = await client.download(task, tmp_path / "async.mp4")
            page = await client.list(status="completed", app="kinema/tiny")
            return task, path, page, seen

    task, path, page, seen = asyncio.run(main())
    assert task.status is TaskStatus.completed
    assert_mp4(path, width=720, height=720, duration=0.1, fps=24, audio=False)
    assert task.id in [t.id for t in page.data]
    assert seen[-1].event == "task" and seen[-1].task == task


def test_download_resumes_after_a_dropped_connection_and_never_leaves_a_partial_file(
    finished: Finished,
    shared: Client,
    shared_server: LiveServer,
    tmp_path: Path,
    proxy_for: MakeProxy,
) -> None:
    assert finished.task.output is not None
    whole = shared.download(finished.task, tmp_path / "direct.mp4").read_bytes()

    cut = proxy_for(shared_server, [4000])
    with Client(cut.url, ADMIN_KEY, retries=0) as fragile, pytest.raises(ConnectionFailed):
        fragile.download(via(cut, shared_server, finished.task.output.video), tmp_path / "broken.mp4")
    assert not (tmp_path / "broken.mp4").exists()
    assert partial_files(tmp_path) == []

    resumed = proxy_for(shared_server, [4000])
    with Client(resumed.url, ADMIN_KEY) as patient:
        url = via(resumed, shared_server, finished.task.output.video)
        assert patient.download(url, tmp_path / "resumed.mp4").read_bytes() == whole
    assert resumed.connections == 2


def test_download_of_a_bad_url_raises_and_writes_nothing(
    shared: Client, shared_server: LiveServer, tmp_path: Path
) -> None:
    target = tmp_path / "never.mp4"
    with pytest.raises(ApiError) as caught:
        shared.download(f"{shared_server.url}/files/file_nope?expires=1&signature=bad", target)
    assert caught.value.status == 403
    assert not target.exists()
    assert partial_files(tmp_path) == []


# Events ------------------------------------------------------------------------------------------


def test_run_follows_the_events_in_order_ending_with_the_task(finished: Finished) -> None:
    events = finished.events
    ids = [int(e.id) for e in events]
    assert ids == sorted(set(ids))
    assert events[0].event == "status" and events[0].data == {"status": "queued"}
    assert {"status": "running"} in [e.data for e in events if e.event == "status"]
    steps = [e.progress for e in events if e.progress is not None and e.progress.stage == "denoise"]
    assert steps and steps[-1].step == steps[-1].total
    assert any(e.message and "denoising" in e.message for e in events)
    final = events[-1]
    assert final.event == "task" and final.task == finished.task


def test_stream_replays_the_events_and_resumes_after_last_event_id(
    finished: Finished, shared: Client
) -> None:
    events = list(shared.stream(finished.task.id))
    assert [e.id for e in events] == [e.id for e in finished.events]
    assert events[-1].task is not None and events[-1].task.status is TaskStatus.completed

    middle = len(events) // 2
    later = list(shared.stream(finished.task.id, last_event_id=events[middle].id))
    assert [e.id for e in later] == [e.id for e in events[middle + 1 :]]


def test_wait_resumes_the_event_stream_after_the_connection_drops(
    finished: Finished,
    shared_server: LiveServer,
    proxy_for: MakeProxy,
) -> None:
    proxy = proxy_for(shared_server, [700])
    seen: list[Event] = []
    with Client(proxy.url, ADMIN_KEY) as flaky:
        done = flaky.wait(finished.task.id, on_event=seen.append)
    assert done.status is TaskStatus.completed
    assert proxy.connections == 2
    assert [e.id for e in seen] == [e.id for e in finished.events]


def test_wait_falls_back_to_polling_when_the_event_stream_keeps_failing(
    finished: Finished, shared_server: LiveServer, proxy_for: MakeProxy
) -> None:
    proxy = proxy_for(shared_server, [0, 0])  # both stream attempts (retries=1) die; the poll gets through
    with Client(proxy.url, ADMIN_KEY, retries=1) as flaky:
        done = flaky.wait(finished.task.id)
    assert (done.id, done.status, done.output_meta) == (
        finished.task.id,
        "completed",
        finished.task.output_meta,
    )
    assert proxy.connections == 3


# Cancelling --------------------------------------------------------------------------------------


def test_cancel_stops_queued_and_running_tasks_and_refuses_finished_ones(client: Client) -> None:
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


def test_a_wrong_key_is_a_401_api_error(live_server: LiveServer) -> None:
    with Client(live_server.url, "kin_wrong") as client, pytest.raises(ApiError) as caught:
        client.list()
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")
    assert caught.value.message == "invalid API key"


def test_bad_input_is_a_422_api_error_with_the_servers_details(client: Client) -> None:
    with pytest.raises(ApiError) as caught:
        client.submit("kinema/tiny", {"prompt": "x", "colour": "red"})
    assert (caught.value.status, caught.value.code) == (422, "invalid_input")
    assert "colour: unknown field" in caught.value.message
    assert caught.value.details[0]["field"] == "colour"
    assert client.list().data == []


def test_unknown_apps_and_malformed_names_are_errors(client: Client) -> None:
    with pytest.raises(ApiError) as caught:
        client.submit("nobody/nothing", SMALL)
    assert (caught.value.status, caught.value.code) == (404, "app_not_found")
    with pytest.raises(InvalidInput):
        client.submit("tiny", SMALL)


def test_apps_and_uploads(client: Client, tmp_path: Path) -> None:
    assert "kinema/tiny" in [a.id for a in client.apps()]
    assert client.app("kinema/tiny").fps == 24
    image = tmp_path / "red.png"
    image.write_bytes(base64.b64decode(png_data_uri(64, 48).split(",", 1)[1]))
    uploaded = client.upload(image)
    assert (uploaded.filename, uploaded.content_type, uploaded.purpose) == ("red.png", "image/png", "input")
    assert client.file(uploaded.id).size_bytes == image.stat().st_size
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ApiError) as caught:
        client.upload(text)
    assert caught.value.status == 415


# Retries -----------------------------------------------------------------------------------------


def test_a_closed_port_raises_connection_failed_after_quick_retries() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with (
        Client(f"http://127.0.0.1:{port}", ADMIN_KEY, retries=2) as client,
        pytest.raises(ConnectionFailed) as caught,
    ):
        client.get("tsk_missing")
    elapsed = time.monotonic() - started
    assert "cannot reach the kinema server" in caught.value.message
    assert 0.4 < elapsed < 5  # the transport retried (backoff 0 s, then 0.5 s) and then gave up


def test_gets_are_retried_after_a_dropped_connection_but_posts_are_not(
    client: Client, live_server: LiveServer, proxy_for: MakeProxy
) -> None:
    proxy = proxy_for(live_server, [0])
    with Client(proxy.url, ADMIN_KEY) as flaky:
        assert flaky.list().data == []
    assert proxy.connections == 2

    proxy = proxy_for(live_server, [0])
    with Client(proxy.url, ADMIN_KEY) as flaky, pytest.raises(ConnectionFailed):
        flaky.submit("kinema/tiny", SMALL)
    assert proxy.connections == 1
    assert client.list().data == []

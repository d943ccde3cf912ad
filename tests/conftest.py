"""Shared fixtures: real settings on temp dirs, the tiny model built once, and an ffprobe reader."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from kinema.engines.cache import WarmModels
from kinema.engines.tiny import save_tiny_model
from kinema.settings import Settings
from kinema.storage.local import LocalStorage
from kinema.tasks.worker import RunContext


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny LTX-2 model saved once per session with save_pretrained, as on a user's machine."""
    return save_tiny_model(tmp_path_factory.mktemp("models") / "kinema-tiny")


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path) -> Settings:
    """Settings on a temp data dir whose tiny model is already in place (no rebuild per test)."""
    data_dir = tmp_path / "data"
    (data_dir / "models").mkdir(parents=True)
    (data_dir / "models" / "kinema-tiny").symlink_to(tiny_model_dir, target_is_directory=True)
    return Settings(data_dir=data_dir, device="cpu", _env_file=None)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def warm() -> WarmModels:
    """One warm cache for the session, as a long-running worker has."""
    return WarmModels(capacity=2)


@pytest.fixture
def ctx(settings: Settings, warm: WarmModels) -> RunContext:
    return RunContext(
        settings=settings, storage=LocalStorage(settings.outputs_dir), warm=warm, allow_local_paths=True
    )


@pytest.fixture
def kinema_env(settings: Settings, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for CLI subprocesses: the same temp data dir, CPU."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("KINEMA_")}
    env.update(
        {
            "KINEMA_DATA_DIR": str(settings.data_dir),
            "KINEMA_DEVICE": "cpu",
            "HF_HUB_OFFLINE": "1",
            "COLUMNS": "200",
        }
    )
    yield env


def ffprobe(path: Path) -> dict[str, Any]:
    """ffprobe's JSON for a file: an independent reader, not our own probe code."""
    assert shutil.which("ffprobe"), "ffprobe is required (apt-get install ffmpeg)"
    result = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-probesize",
            "200M",
            "-analyzeduration",
            "100M",
            "-print_format",
            "json",
            "-show_streams",
            "-show_format",
            "-count_frames",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def streams(info: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [s for s in info["streams"] if s["codec_type"] == kind]


def assert_mp4(
    path: Path, *, width: int, height: int, duration: float, fps: int, audio: bool
) -> dict[str, Any]:
    """Decode the file with ffprobe and check codec, exact size, duration within one frame, audio presence."""
    info = ffprobe(path)
    assert "mp4" in info["format"]["format_name"]
    (video,) = streams(info, "video")
    assert video["codec_name"] == "h264"
    assert video["profile"] == "High"
    assert video["pix_fmt"] == "yuv420p"
    assert (video["width"], video["height"]) == (width, height)
    assert abs(float(video["duration"]) - duration) <= 1 / fps + 1e-6
    assert int(video["nb_read_frames"]) == round(duration * fps)
    audio_streams = streams(info, "audio")
    if audio:
        (track,) = audio_streams
        assert track["codec_name"] == "aac"
        assert track["profile"] == "LC"
        assert track["channels"] == 2
        assert abs(float(track["duration"]) - duration) <= 1 / fps
    else:
        assert audio_streams == []
    return info


def png_data_uri(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# Servers and databases ---------------------------------------------------------------------------

ADMIN_KEY = "kin_test_admin_key"


class LiveServer:
    """The real ASGI app under uvicorn on a free loopback port, in a thread; stops itself on exit."""

    def __init__(self, settings: Settings, warm: WarmModels) -> None:
        import socket

        import uvicorn

        from kinema.api.app import create_app

        self.settings = settings
        self.announced: list[str] = []
        self.app = create_app(settings, warm=warm, announce_key=self.announced.append)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=5, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread: Any = None

    def start(self) -> LiveServer:
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(30)
        self.socket.close()

    @property
    def state(self) -> Any:
        return self.app.state.kinema

    def client(self, key: str = ADMIN_KEY) -> Any:
        import httpx

        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def server_settings(settings: Settings, **overrides: Any) -> Settings:
    """Settings for a test server: a known admin key, a fixed secret, short waits."""
    from pydantic import SecretStr

    values: dict[str, Any] = {
        "admin_key": SecretStr(ADMIN_KEY),
        "secret_key": SecretStr("test-secret"),
        "run_wait_s": 60.0,
    }
    values.update(overrides)
    return settings.model_copy(update=values)


@pytest.fixture
def live_server(settings: Settings, warm: WarmModels) -> Iterator[LiveServer]:
    """A running kinema server on SQLite in the test's temp data dir."""
    server = LiveServer(server_settings(settings), warm).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shared_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, warm: WarmModels
) -> Iterator[LiveServer]:
    """One server per test module, for tests that only read finished tasks (the tiny model runs once)."""
    data_dir = tmp_path_factory.mktemp("shared") / "data"
    (data_dir / "models").mkdir(parents=True)
    (data_dir / "models" / "kinema-tiny").symlink_to(tiny_model_dir, target_is_directory=True)
    settings = Settings(data_dir=data_dir, device="cpu", _env_file=None)  # type: ignore[call-arg]
    server = LiveServer(server_settings(settings), warm).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def api(live_server: LiveServer) -> Iterator[Any]:
    """An httpx client for live_server, authenticated with the admin key."""
    with live_server.client() as client:
        yield client


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a loopback port (Debian's postgresql binaries), stopped at exit."""
    from tests.postgres import PostgresMissing, postgres_bindir, throwaway_postgres

    try:
        postgres_bindir()
    except PostgresMissing as exc:
        pytest.fail(str(exc))
    with throwaway_postgres() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL server."""
    from tests.postgres import fresh_database

    with fresh_database(postgres_server) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store suite runs on both databases kinema supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("postgres_url"))


# Google's API, faked on loopback (the Veo apps' tests) ----------------------------------------------


@pytest.fixture(scope="module")
def google() -> Iterator[Any]:
    """A fake of Google's Veo endpoints speaking the SDK's wire format, one per test module."""
    from tests.engines.fake_google import FakeGoogle

    fake = FakeGoogle().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def fake(google: Any) -> Any:
    """The module's fake Google, with its scripted behaviour and operations reset for this test."""
    google.reset()
    return google

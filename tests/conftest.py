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

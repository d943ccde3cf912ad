"""The `kinema` command as a user runs it: a subprocess, real files, ffprobe on the result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import assert_mp4


def kinema(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kinema.cli.main", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_app_run_with_audio_writes_the_mp4_and_prints_the_task_json(
    kinema_env: dict[str, str], tmp_path: Path
) -> None:
    target = tmp_path / "clips" / "out.mp4"
    result = kinema(
        kinema_env,
        "app",
        "run",
        "kinema/tiny",
        "--input",
        '{"prompt": "A drone shot rising over a foggy forest", "generate_audio": true, "duration": 1}',
        "-o",
        str(target),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    task = json.loads(result.stdout)
    assert task["status"] == "completed"
    assert task["app"] == "kinema/tiny"
    assert task["input"]["generate_audio"] is True
    assert task["output"]["video"].startswith("file://")
    meta = task["output_meta"]
    assert (meta["width"], meta["height"], meta["frames"], meta["has_audio"]) == (1280, 720, 24, True)
    assert meta["billing"] == {
        "billable_seconds": "1",
        "rate_per_second": "0.25",
        "cost": "0.25",
        "currency": "USD",
    }
    assert task["error"] is None
    assert_mp4(target, width=1280, height=720, duration=1.0, fps=24, audio=True)
    assert target.read_bytes() == Path(task["output"]["video"].removeprefix("file://")).read_bytes()


def test_image_to_video_from_a_local_path_and_input_file(kinema_env: dict[str, str], tmp_path: Path) -> None:
    image = tmp_path / "landscape.jpg"
    Image.new("RGB", (640, 640), (30, 120, 200)).save(image)
    spec = tmp_path / "input.json"
    spec.write_text(
        json.dumps({"prompt": "The camera slowly zooms out", "image": "./landscape.jpg", "duration": 0.5})
    )
    result = kinema(
        kinema_env, "app", "run", "kinema/tiny", "--input", f"@{spec}", "-o", "clip.mp4", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "720x720 (720p, 1:1)" in result.stdout
    assert "cost" in result.stdout
    assert_mp4(tmp_path / "clip.mp4", width=720, height=720, duration=0.5, fps=24, audio=False)


@pytest.mark.parametrize(
    ("input_json", "message"),
    [
        ('{"prompt": "x", "colour": "red"}', "colour: unknown field"),
        ('{"prompt": "x", "duration": 99}', "duration"),
        ('{"prompt": "x", "resolution": "8K"}', "resolution"),
        ('{"prompt": ', "not valid JSON"),
        ('{"prompt": "x", "image": "./missing.png"}', "missing.png"),
        ('{"prompt": "x", "image": "https://127.0.0.1/cat.png"}', "127.0.0.1"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line_and_writes_nothing(
    kinema_env: dict[str, str], tmp_path: Path, input_json: str, message: str
) -> None:
    target = tmp_path / "never.mp4"
    result = kinema(kinema_env, "app", "run", "kinema/tiny", "--input", input_json, "-o", str(target))
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert not target.exists()
    assert not (Path(kinema_env["KINEMA_DATA_DIR"]) / "outputs").exists()


def test_unknown_app_is_a_clear_error(kinema_env: dict[str, str]) -> None:
    result = kinema(kinema_env, "app", "run", "nobody/nothing", "--input", '{"prompt": "x"}')
    assert result.returncode == 2
    assert "no app named 'nobody/nothing'" in result.stderr


def test_real_app_without_weights_says_how_to_get_them(kinema_env: dict[str, str], tmp_path: Path) -> None:
    env = {**kinema_env, "KINEMA_HF_CACHE_DIR": str(tmp_path / "empty-cache")}
    result = kinema(env, "app", "run", "lightricks/ltx-2-fast", "--input", '{"prompt": "clouds"}')
    assert result.returncode == 2  # refused before any work, in one line
    assert len(result.stderr.strip().splitlines()) == 1
    assert "kinema models pull lightricks/ltx-2-fast" in result.stderr
    assert "Traceback" not in result.stderr


def test_app_list_and_show(kinema_env: dict[str, str]) -> None:
    listing = kinema(kinema_env, "app", "list", "--json")
    assert listing.returncode == 0
    ids = [a["id"] for a in json.loads(listing.stdout)]
    assert ids[0] == "lightricks/ltx-2-fast" and "kinema/tiny" in ids
    shown = kinema(kinema_env, "app", "show", "kinema/tiny")
    assert shown.returncode == 0
    assert "noise by design" in shown.stdout
    assert "generate_audio" in shown.stdout and "0.35" in shown.stdout
    described = json.loads(kinema(kinema_env, "app", "show", "lightricks/ltx-2-fast", "--json").stdout)
    assert described["input_schema"]["properties"]["duration"]["maximum"] == 20.0
    assert described["pricing"]["per_second"]["4K video+audio"] == "0.35"


def test_models_pull_for_the_builtin_model_needs_no_download(kinema_env: dict[str, str]) -> None:
    result = kinema(kinema_env, "models", "pull", "kinema/tiny")
    assert result.returncode == 0, result.stderr
    assert "needs no download" in result.stdout

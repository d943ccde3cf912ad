"""`kinema worker`'s choices before any process starts: which apps it serves, what each child gets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kinema.apps.registry import list_apps
from kinema.cli.worker import child_command, child_envs, served_apps
from kinema.settings import Settings

KINEMA = str(Path(sys.executable).parent / "kinema")


def test_a_worker_serves_the_apps_this_machine_can_run_and_says_why_not_the_others(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, google_api_key=None, _env_file=None)  # type: ignore[call-arg]
    serve, skipped = served_apps(settings, None)
    assert "kinema/tiny" in serve  # builtin weights: always here
    assert "google/veo-3-1-fast" in skipped and "key" in skipped["google/veo-3-1-fast"].lower()
    assert set(serve) | set(skipped) == {app.id for app in list_apps()}
    assert served_apps(settings, ["google/veo-3-1-fast"]) == (["google/veo-3-1-fast"], {})
    with pytest.raises(ValueError, match="unknown app"):
        served_apps(settings, ["nobody/nothing"])


def test_each_gpu_child_owns_its_gpu_and_only_the_first_runs_provider_threads(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, gpus="2,3", _env_file=None)  # type: ignore[call-arg]
    children = child_envs(settings, processes=1, apps=["kinema/tiny"])
    assert [name for name, _ in children] == ["gpu 2", "gpu 3"]
    assert [env["KINEMA_GPUS"] for _, env in children] == ["2", "3"]
    assert "KINEMA_REMOTE_WORKERS" not in children[0][1] or children[0][1]["KINEMA_REMOTE_WORKERS"] != "0"
    assert children[1][1]["KINEMA_REMOTE_WORKERS"] == "0"
    assert {env["KINEMA_WORKER_APPS"] for _, env in children} == {"kinema/tiny"}
    assert {env["KINEMA_DATA_DIR"] for _, env in children} == {str(tmp_path.resolve())}
    cpu = child_envs(Settings(data_dir=tmp_path, _env_file=None), processes=3, apps=None)  # type: ignore[call-arg]
    assert [name for name, _ in cpu] == ["process 0", "process 1", "process 2"]
    assert all("KINEMA_GPUS" not in env for _, env in cpu)
    assert child_command(["worker"])[-1] == "worker"


def test_an_unknown_app_is_refused_before_anything_starts(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KINEMA_")}
    env["KINEMA_DATA_DIR"] = str(tmp_path)
    done = subprocess.run(
        [KINEMA, "worker", "--apps", "nobody/nothing"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "unknown app(s) nobody/nothing" in done.stderr

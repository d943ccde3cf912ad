"""`kinema models pull/list`, availability in `app list` and GET /v1/apps, and a first run that downloads,
all through the CLI as a user runs it, against a fake Hugging Face hub on loopback."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kinema.engines.cache import WarmModels
from kinema.settings import Settings
from tests.conftest import LiveServer, assert_mp4, server_settings
from tests.e2e.test_cli import kinema
from tests.fakehub import FakeHub, hub_env, write_dummy_repo

REPO = "Lightricks/LTX-2.5-Diffusers"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FakeHub]:
    fake = FakeHub()
    fake.add_repo(REPO, write_dummy_repo("2.5", tmp_path / "served" / "ltx-2.5"))
    with fake.serve() as live:
        yield live


@pytest.fixture
def env(hub: FakeHub, kinema_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """CLI environment: the fake hub, an empty Hugging Face cache of its own, no stored token."""
    return {
        **hub_env(hub.url, kinema_env, tmp_path / "no-token"),
        "KINEMA_HF_CACHE_DIR": str(tmp_path / "cache"),
    }


def listed(env: dict[str, str]) -> dict[str, Any]:
    result = kinema(env, "app", "list", "--json")
    assert result.returncode == 0, result.stderr
    return {a["id"]: a for a in json.loads(result.stdout)}


def test_pull_shows_the_size_first_and_fetches_only_the_fast_apps_files(
    hub: FakeHub, env: dict[str, str]
) -> None:
    result = kinema(env, "models", "pull", "lightricks/ltx-2-fast", "--json")
    assert result.returncode == 0, result.stderr
    pulled = json.loads(result.stdout)
    (announce,) = [line for line in result.stderr.splitlines() if "LTX-2.5 distilled" in line]
    assert re.search(r"\d+ files, [\d.]+ kB, [\d.]+ kB already here; downloading [\d.]+ kB", announce)
    # The size line comes before any weights: the hub's progress starts after it.
    assert result.stderr.index(announce) < result.stderr.index("Fetching")
    fetched = hub.fetched_files(REPO)
    assert fetched == set(pulled["files"])
    assert not any(p.startswith("transformer_full/") for p in fetched)
    assert pulled["generation"] == "2.5" and pulled["downloaded_bytes"] > 48_000


def test_app_list_says_whether_weights_are_here_and_the_download_size(
    hub: FakeHub, env: dict[str, str]
) -> None:
    before = listed(env)
    fast = before["lightricks/ltx-2-fast"]
    assert (
        fast["available"] is False
        and "kinema models pull lightricks/ltx-2-fast" in fast["unavailable_reason"]
    )
    assert fast["weights"]["present"] is False and fast["weights"]["download_bytes"] > 10e9
    assert fast["weights"]["download_size"].endswith("GB") and fast["weights"]["download_estimated"]
    assert before["kinema/tiny"]["available"] and before["kinema/tiny"]["weights"]["present"]
    assert before["google/veo-3-1"]["weights"] is None
    table = kinema(env, "app", "list")
    assert "GB to download" in table.stdout
    assert hub.log == []  # listing never touches the network

    assert kinema(env, "models", "pull", "lightricks/ltx-2-fast").returncode == 0
    after = listed(env)
    assert (
        after["lightricks/ltx-2-fast"]["available"] and after["lightricks/ltx-2-fast"]["weights"]["present"]
    )
    assert after["lightricks/ltx-2-fast"]["weights"]["generation"] == "2.5"
    full = after["lightricks/ltx-2"]["weights"]  # same repo, but transformer_full/ is not here: exact size
    assert full["present"] is False and not full["download_estimated"]
    assert 48_000 <= full["download_bytes"] < 100_000
    shown = kinema(env, "app", "show", "lightricks/ltx-2")
    assert "weights: Lightricks/LTX-2.5-Diffusers (full): not here" in shown.stdout


def test_models_list_shows_generation_size_and_the_apps_served(hub: FakeHub, env: dict[str, str]) -> None:
    empty = kinema(env, "models", "list")
    assert empty.returncode == 0 and "no models downloaded yet" in empty.stdout
    assert kinema(env, "models", "pull", "lightricks/ltx-2-fast").returncode == 0
    result = kinema(env, "models", "list", "--json")
    assert result.returncode == 0, result.stderr
    (model,) = json.loads(result.stdout)
    assert model["source"] == REPO and model["generation"] == "2.5"
    assert model["size_bytes"] > 48_000 and model["serves"] == ["lightricks/ltx-2-fast"]
    table = kinema(env, "models", "list")
    assert REPO in table.stdout and "LTX-2.5" in table.stdout


def test_gated_repo_pull_says_accept_the_licence_and_set_hf_token(hub: FakeHub, env: dict[str, str]) -> None:
    hub.repos[REPO].gated = True
    result = kinema(env, "models", "pull", "lightricks/ltx-2-fast")
    assert result.returncode == 1
    assert f"https://huggingface.co/{REPO}" in result.stderr and "HF_TOKEN" in result.stderr
    assert "licence" in result.stderr and "Traceback" not in result.stderr
    ok = kinema({**env, "HF_TOKEN": hub.token}, "models", "pull", "lightricks/ltx-2-fast")
    assert ok.returncode == 0, ok.stderr


def test_run_without_weights_fails_at_once_naming_the_pull_command(hub: FakeHub, env: dict[str, str]) -> None:
    result = kinema(env, "app", "run", "lightricks/ltx-2", "--input", '{"prompt": "clouds"}')
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "kinema models pull lightricks/ltx-2" in result.stderr
    assert hub.log == []


def test_api_lists_weights_and_refuses_a_run_without_them_before_queueing(
    settings: Settings, warm: WarmModels, tmp_path: Path
) -> None:
    served = server_settings(settings, hf_cache_dir=tmp_path / "empty-cache")
    server = LiveServer(served, warm).start()
    try:
        with server.client() as api:
            apps = {a["id"]: a for a in api.get("/v1/apps").json()["data"]}
            detail = api.get("/v1/apps/lightricks/ltx-2-fast").json()
            refused = api.post("/v1/apps/lightricks/ltx-2-fast/run", json={"prompt": "x", "duration": 1})
            tasks = api.get("/v1/tasks").json()["data"]
        fast = apps["lightricks/ltx-2-fast"]
        assert fast["available"] is False and fast["weights"]["present"] is False
        assert fast["weights"]["source"] == REPO and fast["weights"]["download_size"].endswith("GB")
        assert apps["kinema/tiny"]["weights"]["present"] is True and apps["google/veo-3-1"]["weights"] is None
        assert detail["weights"] == fast["weights"] and detail["available"] is False
        assert refused.status_code == 503
        error = refused.json()["error"]
        assert (
            error["code"] == "app_unavailable"
            and "kinema models pull lightricks/ltx-2-fast" in error["message"]
        )
        assert tasks == []
    finally:
        server.stop()


def test_first_run_with_download_allowed_fetches_the_tiny_repo_and_writes_the_mp4(
    kinema_env: dict[str, str], tmp_path: Path, tiny_model_dir: Path
) -> None:
    hub = FakeHub()
    hub.add_repo(REPO, tiny_model_dir)  # a loadable tiny LTX-2.5 in the real layout (save_tiny_repo)
    with hub.serve() as live:
        env = {
            **hub_env(live.url, kinema_env, tmp_path / "no-token"),
            "KINEMA_HF_CACHE_DIR": str(tmp_path / "cache"),
            "KINEMA_ALLOW_DOWNLOAD": "1",
        }
        target = tmp_path / "out.mp4"
        result = kinema(
            env,
            "app",
            "run",
            "lightricks/ltx-2-fast",
            "-o",
            str(target),
            "--input",
            '{"prompt": "x", "duration": 1}',
        )
    assert result.returncode == 0, result.stderr
    assert not any(p.startswith("transformer_full/") for p in hub.fetched_files(REPO))
    assert_mp4(target, width=1280, height=720, duration=1.0, fps=24, audio=False)

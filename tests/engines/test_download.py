"""Downloads through the real huggingface_hub code against a fake hub on loopback serving real layouts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kinema.engines.loading import (
    DownloadPlan,
    download_weights,
    resolve_weights,
    stored_models,
    weights_status,
)
from kinema.engines.ltx_recipes import LTX2_WEIGHTS
from kinema.engines.registry import identify_model
from kinema.errors import ModelNotAvailable
from tests.fakehub import FakeHub, point_hub_client_at, write_dummy_repo

REPO = "Lightricks/LTX-2.5-Diffusers"
LORA = "ltx-2.5-22b-distilled-lora-450-bf16.safetensors"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """The fake hub serving a dummy LTX-2.5 repo, with this process's hub client pointed at it."""
    fake = FakeHub()
    fake.add_repo(REPO, write_dummy_repo("2.5", tmp_path / "served" / "ltx-2.5"))
    with fake.serve() as live:
        point_hub_client_at(live.url, monkeypatch, tmp_path / "no-token")
        yield live


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "hub-cache"


def test_fast_app_download_fetches_only_the_distilled_files(hub: FakeHub, cache: Path) -> None:
    plans: list[DownloadPlan] = []
    path = download_weights(REPO, LTX2_WEIGHTS, variant="distilled", cache_dir=cache, on_plan=plans.append)
    fetched = hub.fetched_files(REPO)
    assert not any(p.startswith(("transformer_full/", "diffusion_decoder/")) for p in fetched), fetched
    assert LORA not in fetched and "README.md" not in fetched
    assert {
        "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
        "latent_upsampler/config.json",
    } <= fetched
    assert {"tokenizer/tokenizer.json", "text_encoder/model-00002-of-00002.safetensors"} <= fetched
    (plan,) = plans
    assert plan.generation == "2.5" and set(plan.files) == fetched
    status = weights_status(REPO, LTX2_WEIGHTS, "distilled", cache)
    assert status.present and status.path == path and status.generation == "2.5"


def test_full_app_download_takes_transformer_full_and_the_lora(hub: FakeHub, cache: Path) -> None:
    download_weights(REPO, LTX2_WEIGHTS, variant="full", cache_dir=cache)
    fetched = hub.fetched_files(REPO)
    assert "transformer_full/diffusion_pytorch_model-00002-of-00002.safetensors" in fetched
    assert LORA in fetched
    assert not any(p.startswith("transformer/") and p.endswith(".safetensors") for p in fetched)


def test_size_is_known_before_any_weights_are_fetched(hub: FakeHub, cache: Path) -> None:
    seen: list[tuple[int, set[str]]] = []

    def on_plan(plan: DownloadPlan) -> None:
        seen.append((plan.missing_bytes, {p for p in hub.fetched_files(REPO) if p.endswith(".safetensors")}))

    download_weights(REPO, LTX2_WEIGHTS, variant="distilled", cache_dir=cache, on_plan=on_plan)
    ((missing, weights_before),) = seen
    served = hub.repos[REPO].root
    plan_bytes = sum((served / p).stat().st_size for p in hub.fetched_files(REPO))
    assert weights_before == set()  # only model_index.json and configs had come down
    assert (
        missing > 48_000 and abs(missing - plan_bytes) < 20_000
    )  # configs fetched before the plan don't count


def test_interrupted_file_resumes_with_a_range_request(
    hub: FakeHub, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    # The client writes whole chunks (10 MB by default); small ones let a 24 kB file show the resume point.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1_000)
    shard = "transformer/diffusion_pytorch_model-00001-of-00002.safetensors"
    hub.interrupt_once[f"{REPO}/{shard}"] = 10_000
    path = download_weights(REPO, LTX2_WEIGHTS, variant="distilled", cache_dir=cache)
    gets = [e for e in hub.log if e.method == "GET" and e.path.endswith(shard)]
    assert [e.range for e in gets] == [None, "bytes=10000-"]
    assert gets[1].status == 206
    assert (path / shard).read_bytes() == (hub.repos[REPO].root / shard).read_bytes()


def test_a_failed_download_rerun_fetches_only_what_is_missing(hub: FakeHub, cache: Path) -> None:
    shard = "transformer/diffusion_pytorch_model-00002-of-00002.safetensors"
    hub.fail_once.add(f"{REPO}/{shard}")
    with pytest.raises(ModelNotAvailable, match="run the same command again"):
        download_weights(REPO, LTX2_WEIGHTS, variant="distilled", cache_dir=cache)
    status = weights_status(REPO, LTX2_WEIGHTS, "distilled", cache)
    assert not status.present and status.download_exact
    assert status.download_bytes == (hub.repos[REPO].root / shard).stat().st_size
    hub.log.clear()
    download_weights(REPO, LTX2_WEIGHTS, variant="distilled", cache_dir=cache)
    assert {p for p in hub.fetched_files(REPO) if p.endswith(".safetensors")} == {shard}


def test_gated_repo_without_a_token_says_accept_the_licence_and_set_hf_token(
    hub: FakeHub, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.repos[REPO].gated = True
    with pytest.raises(ModelNotAvailable) as info:
        download_weights(REPO, LTX2_WEIGHTS, variant="distilled", cache_dir=cache)
    message = info.value.message
    assert f"https://huggingface.co/{REPO}" in message and "licence" in message and "HF_TOKEN" in message
    assert any(e.status == 401 for e in hub.log)
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(ModelNotAvailable, match="HF_TOKEN"):
        download_weights(REPO, LTX2_WEIGHTS, variant="distilled", cache_dir=cache)
    assert any(e.status == 403 for e in hub.log)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    download_weights(REPO, LTX2_WEIGHTS, variant="distilled", cache_dir=cache)
    assert all(e.authorization == f"Bearer {hub.token}" for e in hub.log[-3:])


def test_missing_weights_are_not_fetched_without_permission(hub: FakeHub, cache: Path) -> None:
    with pytest.raises(ModelNotAvailable) as info:
        resolve_weights(
            "lightricks/ltx-2-fast",
            REPO,
            LTX2_WEIGHTS,
            variant="distilled",
            allow_download=False,
            cache_dir=cache,
        )
    assert "kinema models pull lightricks/ltx-2-fast" in info.value.message
    assert hub.log == []


def test_allowed_download_then_resolves_from_the_cache_offline(hub: FakeHub, cache: Path) -> None:
    path = resolve_weights(
        "lightricks/ltx-2-fast", REPO, LTX2_WEIGHTS, variant="distilled", allow_download=True, cache_dir=cache
    )
    hub.log.clear()
    assert (
        resolve_weights(
            "lightricks/ltx-2-fast",
            REPO,
            LTX2_WEIGHTS,
            variant="distilled",
            allow_download=False,
            cache_dir=cache,
        )
        == path
    )
    assert hub.log == []


def test_status_without_weights_estimates_the_newest_generation(cache: Path) -> None:
    status = weights_status(REPO, LTX2_WEIGHTS, "distilled", cache)
    assert not status.present and status.path is None
    assert status.download_bytes is not None and status.download_bytes > 50e9
    full = weights_status(REPO, LTX2_WEIGHTS, "full", cache)
    assert full.download_bytes is not None and full.download_bytes > status.download_bytes


def test_stored_models_list_generation_and_size(hub: FakeHub, cache: Path, tmp_path: Path) -> None:
    download_weights(REPO, LTX2_WEIGHTS, variant="distilled", cache_dir=cache)
    local = write_dummy_repo("2.0", tmp_path / "local-ltx2")
    found = {m.source: m for m in stored_models(cache, [local], identify_model)}
    assert found[REPO].generation == "2.5" and found[REPO].size_bytes > 48_000
    assert found[str(local)].generation == "2.0"
    assert found[REPO].family == found[str(local)].family == "ltx2"

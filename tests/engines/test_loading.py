"""The real apps' loading path, exercised on tiny weights written with save_pretrained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kinema.apps.registry import LTX2_FAST, LTX2_FULL, TINY
from kinema.domain.tasks import TaskStatus
from kinema.engines.cache import WarmModels
from kinema.engines.device import (
    check_fits,
    choose_placement,
    component_bytes,
    required_bytes,
    safetensors_parameter_count,
)
from kinema.engines.loading import resolve_weights
from kinema.engines.ltx_recipes import LTX2_WEIGHTS
from kinema.errors import InsufficientResources, ModelNotAvailable
from kinema.settings import Settings
from kinema.storage.local import LocalStorage
from kinema.tasks.worker import RunContext, run_task
from tests.conftest import assert_mp4


def test_real_app_loads_weights_from_a_local_directory_via_from_pretrained(
    settings: Settings, tiny_model_dir: Path
) -> None:
    local = settings.model_copy(update={"model_paths": {LTX2_FAST.id: str(tiny_model_dir)}})
    warm = WarmModels()
    ctx = RunContext(settings=local, storage=LocalStorage(local.outputs_dir), warm=warm)
    task = run_task(LTX2_FAST, {"prompt": "loading path", "duration": 1.0, "seed": 3}, ctx)
    assert task.status is TaskStatus.completed, task.error
    assert warm.loads == 1
    assert task.output_meta is not None
    assert task.output_meta.timings["denoise"] > 0
    assert_mp4(
        local.outputs_dir / f"{task.id}.mp4", width=1280, height=720, duration=1.0, fps=24, audio=False
    )


def test_missing_hub_weights_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable) as info:
        resolve_weights(
            LTX2_FULL.id,
            "Lightricks/LTX-2",
            LTX2_WEIGHTS,
            variant="full",
            allow_download=False,
            cache_dir=tmp_path / "hub",
        )
    assert "kinema models pull lightricks/ltx-2" in info.value.message
    assert "KINEMA_ALLOW_DOWNLOAD" in info.value.message


def test_hub_weights_in_the_cache_resolve_without_network(tmp_path: Path, tiny_model_dir: Path) -> None:
    # Lay the tiny model out as the Hugging Face cache does: snapshots/<revision>/ plus refs/main.
    repo = tmp_path / "hub" / "models--someone--tiny-ltx2"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    import shutil

    shutil.copytree(tiny_model_dir, repo / "snapshots" / revision)
    path = resolve_weights(
        "x/y",
        "someone/tiny-ltx2",
        LTX2_WEIGHTS,
        variant="distilled",
        allow_download=False,
        cache_dir=tmp_path / "hub",
    )
    assert (path / "model_index.json").is_file()


def test_a_directory_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match=r"no model_index\.json"):
        resolve_weights(TINY.id, str(tmp_path), LTX2_WEIGHTS, variant="distilled", allow_download=False)


def test_too_small_a_device_fails_before_loading(settings: Settings, tiny_model_dir: Path) -> None:
    small = settings.model_copy(update={"max_memory_gb": 0.001})
    warm = WarmModels()
    ctx = RunContext(settings=small, storage=LocalStorage(small.outputs_dir), warm=warm)
    task = run_task(TINY, {"prompt": "too big", "duration": 0.25}, ctx)
    assert task.status is TaskStatus.failed
    assert task.error is not None and task.error.code == "insufficient_resources"
    assert "GiB" in task.error.message
    assert warm.loads == 0
    assert not list(small.outputs_dir.glob("*.mp4"))


def test_memory_estimate_reads_safetensors_headers(tiny_model_dir: Path) -> None:
    counts = {f.parent.name: safetensors_parameter_count(f) for f in tiny_model_dir.glob("*/*.safetensors")}
    assert set(counts) >= {"transformer", "vae", "text_encoder", "vocoder"}
    sizes32 = component_bytes(tiny_model_dir, torch.float32, fp8=False)
    sizes16 = component_bytes(tiny_model_dir, torch.bfloat16, fp8=False)
    assert sizes32["transformer"] == 2 * sizes16["transformer"] == 4 * counts["transformer"]
    fp8 = component_bytes(tiny_model_dir, torch.bfloat16, fp8=True)
    assert fp8["transformer"] == counts["transformer"]
    assert required_bytes(sizes16, "model") < required_bytes(sizes16, "none")


def test_real_size_model_on_a_small_gpu_gets_a_clear_message(
    settings: Settings, tiny_model_dir: Path
) -> None:
    placement = choose_placement(settings)
    with pytest.raises(InsufficientResources, match="needs about"):
        check_fits(
            "lightricks/ltx-2", tiny_model_dir, placement, settings.model_copy(update={"max_memory_gb": 1e-6})
        )


def test_placement_defaults_to_cpu_float32_without_cuda(settings: Settings) -> None:
    placement = choose_placement(settings.model_copy(update={"device": "auto"}))
    if not torch.cuda.is_available():
        assert placement.device.type == "cpu"
        assert placement.dtype == torch.float32
        assert not placement.fp8 and not placement.compile
        with pytest.raises(InsufficientResources, match="no CUDA"):
            choose_placement(settings.model_copy(update={"device": "cuda"}))


GB = 1000**3


def test_fit_check_knows_each_generations_sizes_and_moves_the_text_encoder_off_a_small_gpu() -> None:
    from kinema.engines.device import text_encoder_placement
    from kinema.engines.ltx_recipes import estimated_component_bytes

    sizes20 = estimated_component_bytes("2.0", "distilled")
    sizes25 = estimated_component_bytes("2.5", "distilled")
    assert (
        sizes25["transformer"] > sizes20["transformer"] and sizes25["text_encoder"] == sizes20["text_encoder"]
    )
    assert 40 * GB < sum(sizes25.values()) - sizes25["text_encoder"] < 50 * GB
    # One 80 GB H100 holds LTX-2.5 in bf16, Gemma included.
    assert text_encoder_placement(sizes25, 80 * 1024**3, "cuda", "none") == "device"
    # A 48 GB GPU with an FP8 transformer: everything but Gemma fits, so Gemma stays on the CPU.
    fp8 = estimated_component_bytes("2.5", "full", fp8=True)
    assert text_encoder_placement(fp8, 48 * 1024**3, "cuda", "none") == "cpu"
    # 24 GB is not enough even without Gemma; with model offload only the largest part (Gemma) must fit.
    assert text_encoder_placement(fp8, 24 * 1024**3, "cuda", "none") is None
    assert text_encoder_placement(fp8, 24 * 1024**3, "cuda", "model") is None
    assert text_encoder_placement(fp8, 32 * 1024**3, "cuda", "model") == "device"
    # A CPU run never splits.
    assert text_encoder_placement(sizes25, 48 * 1024**3, "cpu", "none") is None

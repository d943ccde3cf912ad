"""The LTX recipes as they actually run, on tiny models built from each generation's real configs.

What these would have caught: a dev transformer sampled with the distilled sigmas, a repo scheduler that
time-shifts the sigmas kinema passes, guidance defaults that silently add transformer passes to a distilled
run, and the LTX-2.0 STG block / cross-timestep differences. They record what diffusers does (the sigmas
the scheduler steps through, the transformer calls per step and what reaches them), not what kinema passes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from kinema.domain.sizing import FramePlan, stage_sizes
from kinema.engines.base import CancelToken, GenerationRequest, ProgressEvent
from kinema.engines.device import Placement
from kinema.engines.ltx2 import LTX2Engine, load_pipeline
from kinema.engines.ltx_recipes import (
    DISTILLED_SIGMAS,
    RECIPES,
    STAGE_2_SIGMAS,
    LayoutError,
    detect_generation,
    plan_local_layout,
    read_configs,
)
from kinema.engines.sampling import LTX2Sampling
from kinema.engines.tiny import save_tiny_repo

CPU = Placement(device=torch.device("cpu"), dtype=torch.float32, fp8=False, compile=False)


@pytest.fixture(scope="session")
def tiny_repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny repo per generation, saved under names that say nothing about the generation.

    30 transformer blocks, so the recipes' STG blocks (28 for 2.3/2.5, 29 for 2.0) exist in the model.
    """
    root = tmp_path_factory.mktemp("ltx-repos")
    return {g: save_tiny_repo(g, root / f"weights-{i}", num_layers=30) for i, g in enumerate(RECIPES)}


def _engine(repo: Path, variant: str) -> LTX2Engine:
    layout = plan_local_layout(repo, variant)  # type: ignore[arg-type]
    loaded = load_pipeline(repo, layout, CPU, offload="none", vae_tiling=False, text_encoder="device")
    return LTX2Engine(loaded, LTX2Sampling(max_sequence_length=64), CPU, layout=layout, weights=str(repo))  # type: ignore[arg-type]


def _request(image: Image.Image | None = None, audio: bool = True) -> GenerationRequest:
    # A small size straight to the engine: the schedule does not depend on it, and stage 1 runs at half.
    return GenerationRequest(
        prompt="a red fox in the snow",
        negative_prompt="blurry",
        image=image,
        width=256,
        height=128,
        frames=FramePlan(fps=24, frames=9, generated_frames=9),
        generate_audio=audio,
        seed=7,
    )


class Recorder:
    """Records, per pipeline call, the sigmas the scheduler stepped and every transformer forward.

    The first `compute` forwards run the real 30-block transformer (so STG at block 28/29 really runs);
    later ones return zero velocity, which keeps a 40-step guided schedule cheap on a CPU while every
    call still goes through diffusers' sampling loop and scheduler.
    """

    def __init__(self, engine: LTX2Engine, monkeypatch: pytest.MonkeyPatch, compute: int = 4) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.stepped: list[float] = []
        self.forwards: list[dict[str, Any]] = []
        real_step = FlowMatchEulerDiscreteScheduler.step
        recorder = self

        def step(self: Any, model_output: Any, timestep: Any, sample: Any, **kwargs: Any) -> Any:
            if self is engine.pipe.scheduler:  # the video scheduler (the audio one is a deep copy)
                if self.step_index is None:
                    self._init_step_index(timestep)
                recorder.stepped.append(round(float(self.sigmas[self.step_index]), 6))
            return real_step(self, model_output, timestep, sample, **kwargs)

        monkeypatch.setattr(FlowMatchEulerDiscreteScheduler, "step", step)
        transformer = engine.pipe.transformer
        real_forward = transformer.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            recorder.forwards.append(
                {
                    "batch": kwargs["hidden_states"].shape[0],
                    "stg_blocks": kwargs.get("spatio_temporal_guidance_blocks"),
                    "isolate": kwargs.get("isolate_modalities"),
                    "cross_timestep": kwargs.get("use_cross_timestep"),
                    "tokens": kwargs["hidden_states"].shape[1],
                }
            )
            if len(recorder.forwards) <= compute:
                return real_forward(*args, **kwargs)
            return (
                torch.zeros_like(kwargs["hidden_states"]),
                torch.zeros_like(kwargs["audio_hidden_states"]),
            )

        monkeypatch.setattr(transformer, "forward", forward)


def _run(engine: LTX2Engine, request: GenerationRequest) -> list[ProgressEvent]:
    events: list[ProgressEvent] = []
    clip = engine.generate(request, events.append, CancelToken())
    list(clip.frames)
    return events


@pytest.mark.parametrize("generation", ["2.0", "2.3", "2.5"])
def test_generation_is_detected_from_configs_not_the_name(
    generation: str, tiny_repos: dict[str, Path], tmp_path: Path
) -> None:
    renamed = tmp_path / "Lightricks--LTX-2.5-Diffusers-but-not-really"
    shutil.copytree(tiny_repos[generation], renamed, ignore=shutil.ignore_patterns("*.safetensors"))
    assert detect_generation(read_configs(renamed)) == generation


def test_layouts_follow_the_real_repos(tiny_repos: dict[str, Path], tmp_path: Path) -> None:
    fast25 = plan_local_layout(tiny_repos["2.5"], "distilled")
    assert (fast25.transformer, fast25.stage2_lora, fast25.upsampler) == (
        "transformer",
        None,
        "latent_upsampler",
    )
    full25 = plan_local_layout(tiny_repos["2.5"], "full")
    assert full25.transformer == "transformer_full"
    assert full25.stage2_lora == "ltx-2.5-22b-distilled-lora-450-bf16.safetensors"
    files = [str(p.relative_to(tiny_repos["2.5"])) for p in tiny_repos["2.5"].rglob("*") if p.is_file()]
    assert not [p for p in fast25.needed_paths(files) if p.startswith("transformer_full/")]
    assert not [p for p in full25.needed_paths(files) if p.startswith("transformer/")]
    # LTX-2's transformer/ is the dev model: the fast app must not take it for a distilled one.
    fast20 = plan_local_layout(tiny_repos["2.0"], "distilled")
    assert fast20.stage2_lora == "ltx-2-19b-distilled-lora-384.safetensors"
    assert "distilled LoRA in both stages" in fast20.notes[0]
    # A distilled-only repo (the distilled scheduler config, no LoRA) has no full model to offer.
    distilled_only = tmp_path / "distilled-only"
    shutil.copytree(tiny_repos["2.3"], distilled_only, ignore=shutil.ignore_patterns("*lora*"))
    scheduler = distilled_only / "scheduler" / "scheduler_config.json"
    config = json.loads(scheduler.read_text())
    scheduler.write_text(json.dumps({**config, "use_dynamic_shifting": False, "shift_terminal": None}))
    assert plan_local_layout(distilled_only, "distilled").transformer == "transformer"
    with pytest.raises(LayoutError, match="no full transformer"):
        plan_local_layout(distilled_only, "full")


@pytest.mark.parametrize("generation", ["2.0", "2.3", "2.5"])
def test_fast_app_steps_exactly_the_distilled_sigmas_in_both_stages(
    generation: str, tiny_repos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = _engine(tiny_repos[generation], "distilled")
    recorder = Recorder(engine, monkeypatch)
    events = _run(engine, _request())
    # LTX-2 and LTX-2.3 ship schedulers with dynamic shifting on; the sigmas must still be the recipe's.
    assert recorder.stepped == [*DISTILLED_SIGMAS, *STAGE_2_SIGMAS]
    # Unguided: one transformer pass per step, batch 1, no STG or modality-isolation passes.
    assert len(recorder.forwards) == len(DISTILLED_SIGMAS) + len(STAGE_2_SIGMAS)
    assert all(f["batch"] == 1 and f["stg_blocks"] is None and not f["isolate"] for f in recorder.forwards)
    assert {f["cross_timestep"] for f in recorder.forwards} == {RECIPES[generation].use_cross_timestep}
    # Stage 2 runs at twice stage 1's size (4x the tokens).
    assert recorder.forwards[-1]["tokens"] == 4 * recorder.forwards[0]["tokens"]
    steps = [e.step for e in events if e.stage == "denoise" and e.step]
    assert steps[-1] == 11 and {e.total for e in events if e.stage == "denoise"} == {11}
    assert [e.stage for e in events].count("upsample") == 1


@pytest.mark.parametrize("generation", ["2.0", "2.5"])
def test_full_app_guides_stage_one_and_refines_with_the_lora(
    generation: str, tiny_repos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = RECIPES[generation]
    engine = _engine(tiny_repos[generation], "full")
    recorder = Recorder(engine, monkeypatch)
    lora_states: list[bool] = []
    real_set_stage = engine._set_stage

    def set_stage(stage: Any) -> None:
        real_set_stage(stage)
        lora_states.append(any(m.disable_adapters is False for m in _lora_layers(engine)))

    monkeypatch.setattr(engine, "_set_stage", set_stage)
    _run(engine, _request())
    stage1, stage2 = recorder.stepped[: recipe.full_steps], recorder.stepped[recipe.full_steps :]
    assert len(stage1) == recipe.full_steps and stage2 == list(STAGE_2_SIGMAS)
    # The full model's schedule is the scheduler's own, time-shifted (dynamic shifting and terminal 0.1).
    assert stage1[0] == 1.0 and stage1[-1] == pytest.approx(0.1, abs=0.02)
    # Stage 1: CFG (batch 2), an STG pass at the generation's block, a modality-isolation pass, per step.
    per_step = recorder.forwards[: 3 * recipe.full_steps]
    assert [f["batch"] for f in per_step[:3]] == [2, 1, 1]
    assert per_step[1]["stg_blocks"] == list(recipe.full_guidance.stg_blocks)
    assert per_step[2]["isolate"] is True
    assert recipe.full_guidance.stg_blocks == ((29,) if generation == "2.0" else (28,))
    # Stage 2: unguided, one pass per step, with the distilled LoRA on (and off in stage 1).
    assert len(recorder.forwards) == 3 * recipe.full_steps + len(STAGE_2_SIGMAS)
    assert lora_states == [False, True]
    call1, call2 = engine.calls
    assert (call1["guidance_scale"], call1["audio_guidance_scale"]) == (3.0, 7.0)
    assert (call2["guidance_scale"], call2["noise_scale"]) == (1.0, STAGE_2_SIGMAS[0])


def _lora_layers(engine: LTX2Engine) -> Iterator[Any]:
    from peft.tuners.lora import LoraLayer

    return (m for m in engine.pipe.transformer.modules() if isinstance(m, LoraLayer))


def test_image_to_video_conditions_both_stages_with_the_generations_crf(
    tiny_repos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import diffusers.pipelines.ltx2.pipeline_ltx2_image2video as i2v_module
    from diffusers.pipelines.ltx2 import utils

    crfs: list[int] = []
    real = utils.apply_image_conditioning_crf

    def recording(image: Any, crf: int) -> Any:
        crfs.append(crf)
        return real(image, crf)

    monkeypatch.setattr(i2v_module, "apply_image_conditioning_crf", recording)
    monkeypatch.setattr(utils, "apply_image_conditioning_crf", recording)
    engine = _engine(tiny_repos["2.5"], "distilled")
    image = Image.new("RGB", (300, 150), (200, 40, 40))
    _run(engine, _request(image=image, audio=False))
    # Stage 1 (inside diffusers' i2v pipeline) and stage 2 (kinema re-encodes the image at full size): CRF 18.
    assert crfs == [18, 18]


def test_4k_uses_the_latent_upsampler_not_pixel_scaling() -> None:
    sizes = stage_sizes(3840, 2160, multiple=64, max_refine_pixels=1920 * 1088, two_stage=True)
    assert (sizes.stage1, sizes.refine, sizes.decoded) == ((960, 544), (1920, 1088), (3840, 2176))
    for width, height in ((1280, 720), (720, 1280), (720, 720), (1920, 1080), (1080, 1920), (1080, 1080)):
        s = stage_sizes(width, height, multiple=64, max_refine_pixels=1920 * 1088, two_stage=True)
        assert s.decoded == s.refine and s.refine[0] % 64 == 0 and s.refine[1] % 64 == 0
        assert (
            s.refine[0] >= width
            and s.refine[1] >= height
            and s.stage1 == (s.refine[0] // 2, s.refine[1] // 2)
        )
    for width, height in ((2160, 3840), (2160, 2160)):
        s = stage_sizes(width, height, multiple=64, max_refine_pixels=1920 * 1088, two_stage=True)
        assert s.extra_upsample and s.decoded[0] >= width and s.decoded[1] >= height

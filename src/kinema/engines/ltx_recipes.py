"""LTX generations, their official recipes, and which weights in a diffusers repo serve which variant.

Plain data and JSON reading only (no torch), so the registry, the CLI and the download planner can use it.

Sources, cited per value below:
- [D] diffusers 0.42.1 LTX-2 docs, docs/source/en/api/pipelines/ltx2.md ("Two-stages Generation",
  "Distilled checkpoint generation", "Multimodal Guidance", "LTX-2.5", "Full / SFT transformer").
- [U] diffusers 0.42.1 src/diffusers/pipelines/ltx2/utils.py (DISTILLED_SIGMA_VALUES,
  STAGE_2_DISTILLED_SIGMA_VALUES, DEFAULT_IMAGE_CRF, LTX2_5_IMAGE_CRF), which copy
  github.com/Lightricks/LTX-2 packages/ltx-pipelines/src/ltx_pipelines/utils/constants.py.
- [P] diffusers 0.42.1 src/diffusers/pipelines/ltx2/pipeline_ltx2.py `LTX2Pipeline.__call__` docstring
  ("A value of `[29]` is recommended for LTX-2.0 and `[28]` is recommended for LTX-2.3").
- [C] diffusers scripts/convert_ltx2_to_diffusers.py (configs per version: gated attention and cross-attention
  modulation from 2.3; the BWE vocoder at 48 kHz from 2.3; Gemma 4 text encoder for 2.5).
- [L] github.com/Lightricks/LTX-2 packages/ltx-pipelines: distilled.py (distilled pipelines run without
  guidance), ti2vid_two_stages.py (stage 2 renoises at the first stage-2 sigma).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from kinema.engines.base import LayoutError, WeightsPlan
from kinema.engines.loading import read_configs, read_json

Generation = Literal["2.0", "2.3", "2.5"]
Variant = Literal["distilled", "full"]
GENERATIONS: tuple[Generation, ...] = ("2.0", "2.3", "2.5")

# [U] DISTILLED_SIGMA_VALUES / STAGE_2_DISTILLED_SIGMA_VALUES (the same for every generation; [D] "LTX-2.5":
# "DISTILLED_SIGMA_VALUES / STAGE_2_DISTILLED_SIGMA_VALUES are its reference schedules").
DISTILLED_SIGMAS: tuple[float, ...] = (1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875)
STAGE_2_SIGMAS: tuple[float, ...] = (0.909375, 0.725, 0.421875)


@dataclass(frozen=True)
class Guidance:
    """Every guidance term LTX2Pipeline takes, video and audio; the defaults mean no guidance at all.

    Distilled models run unguided ([L] distilled.py; [D] "runs unguided"): CFG 1, STG 0, modality 1,
    no rescale.
    Passing only guidance_scale=1 is not enough: the pipeline's own defaults (STG 1, modality 3, audio CFG 7)
    would still run two extra transformer passes per step.
    """

    guidance_scale: float = 1.0
    stg_scale: float = 0.0
    stg_blocks: tuple[int, ...] = ()
    modality_scale: float = 1.0
    guidance_rescale: float = 0.0
    audio_guidance_scale: float = 1.0
    audio_stg_scale: float = 0.0
    audio_modality_scale: float = 1.0
    audio_guidance_rescale: float = 0.0

    @property
    def uses_cfg(self) -> bool:
        """Whether a negative prompt is encoded (the pipeline runs CFG if either modality asks for it)."""
        return self.guidance_scale > 1.0 or self.audio_guidance_scale > 1.0

    def pipeline_kwargs(self) -> dict[str, Any]:
        """The LTX2Pipeline keyword arguments, every one explicit (the pipeline's defaults are 2.3-style)."""
        return {
            "guidance_scale": self.guidance_scale,
            "stg_scale": self.stg_scale,
            "modality_scale": self.modality_scale,
            "guidance_rescale": self.guidance_rescale,
            "audio_guidance_scale": self.audio_guidance_scale,
            "audio_stg_scale": self.audio_stg_scale,
            "audio_modality_scale": self.audio_modality_scale,
            "audio_guidance_rescale": self.audio_guidance_rescale,
            "spatio_temporal_guidance_blocks": list(self.stg_blocks) or None,
        }


UNGUIDED = Guidance()


def _full_guidance(stg_block: int) -> Guidance:
    # [D] "Multimodal Guidance" (LTX-2.3 recommendation: CFG 3, STG 1, modality 3, rescale 0.7, audio CFG 7,
    # audio STG 1, audio modality 3, audio rescale 0.7) and "Full / SFT transformer" (the same for LTX-2.5,
    # "including STG on block 28"); [P] STG block 29 for LTX-2.0, 28 for LTX-2.3.
    return Guidance(
        guidance_scale=3.0,
        stg_scale=1.0,
        stg_blocks=(stg_block,),
        modality_scale=3.0,
        guidance_rescale=0.7,
        audio_guidance_scale=7.0,
        audio_stg_scale=1.0,
        audio_modality_scale=3.0,
        audio_guidance_rescale=0.7,
    )


@dataclass(frozen=True)
class Recipe:
    """One generation's official recipe: guidance, schedules, sizes, and its big components."""

    generation: Generation
    full_guidance: Guidance
    use_cross_timestep: bool  # [P] default True is 2.3-style; LTX-2.0 was trained without the cross timestep
    full_steps: int  # [D] num_inference_steps=30 in every full-model example
    stage1_sigmas: tuple[float, ...] = DISTILLED_SIGMAS  # [D] "Distilled checkpoint generation"
    stage2_sigmas: tuple[float, ...] = STAGE_2_SIGMAS  # [D] stage 2, noise_scale = stage2_sigmas[0]
    fps: int = 24  # [D] frame_rate=24.0 in every example
    two_stage_multiple: int = 64  # [D] "Height and width must be divisible by 64" (stage 1 halves each axis)
    temporal_multiple: int = 8  # frames are 8k+1 (VAE 8x temporal compression)
    image_crf: int = 33  # [U] DEFAULT_IMAGE_CRF (33 through LTX-2.3), LTX2_5_IMAGE_CRF = 18
    text_encoder: str = "Gemma 3 12B"  # [C]
    vocoder_rate: int = 24000  # [C] LTX2Vocoder 24 kHz; LTX2VocoderWithBWE 48 kHz from 2.3
    max_sequence_length: int = 1024  # [P] max_sequence_length default
    decode_timestep: float = 0.05  # [L] constants: decode timestep / noise scale for the timestep-aware VAE
    decode_noise_scale: float = 0.025
    # Parameter counts (diffusers 0.42.1 models built from each generation's config on the meta device):
    # transformer 18.88B (2.0) / 18.99B (2.3, 2.5); text connectors 1.43B / 3.17B (transformer + connectors
    # is the published "19B" / "22B"); video VAE 1.22B / 0.73B; vocoder 0.06B / 0.13B; audio VAE 0.05B;
    # latent upsampler 0.5B; Gemma 3 12B / Gemma 4 12B text encoders.
    transformer_params: float = 18.99e9
    text_encoder_params: float = 12.2e9
    upsampler_params: float = 0.5e9
    other_params: float = 3.17e9 + 0.73e9 + 0.13e9 + 0.05e9  # connectors, video VAE, vocoder, audio VAE


RECIPES: dict[Generation, Recipe] = {
    "2.0": Recipe(
        generation="2.0",
        full_guidance=_full_guidance(stg_block=29),
        use_cross_timestep=False,
        full_steps=40,  # [L] LTX-2 19B constants: 40 steps (the 2.3/2.5 references use 30)
        transformer_params=18.88e9,
        other_params=1.43e9 + 1.22e9 + 0.06e9 + 0.05e9,
    ),
    "2.3": Recipe(
        generation="2.3",
        full_guidance=_full_guidance(stg_block=28),
        use_cross_timestep=True,
        full_steps=30,
        vocoder_rate=48000,
    ),
    "2.5": Recipe(
        generation="2.5",
        full_guidance=_full_guidance(stg_block=28),
        use_cross_timestep=True,
        full_steps=30,
        image_crf=18,
        text_encoder="Gemma 4 12B",
        vocoder_rate=48000,
    ),
}

NEWEST: Generation = "2.5"


def detect_generation(configs: dict[str, dict[str, Any]]) -> Generation:
    """Which LTX generation a repo holds, from its component configs (never its name).

    `configs` maps a component folder ("text_encoder", "transformer", "vocoder", ...) to its config.json.
    Gemma 4 text encoder -> 2.5 ([C], utils.resolve_default_image_crf); gated attention or the BWE vocoder
    -> 2.3 ([C]); otherwise 2.0.
    """
    text = configs.get("text_encoder", {})
    model_types = {str(text.get("model_type", "")), str(text.get("text_config", {}).get("model_type", ""))}
    if any(t.startswith("gemma4") for t in model_types):
        return "2.5"
    transformer = configs.get("transformer") or configs.get("transformer_full") or {}
    vocoder = configs.get("vocoder", {})
    if transformer.get("gated_attn") or vocoder.get("_class_name") == "LTX2VocoderWithBWE":
        return "2.3"
    return "2.0"


@dataclass(frozen=True)
class Layout:
    """Where each piece a variant needs lives in a repo, by relative path."""

    generation: Generation
    variant: Variant
    transformer: str  # a subfolder ("transformer", "transformer_full") or a root single-file checkpoint
    transformer_single_file: bool
    stage2_lora: str | None  # root LoRA applied for stage 2 (full variant)
    upsampler: str | None  # "latent_upsampler" when present: two-stage; otherwise one stage (fallback)
    components: tuple[str, ...]  # the other subfolders loaded by the pipeline
    notes: tuple[str, ...] = field(default_factory=tuple)

    def needed_paths(self, files: list[str]) -> list[str]:
        """The repo files this variant loads: configs and tokenizer files, and only its own weights."""
        folders = {*self.components, "scheduler", "tokenizer"}
        if not self.transformer_single_file:
            folders.add(self.transformer)
        if self.upsampler is not None:
            folders.add(self.upsampler)
        singles = {p for p in (self.stage2_lora,) if p is not None}
        if self.transformer_single_file:
            singles.add(self.transformer)
            folders.add("transformer")  # its config describes the single file
        wanted = []
        for path in files:
            top, _, rest = path.partition("/")
            if not rest:
                if path in singles or path == "model_index.json":
                    wanted.append(path)
            elif top in folders:
                wanted.append(path)
        return wanted


def _scheduler_is_distilled(configs: dict[str, dict[str, Any]]) -> bool:
    # The converter writes the distilled scheduler (no dynamic shifting, no terminal shift) for distilled
    # checkpoints [C]; [D] "LTX-2.5": "The repo's scheduler/ is configured for the distilled checkpoint".
    scheduler = configs.get("scheduler", {})
    return scheduler.get("use_dynamic_shifting") is False


def _root_safetensors(files: list[str]) -> list[str]:
    return sorted(p for p in files if "/" not in p and p.endswith(".safetensors"))


def plan_layout(
    model_index: dict[str, Any], configs: dict[str, dict[str, Any]], files: list[str], variant: Variant
) -> Layout:
    """Which transformer, LoRA and upsampler a variant uses in a repo with these configs and files."""
    generation = detect_generation(configs)
    folders = {p.split("/", 1)[0] for p in files if "/" in p}
    roots = _root_safetensors(files)
    loras = [p for p in roots if "lora" in p.lower() and "distill" in p.lower()]
    # The bf16 checkpoint before its fp8 copy.
    singles = sorted(
        (p for p in roots if "distill" in p.lower() and "lora" not in p.lower()), key=lambda p: "fp8" in p
    )
    base_distilled = _scheduler_is_distilled(configs)
    upsampler = "latent_upsampler" if "latent_upsampler" in folders else None
    skip = {"transformer", "transformer_full", "latent_upsampler", "scheduler", "tokenizer"}
    components = tuple(
        sorted(
            name
            for name, spec in model_index.items()
            if not name.startswith("_")
            and name not in skip
            and isinstance(spec, list)
            and spec[0] is not None
            and name in folders
        )
    )
    notes: list[str] = []
    if upsampler is None:
        notes.append("no latent_upsampler/: one stage at full size instead of the two-stage recipe")
    if variant == "distilled":
        if base_distilled and "transformer" in folders:
            return Layout(
                generation, variant, "transformer", False, None, upsampler, components, tuple(notes)
            )
        if singles:
            # LTX-2 ships its distilled DiT as one original-format file at the root (transformer/ is dev).
            return Layout(generation, variant, singles[0], True, None, upsampler, components, tuple(notes))
        if loras and "transformer" in folders:
            notes.append(
                "no distilled checkpoint: the full transformer with the distilled LoRA in both stages"
            )
            return Layout(
                generation, variant, "transformer", False, loras[0], upsampler, components, tuple(notes)
            )
        raise LayoutError(
            f"these LTX-{generation} weights hold no distilled transformer (transformer/ is the full model"
            " and there is no distilled checkpoint at the root); use the full app, or point the fast app at"
            " distilled weights"
        )
    if "transformer_full" in folders:
        transformer = "transformer_full"
    elif "transformer" in folders and not base_distilled:
        transformer = "transformer"
    else:
        raise LayoutError(
            f"these LTX-{generation} weights hold no full transformer (no transformer_full/, and transformer/"
            " is distilled); use the fast app, or point the full app at the full weights"
        )
    lora = loras[0] if loras else None
    if lora is None and upsampler is not None:
        notes.append("no distilled LoRA at the root: stage 2 refines with the full model unguided")
    return Layout(generation, variant, transformer, False, lora, upsampler, components, tuple(notes))


def plan_local_layout(model_dir: Path, variant: Variant) -> Layout:
    """plan_layout for a directory on disk."""
    files = [str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file()]
    return plan_layout(read_json(model_dir / "model_index.json"), read_configs(model_dir), files, variant)


LORA_PARAMS = 0.4e9  # the stage-2 distilled LoRA (rank 384-450, about 0.8 GB in bf16)


def estimated_component_bytes(
    generation: Generation, variant: Variant, *, fp8: bool = False
) -> dict[str, int]:
    """What each loaded component takes in bf16 (the transformer in FP8 when asked), from the table above."""
    r = RECIPES[generation]
    sizes = {
        "transformer": int(r.transformer_params * (1 if fp8 else 2)),
        "text_encoder": int(r.text_encoder_params * 2),
        "latent_upsampler": int(r.upsampler_params * 2),
        "other": int(r.other_params * 2),
    }
    if variant == "full":
        sizes["lora"] = int(LORA_PARAMS * 2)
    return sizes


def approx_download_bytes(generation: Generation, variant: Variant) -> int:
    """A generation's download in bf16 for a variant, before any file listing is at hand."""
    return sum(estimated_component_bytes(generation, variant).values())


class LTX2Weights:
    """The LTX family's WeightsPlanner: the layout a variant uses, and the generation's sizes."""

    def plan(self, model_dir: Path, files: list[str], variant: str) -> WeightsPlan:
        layout = plan_layout(
            read_json(model_dir / "model_index.json"), read_configs(model_dir), files, as_variant(variant)
        )
        return WeightsPlan(
            needed=tuple(layout.needed_paths(files)),
            generation=layout.generation,
            notes=layout.notes,
            single_files=(layout.transformer,) if layout.transformer_single_file else (),
        )

    def estimate_bytes(self, generation: str | None, variant: str) -> int:
        known: Generation = NEWEST
        for name in RECIPES:
            if name == generation:
                known = name
        return approx_download_bytes(known, as_variant(variant))

    def identify(self, model_dir: Path) -> str | None:
        pipeline = str(read_json(model_dir / "model_index.json").get("_class_name", ""))
        return detect_generation(read_configs(model_dir)) if pipeline.startswith("LTX2") else None


def as_variant(name: str) -> Variant:
    """An app's variant name as an LTX variant; LayoutError for one LTX does not have."""
    if name not in ("distilled", "full"):
        raise LayoutError(f"LTX weights have no {name!r} variant (distilled or full)")
    return cast(Variant, name)


LTX2_WEIGHTS = LTX2Weights()

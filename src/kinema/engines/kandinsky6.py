"""Kandinsky 6 (Kandinsky Lab) through diffusers' Kandinsky6TI2VAPipeline: text/image to video with audio.

One pass per request, as the diffusers docs lay it out: encode the prompt (Qwen2.5-VL tokens and a CLIP
pooled embedding, cached per prompt) -> denoise video and audio latents together in one multimodal
transformer (the image, when given, is a clean tail frame) -> decode the video in temporal chunks -> decode
the audio (audio VAE, then the BigVGAN vocoder). The model generates about 864x480; kinema resizes and
center-crops to the exact output size. Importable without torch: the registry reads KANDINSKY6_WEIGHTS in
the API process.

Sources, cited per value below:
- [D] diffusers docs, docs/source/en/api/pipelines/kandinsky6.md (main after 0.42.1): the model table
  ("Pro-5s ... Flow matching, guidance_scale=5.0, 50 steps"; "Pro-distill-5s ... Distilled,
  guidance_scale=1.0, 10 steps"), "Distilled checkpoints ship with the few-step PiflowScheduler and must be
  run with guidance_scale=1.0", Notes ("height and width must be divisible by ... 16"), the example (480x864,
  121 frames, fps=24).
- [P] diffusers 0.42.1 pipelines/kandinsky6/pipeline_kandinsky6_ti2va.py: __call__ defaults (frame_rate 24.0,
  max_sequence_length 1024), "`num_frames - 1` has to be divisible by" the VAE's temporal ratio, audio at
  audio_vae.config.sample_rate. Its docstring still says "Use 16 with the distilled checkpoints"; [D] and [F]
  are newer and say 10.
- [R] github.com/kandinskylab/kandinsky-6 README: "5-second video clips with synchronized 44 kHz audio",
  "Kandinsky 6.0 Video Lite (3B parameters) and Kandinsky 6.0 Video Pro (29B parameters)", "Pro defaults are
  864×480, 125 frames at 24 fps, 50 steps, and guidance 5.0", a separate super-resolution model for Full-HD.
- [V] vllm-omni recipe "Kandinsky 6 TI2VA — H100": "Pro production geometry ... 864x480, 125 frames @ 24 fps",
  "Any 4k+1 frame count and 16-divisible resolution", "Audio is always 44.1 kHz", "The Hub repo is gated".
- [F] FastVideo kandinsky6 presets: the Pro-distill checkpoint is "distilled for 10 steps (model card ...) ...
  guidance_scale=1.0".
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from kinema.engines.base import (
    CancelToken,
    EngineSpec,
    GeneratedClip,
    GenerationRequest,
    LayoutError,
    ProgressCallback,
    ProgressEvent,
    WeightsPlan,
)
from kinema.engines.loading import read_configs, read_json
from kinema.errors import Cancelled

if TYPE_CHECKING:
    import torch

    from kinema.engines.device import Placement
    from kinema.settings import Settings

PIPELINE_CLASS = "Kandinsky6TI2VAPipeline"
Variant = Literal["full", "distilled"]
VARIANTS: tuple[Variant, ...] = ("full", "distilled")

FPS = 24  # [D] encode_video(fps=24); [P] frame_rate=24.0; [R] "125 frames at 24 fps"
MAX_DURATION = 5.0  # [R] "generate 5-second video clips": the released checkpoints are the "-5s" ones
AUDIO_SAMPLE_RATE = 44100  # [R] "44 kHz audio"; [V] "always 44.1 kHz"; audio_vae/config.json sample_rate
GENERATION_PIXELS = 864 * 480  # [R] "Pro defaults are 864×480"; [V] "Pro production geometry"; [D] example


@dataclass(frozen=True)
class Kandinsky6Options:
    """An app's Kandinsky 6 recipe: steps, guidance, the size the model generates at, prompt length."""

    steps: int  # [D] 50 for the flow-matching checkpoints, 10 for the distilled ones ([F] the same)
    guidance_scale: float  # [D] 5.0; distilled checkpoints "must be run with guidance_scale=1.0"
    max_pixels: int = GENERATION_PIXELS  # generate at about 864x480 whatever the output size, then resize
    max_sequence_length: int = 1024  # [P] default; the Qwen prompt template's 129 tokens come on top


# [D] "Pro-5s-Diffusers ... Flow matching, guidance_scale=5.0, 50 steps"; [R] "50 steps, and guidance 5.0".
KANDINSKY6_PRO = Kandinsky6Options(steps=50, guidance_scale=5.0)
# [D] "Pro-distill-5s-Diffusers ... Distilled, guidance_scale=1.0, 10 steps"; [F] "distilled for 10 steps".
KANDINSKY6_PRO_DISTILL = Kandinsky6Options(steps=10, guidance_scale=1.0)

# Parameter counts (diffusers 0.42.1 / transformers 5.24 models built from the configs in kandinsky6_configs
# on the meta device): transformer 30.14B (Pro; [R] "29B"), 3.18B (Lite; [R] "3B"); Qwen2.5-VL-7B 8.29B;
# CLIP-L text 0.12B; video VAE 0.25B; audio VAE 0.31B; vocoder 0.12B.
# Download sizes as published: the Pro transformer is "30.1B parameters, 60.3 GB all-BF16" in the distilled
# repo and 69.7 GB in the full one, "mixed dtype: 18.9 GB of its 69.7 GB on disk is FP32" (a vllm-omni
# serving script for Kandinsky-6.0-Pro-5s); the whole Lite-5s repo is 35.3 GB (its model-card summary), so
# everything but the transformer (text encoders, VAEs, vocoder, tokenizers) is about 35.3 - 6.35 GB.
TRANSFORMER_BYTES: dict[tuple[str, Variant], float] = {
    ("6.0 Pro", "distilled"): 60.3e9,
    ("6.0 Pro", "full"): 69.7e9,
    ("6.0 Lite", "distilled"): 6.35e9,
    ("6.0 Lite", "full"): 6.35e9,
}
SHARED_BYTES = 35.3e9 - 6.35e9


# --- weights ---------------------------------------------------------------------------------------------


def as_variant(name: str) -> Variant:
    """An app's variant name as a Kandinsky 6 variant; LayoutError for one it does not have."""
    if name not in VARIANTS:
        raise LayoutError(f"Kandinsky 6 weights have no {name!r} variant (full or distilled)")
    return name


def detect_variant(configs: dict[str, dict[str, Any]]) -> Variant:
    """Distilled weights ship the PiflowScheduler and a transformer with n_grid-wide output heads ([D])."""
    scheduler = configs.get("scheduler", {})
    transformer = configs.get("transformer", {})
    widened = int(transformer.get("out_visual_dim", 0) or 0) > int(transformer.get("in_visual_dim", 0) or 0)
    return "distilled" if scheduler.get("_class_name") == "PiflowScheduler" or widened else "full"


def detect_generation(configs: dict[str, dict[str, Any]]) -> str:
    """The generation, "6.0 Pro" or "6.0 Lite", from the transformer's width (the two share every structural
    option); "6.0" for any other width (a scaled-down test model)."""
    width = configs.get("transformer", {}).get("model_dim")
    return {4096: "6.0 Pro", 1792: "6.0 Lite"}.get(width, "6.0") if isinstance(width, int) else "6.0"


def pipeline_components(model_index: dict[str, Any]) -> tuple[str, ...]:
    """The component folders model_index.json names (null entries are not loaded)."""
    return tuple(
        sorted(
            name
            for name, spec in model_index.items()
            if not name.startswith("_") and isinstance(spec, list) and spec and spec[0] is not None
        )
    )


class Kandinsky6Weights:
    """The Kandinsky 6 WeightsPlanner: one repo holds one variant (the distilled ones are separate repos), and
    the pipeline loads every component folder model_index.json names, and nothing else."""

    def plan(self, model_dir: Path, files: list[str], variant: str) -> WeightsPlan:
        wanted = as_variant(variant)
        index = read_json(model_dir / "model_index.json")
        if index.get("_class_name") != PIPELINE_CLASS:
            raise LayoutError(
                f"this is not a Kandinsky 6 repo (model_index.json names {index.get('_class_name')})"
            )
        configs = read_configs(model_dir) if model_dir.is_dir() else {}
        found = detect_variant(configs)
        if found != wanted:
            repo = "a -distill- repo" if wanted == "distilled" else "a repo without -distill- in its name"
            raise LayoutError(
                f"these Kandinsky 6 weights are the {found} model, not the {wanted} one: point the app at"
                f" {repo} (kandinskylab/Kandinsky-6.0-*-Diffusers)"
            )
        folders = set(pipeline_components(index))
        needed = [p for p in files if p == "model_index.json" or p.partition("/")[0] in folders]
        return WeightsPlan(needed=tuple(needed), generation=detect_generation(configs))

    def estimate_bytes(self, generation: str | None, variant: str) -> int:
        known = generation if generation in ("6.0 Pro", "6.0 Lite") else "6.0 Pro"
        return int(TRANSFORMER_BYTES[(known, as_variant(variant))] + SHARED_BYTES)

    def identify(self, model_dir: Path) -> str | None:
        if read_json(model_dir / "model_index.json").get("_class_name") != PIPELINE_CLASS:
            return None
        return detect_generation(read_configs(model_dir))


KANDINSKY6_WEIGHTS = Kandinsky6Weights()


# --- loading ---------------------------------------------------------------------------------------------


def default_options(variant: Variant) -> Kandinsky6Options:
    """The documented recipe of a variant."""
    return KANDINSKY6_PRO_DISTILL if variant == "distilled" else KANDINSKY6_PRO


def load_engine(
    app_id: str, spec: EngineSpec, model_dir: Path | None, settings: Settings, device: str | None
) -> Kandinsky6Engine:
    """A Kandinsky 6 engine on the worker's device, after checking the weights hold the variant and fit."""
    from kinema.engines.device import check_fits, choose_placement
    from kinema.engines.loading import is_local_source

    assert model_dir is not None, "Kandinsky 6 runs from local weights"
    variant = as_variant(spec.variant)
    files = [str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file()]
    plan = KANDINSKY6_WEIGHTS.plan(model_dir, files, variant)
    options = spec.options if isinstance(spec.options, Kandinsky6Options) else default_options(variant)
    placement = choose_placement(settings, device)
    folders = set(pipeline_components(read_json(model_dir / "model_index.json")))
    weights = spec.weights or str(model_dir)
    name = model_dir.name if is_local_source(weights) else weights  # no server paths in public messages
    text_encoder = check_fits(name, model_dir, placement, settings, folders=folders)
    if placement.device.type == "cuda" and text_encoder == "device":
        text_encoder = "gpu"
    pipe = load_pipeline(model_dir, placement, settings, text_encoder=text_encoder)
    return Kandinsky6Engine(
        pipe,
        options,
        placement,
        variant=variant,
        generation=plan.generation or "6.0",
        weights=weights,
        text_encoder=text_encoder,
    )


def load_pipeline(model_dir: Path, placement: Placement, settings: Settings, *, text_encoder: str) -> Any:
    """The diffusers pipeline on the chosen device, set up as the engine uses it."""
    import torch
    from diffusers import Kandinsky6TI2VAPipeline
    from transformers import AutoTokenizer

    # kinema uses only the text side of the Qwen2.5-VL processor (no prompt expansion, no images into the text
    # encoder), so tokenizer/ loads as a plain tokenizer: the full processor needs torchvision for its video
    # processor (transformers 5), which kinema does not depend on.
    pipe = Kandinsky6TI2VAPipeline.from_pretrained(model_dir, dtype=placement.dtype, tokenizer=None)
    pipe.register_modules(tokenizer=AutoTokenizer.from_pretrained(model_dir / "tokenizer"))
    if placement.fp8:
        pipe.transformer.enable_layerwise_casting(
            storage_dtype=torch.float8_e4m3fn, compute_dtype=placement.dtype
        )
    if settings.offload == "model" and placement.device.type == "cuda":
        pipe.enable_model_cpu_offload(device=placement.device)
    elif settings.offload == "sequential" and placement.device.type == "cuda":
        pipe.enable_sequential_cpu_offload(device=placement.device)
    else:
        pipe.to(placement.device)
        if text_encoder == "cpu":
            # Qwen2.5-VL 7B (~17 GB) runs once per prompt and its embeddings are cached; CLIP stays with it
            # because encode_prompt runs both text encoders on one device.
            pipe.text_encoder.to("cpu")
            pipe.text_encoder_2.to("cpu")
    if settings.vae_tiling and placement.device.type == "cuda":
        pipe.vae.enable_tiling()
    # The HunyuanVideo VAE decodes in temporal chunks (16 frames, 4 blended) by default: memory stays bounded
    # and a cancel stops the decode between chunks (the engine checks before each chunk).
    pipe.vae.use_framewise_decoding = True
    if placement.compile:
        pipe.transformer.compile_repeated_blocks(fullgraph=True)  # [D] Notes
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- the engine ------------------------------------------------------------------------------------------


def model_size(width: int, height: int, *, multiple: int, max_pixels: int) -> tuple[int, int]:
    """The size to generate an output at: the output's aspect ratio in multiples of `multiple`, scaled down to
    about max_pixels (never up), rounded to the nearest multiple (1280x720 -> 864x480, 720x720 -> 640x640)."""
    scale = min(1.0, math.sqrt(max_pixels / (width * height)))
    return (
        max(multiple, round(width * scale / multiple) * multiple),
        max(multiple, round(height * scale / multiple) * multiple),
    )


def describe_upscale(generated: tuple[int, int], output: tuple[int, int]) -> str:
    """How the generated frames reach the output size (kinema.media.frames.fit_frames: cover, then crop)."""
    (gen_w, gen_h), (out_w, out_h) = generated, output
    if generated == output:
        return "none"
    scale = max(out_w / gen_w, out_h / gen_h)
    covered = (max(out_w, round(gen_w * scale)), max(out_h, round(gen_h * scale)))
    if abs(scale - 1.0) < 1e-9:
        return "crop"
    return "resize" if covered == output else "resize+crop"


class Kandinsky6Engine:
    """A loaded Kandinsky 6 model serving text-to-video and image-to-video, with or without audio."""

    def __init__(
        self,
        pipe: Any,
        options: Kandinsky6Options,
        placement: Placement,
        *,
        variant: Variant,
        generation: str,
        weights: str,
        text_encoder: str = "device",
    ) -> None:
        self.pipe = pipe
        self.options = options
        self.placement = placement
        self.variant = variant
        self.generation = generation
        self.weights = weights
        self.text_encoder_placement = text_encoder
        self.fallbacks: list[str] = []
        self.guidance_scale = options.guidance_scale
        if variant == "distilled" and options.guidance_scale != 1.0:
            # [D] the PiFlow policy has no classifier-free guidance.
            self.guidance_scale = 1.0
            self.fallbacks.append(
                f"distilled weights run unguided: guidance 1.0, not {options.guidance_scale}"
            )
        if text_encoder == "cpu":
            self.fallbacks.append("text encoders kept on the CPU: the GPU cannot hold every component")
        self._embeddings: OrderedDict[tuple[str, str], tuple[Any, ...]] = OrderedDict()
        # One request at a time per engine: a run stands a cached encoding in for the pipeline's
        # encode_prompt. Each local worker owns its engine, so this only orders callers that share one.
        self._generate_lock = threading.Lock()
        self._decode_cancel: CancelToken | None = None
        self.pipe.vae.decoder.register_forward_pre_hook(self._check_decode_cancel)
        self.calls: list[dict[str, Any]] = []  # the last request's pipeline calls, for tests and output_meta

    @property
    def frame_multiple(self) -> int:
        # [P] "`num_frames - 1` has to be divisible by" the VAE's temporal compression (4).
        return int(self.pipe.vae_scale_factor_temporal)

    @property
    def size_multiple(self) -> int:
        # [D] Notes: the VAE's spatial compression (8) times the transformer's patch size (2).
        return int(self.pipe.vae_scale_factor_spatial) * int(max(self.pipe.transformer_patch_size[1:]))

    @property
    def device(self) -> str:
        device = self.placement.device
        if device.type == "cuda" and device.index is None:
            import torch

            return f"cuda:{torch.cuda.current_device()}"
        return str(device)

    @property
    def audio_sample_rate(self) -> int:
        return int(self.pipe.audio_sample_rate)

    @property
    def uses_cfg(self) -> bool:
        return self.guidance_scale > 1.0

    def generate(
        self, request: GenerationRequest, progress: ProgressCallback, cancel: CancelToken
    ) -> GeneratedClip:
        """Encode the prompt, denoise video and audio latents together, then decode them."""
        with self._generate_lock:
            return self._generate(request, progress, cancel)

    def _generate(
        self, request: GenerationRequest, progress: ProgressCallback, cancel: CancelToken
    ) -> GeneratedClip:
        import torch

        from kinema.media.frames import fit_audio, iter_output_frames

        timings: dict[str, float] = {}
        width, height = model_size(
            request.width, request.height, multiple=self.size_multiple, max_pixels=self.options.max_pixels
        )
        self.calls = []

        progress(ProgressEvent("encode_text"))
        started = time.perf_counter()
        embeds = self.encode_prompt(request.prompt, request.negative_prompt or "")
        timings["encode_text"] = time.perf_counter() - started
        cancel.raise_if_cancelled()

        started = time.perf_counter()
        generator = torch.Generator("cpu").manual_seed(request.seed)
        latents, audio_latents = self.denoise(request, embeds, width, height, generator, progress, cancel)
        timings["denoise"] = time.perf_counter() - started

        progress(ProgressEvent("decode_video"))
        started = time.perf_counter()
        video = self.decode_video(latents, cancel)
        timings["decode_video"] = time.perf_counter() - started
        cancel.raise_if_cancelled()

        audio = None
        if request.generate_audio:
            progress(ProgressEvent("decode_audio"))
            started = time.perf_counter()
            samples = round(request.frames.frames * self.audio_sample_rate / request.frames.fps)
            audio = fit_audio(self.decode_audio(audio_latents), samples)
            timings["decode_audio"] = time.perf_counter() - started

        return GeneratedClip(
            width=request.width,
            height=request.height,
            fps=request.frames.fps,
            frame_count=request.frames.frames,
            frames=iter_output_frames(
                video, frames=request.frames.frames, width=request.width, height=request.height
            ),
            audio=audio,
            sample_rate=self.audio_sample_rate if audio is not None else None,
            seed=request.seed,
            timings=timings,
            model=self.describe_run(width, height, (request.width, request.height)),
        )

    def describe_run(self, width: int, height: int, output: tuple[int, int]) -> dict[str, Any]:
        """What ran, for output_meta (kinema.domain.outputs.ModelRun)."""
        return {
            "weights": self.weights,
            "generation": self.generation,
            "variant": self.variant,
            "stages": [
                {
                    "name": "denoise",
                    "width": width,
                    "height": height,
                    "steps": self.options.steps,
                    "sigmas": None,
                    "guidance_scale": self.guidance_scale,
                }
            ],
            "upscale": describe_upscale((width, height), output),
            "text_encoder": self.text_encoder_placement,
            "fallbacks": list(self.fallbacks),
        }

    def encode_prompt(self, prompt: str, negative_prompt: str) -> tuple[Any, ...]:
        """The pipeline's six prompt tensors (Qwen tokens, CLIP pooled, padding mask; and the negatives under
        guidance), cached per prompt: re-running a prompt skips the 7B text encoder."""
        import torch

        key = (prompt, negative_prompt if self.uses_cfg else "")
        if key in self._embeddings:
            self._embeddings.move_to_end(key)
            return self._embeddings[key]
        pipe = self.pipe
        device = torch.device("cpu") if self.text_encoder_placement == "cpu" else pipe._execution_device
        with torch.inference_mode():
            encoded = type(pipe).encode_prompt(
                pipe,
                prompt=prompt,
                negative_prompt=negative_prompt or None,  # None: the pipeline's own negative prompt
                do_classifier_free_guidance=self.uses_cfg,
                max_sequence_length=self.options.max_sequence_length,
                device=device,
                dtype=pipe.transformer.dtype,
            )
        target = self.placement.device
        result = tuple(t.to(target) if t is not None else None for t in encoded)
        self._embeddings[key] = result
        while len(self._embeddings) > 16:
            self._embeddings.popitem(last=False)
        return result

    def denoise(
        self,
        request: GenerationRequest,
        embeds: tuple[Any, ...],
        width: int,
        height: int,
        generator: torch.Generator,
        progress: ProgressCallback,
        cancel: CancelToken,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The pipeline to latents (video and audio together), reporting each step, honouring cancel."""
        import torch

        total = self.options.steps

        def on_step_end(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            progress(ProgressEvent("denoise", step + 1, total))
            if cancel.cancelled:
                pipe._interrupt = True  # diffusers skips the remaining steps
            return {}

        kwargs: dict[str, Any] = {
            "prompt": request.prompt,
            "height": height,
            "width": width,
            "num_frames": request.frames.generated_frames,
            "frame_rate": float(request.frames.fps),
            "num_inference_steps": total,
            "guidance_scale": self.guidance_scale,
            "sample_audio": request.generate_audio,
            "max_sequence_length": self.options.max_sequence_length,
            "output_type": "latent",
            "callback_on_step_end": on_step_end,
        }
        self.calls.append({**kwargs, "image": request.image is not None})
        if request.image is not None:
            # The pipeline resizes and center-crops a PIL image to the generation size itself.
            kwargs["image"] = request.image.convert("RGB")
        progress(ProgressEvent("denoise", 0, total))
        pipe = self.pipe
        # diffusers 0.42.1's __call__ takes prompt embeddings but not their padding masks (which the
        # transformer's text attention uses), so the cached encoding stands in for encode_prompt in this call.
        pipe.encode_prompt = lambda *args, **kw: embeds
        try:
            with torch.inference_mode():
                latents, audio_latents = pipe(generator=generator, return_dict=False, **kwargs)
        finally:
            del pipe.encode_prompt
        if cancel.cancelled:
            raise Cancelled("the task was cancelled during denoising")
        return latents, audio_latents

    def _check_decode_cancel(self, module: Any, args: Any) -> None:
        if self._decode_cancel is not None and self._decode_cancel.cancelled:
            raise Cancelled("the task was cancelled during decoding")

    def decode_video(self, latents: torch.Tensor, cancel: CancelToken) -> torch.Tensor:
        """Video latents (as the pipeline returns them: scaled, (B, C, F, H, W)) to a (C, F, H, W) tensor in
        [-1, 1], decoded in temporal chunks so a cancel stops it between chunks."""
        import torch

        vae = self.pipe.vae
        self._decode_cancel = cancel
        try:
            with torch.inference_mode():
                video: torch.Tensor = vae.decode(
                    latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False
                )[0]
        finally:
            self._decode_cancel = None
        return video[0]

    def decode_audio(self, audio_latents: torch.Tensor | None) -> np.ndarray:
        """Audio latents ((B, C, L), scaled) to a (1, samples) float32 mono waveform: audio VAE to a mel
        spectrogram, then the vocoder, as the pipeline does."""
        import torch

        assert audio_latents is not None, "audio was not sampled"
        audio_vae, vocoder = self.pipe.audio_vae, self.pipe.vocoder
        with torch.inference_mode():
            mel = audio_vae.decode(
                audio_latents.to(audio_vae.dtype) / audio_vae.config.scaling_factor, return_dict=False
            )[0]
            waveform = vocoder(mel.to(vocoder.dtype), return_dict=False)[0]
        samples: np.ndarray = waveform[0, :1].float().clamp(-1.0, 1.0).cpu().numpy()
        return samples

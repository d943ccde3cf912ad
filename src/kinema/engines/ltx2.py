"""LTX (2.0, 2.3, 2.5) through diffusers: the official two-stage recipe, joint video + audio, warm.

One readable path per request, as diffusers' docs lay it out ("Two-stages Generation", "LTX-2.5"):
encode the prompt (cached) -> stage 1 at half size -> the x2 latent upsampler -> stage 2 at full size with
the stage-2 distilled sigmas, audio latents carried through -> (4K: the upsampler once more) -> decode in
temporal chunks. The recipe (guidance, schedules, STG block, cross timestep, image CRF) comes from the
generation detected in the weights' configs (kinema.engines.ltx_recipes), never from the app's name.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kinema.domain.sizing import StageSizes, stage_sizes
from kinema.engines.base import (
    CancelToken,
    EngineSpec,
    GeneratedClip,
    GenerationRequest,
    ProgressCallback,
    ProgressEvent,
)
from kinema.engines.device import Placement, check_fits, choose_placement
from kinema.engines.loading import is_local_source
from kinema.engines.ltx_recipes import (
    RECIPES,
    UNGUIDED,
    Guidance,
    Layout,
    Recipe,
    as_variant,
    plan_local_layout,
)
from kinema.engines.sampling import LTX2Sampling
from kinema.errors import Cancelled
from kinema.media.frames import fit_audio, iter_output_frames
from kinema.settings import Settings

STAGE2_ADAPTER = "stage_2_distilled"


@dataclass(frozen=True)
class Stage:
    """One denoising pass: its size, schedule (sigmas, or a step count for the scheduler) and guidance."""

    name: str
    width: int
    height: int
    sigmas: tuple[float, ...] | None
    steps: int
    guidance: Guidance
    distilled_scheduler: bool  # shifting off, so the sigmas are stepped exactly as given
    lora: bool  # the stage-2 distilled LoRA is active
    noise_scale: float = 0.0  # stage 2 renoises the upsampled latents at its first sigma


def load_engine(
    app_id: str, spec: EngineSpec, model_dir: Path | None, settings: Settings, device: str | None
) -> LTX2Engine:
    """The LTX family's loader: plan the layout, check it fits the device, load the pipeline warm."""
    assert model_dir is not None, "LTX runs from local weights"
    sampling = spec.options if isinstance(spec.options, LTX2Sampling) else LTX2Sampling()
    placement = choose_placement(settings, device)
    layout = plan_local_layout(model_dir, as_variant(spec.variant))
    folders = {
        *layout.components,
        layout.transformer,
        *(x for x in (layout.upsampler, layout.stage2_lora) if x),
    }
    weights = spec.weights or str(model_dir)
    name = model_dir.name if is_local_source(weights) else weights  # no server paths in public messages
    text_encoder = check_fits(name, model_dir, placement, settings, folders=folders)
    if placement.device.type == "cuda" and text_encoder == "device":
        text_encoder = "gpu"
    loaded = load_pipeline(
        model_dir,
        layout,
        placement,
        offload=settings.offload,
        vae_tiling=settings.vae_tiling,
        text_encoder=text_encoder,
    )
    return LTX2Engine(loaded, sampling, placement, layout=layout, weights=weights, text_encoder=text_encoder)


def load_pipeline(
    model_dir: Path,
    layout: Layout,
    placement: Placement,
    *,
    offload: str,
    vae_tiling: bool,
    text_encoder: str,
) -> dict[str, Any]:
    """The diffusers objects a layout needs, on the chosen device: the pipeline, its upsampler, schedulers."""
    from diffusers import LTX2Pipeline, LTX2VideoTransformer3DModel

    extra: dict[str, Any] = {}
    if layout.transformer_single_file:
        extra["transformer"] = LTX2VideoTransformer3DModel.from_single_file(
            str(model_dir / layout.transformer),
            config=str(model_dir),
            subfolder="transformer",
            dtype=placement.dtype,
        )
    elif layout.transformer != "transformer":
        # [D] "Full / SFT transformer": passing transformer= keeps the distilled folder from loading as well.
        extra["transformer"] = LTX2VideoTransformer3DModel.from_pretrained(
            model_dir, subfolder=layout.transformer, dtype=placement.dtype
        )
    if "duration_head" in layout.components:
        extra["duration_head"] = None  # kinema always sets num_frames; the head would only cost memory
    pipe = LTX2Pipeline.from_pretrained(model_dir, dtype=placement.dtype, **extra)
    if layout.stage2_lora is not None:
        pipe.load_lora_weights(str(model_dir), weight_name=layout.stage2_lora, adapter_name=STAGE2_ADAPTER)
    upsampler = None
    if layout.upsampler is not None:
        from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

        upsampler = LTX2LatentUpsamplerModel.from_pretrained(
            model_dir, subfolder=layout.upsampler, dtype=placement.dtype
        )
    return prepare_loaded(
        pipe, upsampler, placement, offload=offload, vae_tiling=vae_tiling, text_encoder=text_encoder
    )


def prepare_loaded(
    pipe: Any, upsampler: Any, placement: Placement, *, offload: str, vae_tiling: bool, text_encoder: str
) -> dict[str, Any]:
    """Put loaded (or, in bench/gpu_check.py, freshly built) components on the device, as the engine wants."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if placement.fp8:
        pipe.transformer.enable_layerwise_casting(
            storage_dtype=torch.float8_e4m3fn, compute_dtype=placement.dtype
        )
    if offload == "model" and placement.device.type == "cuda":
        pipe.enable_model_cpu_offload(device=placement.device)
    elif offload == "sequential" and placement.device.type == "cuda":
        pipe.enable_sequential_cpu_offload(device=placement.device)
    else:
        pipe.to(placement.device)
        if text_encoder == "cpu":
            pipe.text_encoder.to("cpu")
    if upsampler is not None:
        upsampler.to(placement.device)
    if vae_tiling and placement.device.type == "cuda":
        pipe.vae.enable_tiling()
    # Temporal chunks of 6 latent frames (48 video frames, 8 blended) bound decode memory and let a cancel
    # stop the decode between chunks; clips up to 2 s decode in one piece.
    pipe.vae.use_framewise_decoding = True
    pipe.vae.tile_sample_min_num_frames = 48
    pipe.vae.tile_sample_stride_num_frames = 40
    if placement.compile:
        pipe.transformer.compile_repeated_blocks(fullgraph=False)
    pipe.set_progress_bar_config(disable=True)
    config = pipe.scheduler.config
    return {
        "pipe": pipe,
        "upsampler": upsampler,
        # [D] stage 2 / distilled: "use_dynamic_shifting=False, shift_terminal=None" so sigmas are used as is;
        # [D] "Full / SFT transformer": "use_dynamic_shifting=True, shift_terminal=0.1" for the full model.
        "distilled_scheduler": FlowMatchEulerDiscreteScheduler.from_config(
            config, use_dynamic_shifting=False, shift_terminal=None
        ),
        "full_scheduler": FlowMatchEulerDiscreteScheduler.from_config(
            config, use_dynamic_shifting=True, shift_terminal=0.1
        ),
    }


def plan_stages(recipe: Recipe, layout: Layout, sizes: StageSizes) -> list[Stage]:
    """The denoising passes of the recipe for a variant at these sizes."""
    first_w, first_h = sizes.stage1 or sizes.refine
    if layout.variant == "distilled":
        # LTX-2 without its distilled checkpoint: the dev model with the distilled LoRA in both stages.
        first = Stage(
            "stage1",
            first_w,
            first_h,
            recipe.stage1_sigmas,
            len(recipe.stage1_sigmas),
            UNGUIDED,
            distilled_scheduler=True,
            lora=layout.stage2_lora is not None,
        )
    else:
        first = Stage(
            "stage1", first_w, first_h, None, recipe.full_steps, recipe.full_guidance, False, lora=False
        )
    if sizes.stage1 is None:
        return [first]
    second = Stage(
        "stage2",
        *sizes.refine,
        recipe.stage2_sigmas,
        len(recipe.stage2_sigmas),
        UNGUIDED,  # [D] "guidance_scale=1.0, since stage 2 is running a distilled model either way"
        distilled_scheduler=True,
        lora=layout.stage2_lora is not None,
        noise_scale=recipe.stage2_sigmas[0],  # [D]/[L] renoise with the first stage-2 sigma
    )
    return [first, second]


class LTX2Engine:
    """A loaded LTX model serving text-to-video and image-to-video from one set of weights."""

    def __init__(
        self,
        loaded: dict[str, Any],
        sampling: LTX2Sampling,
        placement: Placement,
        *,
        layout: Layout,
        weights: str,
        text_encoder: str = "device",
    ) -> None:
        from diffusers import LTX2ImageToVideoPipeline, LTX2LatentUpsamplePipeline

        self.pipe = loaded["pipe"]
        self.i2v = LTX2ImageToVideoPipeline.from_pipe(self.pipe)
        self.i2v.set_progress_bar_config(disable=True)
        self.upsample_pipe: Any = None
        if loaded["upsampler"] is not None:
            self.upsample_pipe = LTX2LatentUpsamplePipeline(
                vae=self.pipe.vae, latent_upsampler=loaded["upsampler"]
            )
            self.upsample_pipe.set_progress_bar_config(disable=True)
        self.schedulers = {True: loaded["distilled_scheduler"], False: loaded["full_scheduler"]}
        self.sampling = sampling
        self.placement = placement
        self.layout = layout
        self.recipe = RECIPES[layout.generation]
        self.weights = weights
        self.text_encoder_placement = text_encoder
        self._embeddings: OrderedDict[tuple[str, str, bool], tuple[torch.Tensor, ...]] = OrderedDict()
        self._embeddings_lock = threading.Lock()
        # One request at a time per engine: a run swaps the pipeline's scheduler and LoRA state. Each local
        # worker owns its engine, so this only orders callers that share one (the CLI, tests).
        self._generate_lock = threading.Lock()
        self._decode_cancel: CancelToken | None = None
        self.pipe.vae.decoder.register_forward_pre_hook(self._check_decode_cancel)
        self.calls: list[dict[str, Any]] = []  # the last request's pipeline calls, for output_meta and tests

    @property
    def size_multiple(self) -> int:
        return int(self.pipe.vae_spatial_compression_ratio)

    @property
    def frame_multiple(self) -> int:
        return int(self.pipe.vae_temporal_compression_ratio)

    @property
    def device(self) -> str:
        return str(self.placement.device)

    @property
    def audio_sample_rate(self) -> int:
        return int(getattr(self.pipe.vocoder.config, "output_sampling_rate", 24000))

    @property
    def two_stage(self) -> bool:
        return self.sampling.two_stage and self.upsample_pipe is not None

    def generate(
        self, request: GenerationRequest, progress: ProgressCallback, cancel: CancelToken
    ) -> GeneratedClip:
        """Encode the prompt, run the recipe's stages on video and audio latents, then decode them."""
        with self._generate_lock:
            return self._generate(request, progress, cancel)

    def _generate(
        self, request: GenerationRequest, progress: ProgressCallback, cancel: CancelToken
    ) -> GeneratedClip:
        timings: dict[str, float] = {}
        sizes = stage_sizes(
            request.width,
            request.height,
            multiple=self.recipe.two_stage_multiple,
            max_refine_pixels=self.sampling.max_refine_pixels,
            two_stage=self.two_stage,
        )
        if sizes.extra_upsample and self.upsample_pipe is None:
            sizes = StageSizes(stage1=sizes.stage1, refine=sizes.refine, decoded=sizes.refine)
        stages = plan_stages(self.recipe, self.layout, sizes)
        total = sum(stage.steps for stage in stages)
        self.calls = []

        progress(ProgressEvent("encode_text"))
        started = time.perf_counter()
        embeds = self.encode_prompt(
            request.prompt, request.negative_prompt or "", stages[0].guidance.uses_cfg
        )
        timings["encode_text"] = time.perf_counter() - started
        cancel.raise_if_cancelled()

        # [D] LTX-2.5 two-stage: one generator threaded through both stages.
        generator = torch.Generator("cpu").manual_seed(request.seed)
        latents: torch.Tensor | None = None
        audio_latents: torch.Tensor | None = None
        done = 0
        for index, stage in enumerate(stages):
            if index > 0:
                progress(ProgressEvent("upsample"))
                started = time.perf_counter()
                latents = self.upsample(latents)
                if request.image is not None:
                    latents = self.condition_first_frame(latents, request.image, stage.width, stage.height)
                timings["upsample"] = timings.get("upsample", 0.0) + time.perf_counter() - started
                cancel.raise_if_cancelled()
            started = time.perf_counter()
            latents, audio_latents = self.denoise(
                stage, request, embeds, latents, audio_latents, generator, progress, cancel, done, total
            )
            timings[f"denoise_{stage.name}"] = time.perf_counter() - started
            done += stage.steps
        timings["denoise"] = sum(v for k, v in timings.items() if k.startswith("denoise_"))
        assert latents is not None and audio_latents is not None
        upscale = "none"
        if sizes.extra_upsample:
            progress(ProgressEvent("upsample"))
            started = time.perf_counter()
            latents = self.upsample(latents)
            timings["upsample"] = timings.get("upsample", 0.0) + time.perf_counter() - started
            upscale = "latent_upsampler_x2"
        decoded_h, decoded_w = (
            latents.shape[-2] * self.size_multiple,
            latents.shape[-1] * self.size_multiple,
        )
        if (decoded_w, decoded_h) != (request.width, request.height):
            upscale = f"{upscale}+crop" if upscale != "none" else "crop"

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

        frames: Iterator[np.ndarray] = iter_output_frames(
            video, frames=request.frames.frames, width=request.width, height=request.height
        )
        return GeneratedClip(
            width=request.width,
            height=request.height,
            fps=request.frames.fps,
            frame_count=request.frames.frames,
            frames=frames,
            audio=audio,
            sample_rate=self.audio_sample_rate if audio is not None else None,
            seed=request.seed,
            timings=timings,
            model=self.describe_run(stages, sizes, upscale),
        )

    def describe_run(self, stages: list[Stage], sizes: StageSizes, upscale: str) -> dict[str, Any]:
        """What ran, for output_meta: weights, generation, variant, stages with sizes and steps, upscaling."""
        run = [
            {
                "name": s.name,
                "width": s.width,
                "height": s.height,
                "steps": s.steps,
                "sigmas": list(s.sigmas) if s.sigmas is not None else None,
                "guidance_scale": s.guidance.guidance_scale,
            }
            for s in stages
        ]
        if sizes.extra_upsample:
            run.append(
                {"name": "upsample", "width": sizes.decoded[0], "height": sizes.decoded[1], "steps": 0}
            )
        fallbacks = list(self.layout.notes)
        if not self.two_stage and self.sampling.two_stage:
            fallbacks.append("no latent upsampler in these weights: one stage at full size")
        if self.text_encoder_placement == "cpu":
            fallbacks.append("text encoder kept on the CPU: the GPU cannot hold every component")
        return {
            "weights": self.weights,
            "generation": self.layout.generation,
            "variant": self.layout.variant,
            "stages": run,
            "upscale": upscale,
            "text_encoder": self.text_encoder_placement,
            "fallbacks": fallbacks,
        }

    @torch.inference_mode()
    def encode_prompt(self, prompt: str, negative_prompt: str, uses_cfg: bool) -> tuple[torch.Tensor, ...]:
        """Text embeddings, cached per prompt: re-running a prompt skips the (large) text encoder."""
        key = (prompt, negative_prompt if uses_cfg else "", uses_cfg)
        with self._embeddings_lock:
            if key in self._embeddings:
                self._embeddings.move_to_end(key)
                return self._embeddings[key]
        device = torch.device("cpu") if self.text_encoder_placement == "cpu" else self.pipe._execution_device
        embeds, mask, neg_embeds, neg_mask = self.pipe.encode_prompt(
            prompt=prompt,
            negative_prompt=negative_prompt,
            do_classifier_free_guidance=uses_cfg,
            max_sequence_length=self.sampling.max_sequence_length,
            device=device,
        )
        target = self.placement.device
        result = tuple(t.to(target) if t is not None else None for t in (embeds, mask, neg_embeds, neg_mask))
        with self._embeddings_lock:
            self._embeddings[key] = result  # type: ignore[assignment]
            while len(self._embeddings) > 16:
                self._embeddings.popitem(last=False)
        return result  # type: ignore[return-value]

    def _set_stage(self, stage: Stage) -> None:
        """The scheduler and LoRA state a stage needs (the pipeline object is shared by both stages)."""
        scheduler = self.schedulers[stage.distilled_scheduler]
        self.pipe.scheduler = scheduler
        self.i2v.scheduler = scheduler
        if self.layout.stage2_lora is not None:
            if stage.lora:
                self.pipe.set_adapters(STAGE2_ADAPTER, 1.0)
                self.pipe.enable_lora()
            else:
                self.pipe.disable_lora()

    @torch.inference_mode()
    def denoise(
        self,
        stage: Stage,
        request: GenerationRequest,
        embeds: tuple[torch.Tensor, ...],
        latents: torch.Tensor | None,
        audio_latents: torch.Tensor | None,
        generator: torch.Generator,
        progress: ProgressCallback,
        cancel: CancelToken,
        done: int,
        total: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One stage of the diffusers pipeline to latents, reporting each step and honouring cancellation."""
        self._set_stage(stage)

        def on_step_end(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            progress(ProgressEvent("denoise", done + step + 1, total))
            if cancel.cancelled:
                pipe._interrupt = True  # diffusers skips the remaining steps
            return {}

        prompt_embeds, mask, neg_embeds, neg_mask = embeds
        kwargs: dict[str, Any] = {
            "prompt_embeds": prompt_embeds,
            "prompt_attention_mask": mask,
            "negative_prompt_embeds": neg_embeds if stage.guidance.uses_cfg else None,
            "negative_prompt_attention_mask": neg_mask if stage.guidance.uses_cfg else None,
            "height": stage.height,
            "width": stage.width,
            "num_frames": request.frames.generated_frames,
            "frame_rate": float(request.frames.fps),
            **stage.guidance.pipeline_kwargs(),
            "use_cross_timestep": self.recipe.use_cross_timestep,
            "noise_scale": stage.noise_scale,
            "generator": generator,
            "latents": latents,
            "audio_latents": audio_latents,
            "output_type": "latent",
            "callback_on_step_end": on_step_end,
            "max_sequence_length": self.sampling.max_sequence_length,
        }
        if stage.sigmas is not None:
            kwargs["sigmas"] = list(stage.sigmas)
        kwargs["num_inference_steps"] = stage.steps
        self.calls.append(
            {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor | torch.Generator)}
        )
        if done == 0:  # one bar across both stages: 0..total, each step once
            progress(ProgressEvent("denoise", 0, total))
        if request.image is not None:
            output = self.i2v(
                image=_fit_image(request.image, stage.width, stage.height),
                image_crf=self.recipe.image_crf,
                **kwargs,
            )
        else:
            output = self.pipe(**kwargs)
        if cancel.cancelled:
            raise Cancelled("the task was cancelled during denoising")
        return output.frames, output.audio

    @torch.inference_mode()
    def upsample(self, latents: torch.Tensor | None) -> torch.Tensor:
        """The x2 latent upsampler on denormalized latents ([D] latents_normalized=False)."""
        assert self.upsample_pipe is not None and latents is not None
        out: torch.Tensor = self.upsample_pipe(
            latents=latents.to(self.upsample_pipe.latent_upsampler.dtype),
            latents_normalized=False,
            output_type="latent",
            return_dict=False,
        )[0]
        return out

    @torch.inference_mode()
    def condition_first_frame(
        self, latents: torch.Tensor, image: Any, width: int, height: int
    ) -> torch.Tensor:
        """Stage 2 conditions on the image itself at full size (CRF-compressed as in training), as the
        reference two-stage pipeline does, not on the upsampled stage-1 latent of it."""
        from diffusers.pipelines.ltx2.utils import apply_image_conditioning_crf
        from PIL import Image

        fitted = _fit_image(image, width, height).convert("RGB")
        if self.recipe.image_crf:
            fitted = Image.fromarray(apply_image_conditioning_crf(np.array(fitted), self.recipe.image_crf))
        pixels = self.pipe.video_processor.preprocess(fitted, height=height, width=width)
        vae = self.pipe.vae
        pixels = pixels.to(device=latents.device, dtype=vae.dtype).unsqueeze(2)
        encoded = vae.encode(pixels).latent_dist.mode()  # "argmax", as the i2v pipeline encodes it
        latents = latents.clone()
        latents[:, :, :1] = encoded.to(latents.dtype)
        return latents

    def _check_decode_cancel(self, module: Any, args: Any) -> None:
        if self._decode_cancel is not None and self._decode_cancel.cancelled:
            raise Cancelled("the task was cancelled during decoding")

    @torch.inference_mode()
    def decode_video(self, latents: torch.Tensor, cancel: CancelToken) -> torch.Tensor:
        """Decode denormalized video latents to a (C, F, H, W) tensor in [-1, 1], in temporal chunks."""
        vae = self.pipe.vae
        timestep = None
        if vae.config.timestep_conditioning:
            # As the pipeline does: noise is mixed in the normalized space, then the latents denormalized.
            mean = vae.latents_mean.view(1, -1, 1, 1, 1).to(latents)
            std = vae.latents_std.view(1, -1, 1, 1, 1).to(latents)
            scaling = vae.config.scaling_factor
            normalized = (latents - mean) * scaling / std
            noise = torch.randn(latents.shape, generator=torch.Generator("cpu").manual_seed(0)).to(latents)
            scale = self.recipe.decode_noise_scale
            normalized = (1 - scale) * normalized + scale * noise
            latents = normalized * std / scaling + mean
            timestep = torch.tensor([self.recipe.decode_timestep], device=latents.device, dtype=latents.dtype)
        self._decode_cancel = cancel
        try:
            video: torch.Tensor = vae.decode(latents.to(vae.dtype), timestep, return_dict=False)[0]
        finally:
            self._decode_cancel = None
        return video[0]

    @torch.inference_mode()
    def decode_audio(self, audio_latents: torch.Tensor) -> np.ndarray:
        """Audio latents to a (channels, samples) float32 waveform through the audio VAE and vocoder."""
        mel = self.pipe.audio_vae.decode(audio_latents.to(self.pipe.audio_vae.dtype), return_dict=False)[0]
        waveform = self.pipe.vocoder(mel.to(self.pipe.vocoder.dtype))
        samples: np.ndarray = waveform[0].float().clamp(-1.0, 1.0).cpu().numpy()
        return samples


def _fit_image(image: Any, width: int, height: int) -> Any:
    """Center-crop and resize a PIL image to the generation size (the pipeline would stretch it)."""
    from PIL import Image, ImageOps

    return ImageOps.fit(image, (width, height), method=Image.Resampling.BICUBIC)

"""LTX-2 through diffusers: joint video + audio generation, warm between requests.

The pipeline denoises; kinema decodes. Asking diffusers for latents lets us skip the audio VAE and
vocoder entirely when audio is off, convert to uint8 on the device, and stream frames to the encoder.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kinema.apps.sizing import generation_size
from kinema.engines.base import CancelToken, GeneratedClip, GenerationRequest, ProgressCallback, ProgressEvent
from kinema.engines.device import Placement
from kinema.engines.sampling import LTX2Sampling
from kinema.errors import Cancelled
from kinema.media.frames import fit_audio, iter_output_frames


def load_pipeline(model_dir: Path, placement: Placement, *, offload: str, vae_tiling: bool) -> Any:
    """Load an LTX2Pipeline from a diffusers directory onto the chosen device."""
    from diffusers import LTX2Pipeline

    pipe = LTX2Pipeline.from_pretrained(model_dir, dtype=placement.dtype)
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
    if vae_tiling and placement.device.type == "cuda":
        pipe.vae.enable_tiling()
    if placement.compile:
        pipe.transformer.compile_repeated_blocks(fullgraph=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class LTX2Engine:
    """A loaded LTX-2 model serving text-to-video and image-to-video from one set of weights."""

    def __init__(self, pipe: Any, sampling: LTX2Sampling, placement: Placement) -> None:
        from diffusers import LTX2ImageToVideoPipeline

        self.pipe = pipe
        self.i2v = LTX2ImageToVideoPipeline.from_pipe(pipe)
        self.i2v.set_progress_bar_config(disable=True)
        self.sampling = sampling
        self.placement = placement
        self._embeddings: OrderedDict[tuple[str, str], tuple[torch.Tensor, ...]] = OrderedDict()

    @property
    def spatial_multiple(self) -> int:
        return int(self.pipe.vae_spatial_compression_ratio)

    @property
    def temporal_multiple(self) -> int:
        return int(self.pipe.vae_temporal_compression_ratio)

    @property
    def audio_sample_rate(self) -> int:
        return int(getattr(self.pipe.vocoder.config, "output_sampling_rate", 24000))

    def generate(
        self, request: GenerationRequest, progress: ProgressCallback, cancel: CancelToken
    ) -> GeneratedClip:
        """Encode the prompt, denoise video and audio latents jointly, then decode what was asked for."""
        timings: dict[str, float] = {}
        gen_w, gen_h = generation_size(
            request.width,
            request.height,
            multiple=self.spatial_multiple,
            max_pixels=self.sampling.max_generation_pixels,
        )

        progress(ProgressEvent("encode_text"))
        started = time.perf_counter()
        embeds = self.encode_prompt(request.prompt, request.negative_prompt or "")
        timings["encode_text"] = time.perf_counter() - started
        cancel.raise_if_cancelled()

        started = time.perf_counter()
        latents, audio_latents = self.denoise(request, embeds, gen_w, gen_h, progress, cancel)
        timings["denoise"] = time.perf_counter() - started

        progress(ProgressEvent("decode_video"))
        started = time.perf_counter()
        video = self.decode_video(latents, request.seed)
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
        )

    @torch.inference_mode()
    def encode_prompt(self, prompt: str, negative_prompt: str) -> tuple[torch.Tensor, ...]:
        """Text embeddings, cached: re-running a prompt skips the (large) text encoder."""
        key = (prompt, negative_prompt if self.sampling.uses_cfg else "")
        if key in self._embeddings:
            self._embeddings.move_to_end(key)
            return self._embeddings[key]
        embeds, mask, neg_embeds, neg_mask = self.pipe.encode_prompt(
            prompt=prompt,
            negative_prompt=negative_prompt,
            do_classifier_free_guidance=self.sampling.uses_cfg,
            max_sequence_length=self.sampling.max_sequence_length,
            device=self.pipe._execution_device,
        )
        result = (embeds, mask, neg_embeds, neg_mask)
        self._embeddings[key] = result
        while len(self._embeddings) > 16:
            self._embeddings.popitem(last=False)
        return result

    @torch.inference_mode()
    def denoise(
        self,
        request: GenerationRequest,
        embeds: tuple[torch.Tensor, ...],
        width: int,
        height: int,
        progress: ProgressCallback,
        cancel: CancelToken,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the diffusers pipeline to latents, reporting each step and honouring cancellation."""
        s = self.sampling
        total = s.steps

        def on_step_end(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            progress(ProgressEvent("denoise", step + 1, total))
            if cancel.cancelled:
                pipe._interrupt = True  # diffusers skips the remaining steps
            return {}

        prompt_embeds, mask, neg_embeds, neg_mask = embeds
        kwargs: dict[str, Any] = {
            "prompt_embeds": prompt_embeds,
            "prompt_attention_mask": mask,
            "negative_prompt_embeds": neg_embeds,
            "negative_prompt_attention_mask": neg_mask,
            "height": height,
            "width": width,
            "num_frames": request.frames.generated_frames,
            "frame_rate": float(request.frames.fps),
            "guidance_scale": s.guidance_scale,
            "stg_scale": s.stg_scale,
            "modality_scale": s.modality_scale,
            "guidance_rescale": s.guidance_rescale,
            "audio_guidance_scale": s.audio_guidance_scale or s.guidance_scale,
            "audio_stg_scale": s.stg_scale,
            "audio_modality_scale": s.modality_scale,
            "audio_guidance_rescale": s.guidance_rescale,
            "generator": torch.Generator("cpu").manual_seed(request.seed),
            "output_type": "latent",
            "callback_on_step_end": on_step_end,
            "max_sequence_length": s.max_sequence_length,
        }
        if s.sigmas is not None:
            kwargs["sigmas"] = list(s.sigmas)
        kwargs["num_inference_steps"] = total
        progress(ProgressEvent("denoise", 0, total))
        if request.image is not None:
            image = _fit_image(request.image, width, height)
            output = self.i2v(image=image, **kwargs)
        else:
            output = self.pipe(**kwargs)
        if cancel.cancelled:
            raise Cancelled("the task was cancelled during denoising")
        return output.frames, output.audio

    @torch.inference_mode()
    def decode_video(self, latents: torch.Tensor, seed: int) -> torch.Tensor:
        """Decode denormalized video latents to a (C, F, H, W) tensor in [-1, 1], on the device."""
        vae = self.pipe.vae
        timestep = None
        if vae.config.timestep_conditioning:
            # As the pipeline does: decode at a small timestep with matching noise for crisper frames.
            generator = torch.Generator("cpu").manual_seed(seed + 1)
            noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents)
            scale = self.sampling.decode_noise_scale
            latents = (1 - scale) * latents + scale * noise
            timestep = torch.tensor(
                [self.sampling.decode_timestep], device=latents.device, dtype=latents.dtype
            )
        video: torch.Tensor = vae.decode(latents.to(vae.dtype), timestep, return_dict=False)[0]
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

"""How an LTX-2 app samples; plain data, importable without torch."""

from __future__ import annotations

from dataclasses import dataclass

# Distilled LTX-2 schedule (diffusers ltx2/utils.py DISTILLED_SIGMA_VALUES).
DISTILLED_SIGMAS: tuple[float, ...] = (1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875)


@dataclass(frozen=True)
class LTX2Sampling:
    """How an app samples: steps or an explicit sigma schedule, and its guidance terms."""

    num_inference_steps: int = 8
    sigmas: tuple[float, ...] | None = DISTILLED_SIGMAS
    guidance_scale: float = 1.0
    stg_scale: float = 0.0
    modality_scale: float = 1.0
    guidance_rescale: float = 0.0
    audio_guidance_scale: float | None = None
    max_sequence_length: int = 1024
    decode_timestep: float = 0.05
    decode_noise_scale: float = 0.025
    max_generation_pixels: int | None = None  # above this, generate smaller and upscale the frames

    @property
    def steps(self) -> int:
        return len(self.sigmas) if self.sigmas is not None else self.num_inference_steps

    @property
    def uses_cfg(self) -> bool:
        return self.guidance_scale > 1.0

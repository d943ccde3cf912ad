"""What an LTX app asks of the engine; plain data, importable without torch.

The recipe itself (guidance, schedules) follows from the generation detected in the weights
(kinema.engines.ltx_recipes); an app only chooses the variant (in its EngineSpec) and a few limits.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LTX2Sampling:
    """An LTX app's choices beyond its variant (EngineSpec.variant): stages, the largest size it refines
    natively, the prompt length."""

    two_stage: bool = True
    # Above this many pixels, stage 2 refines at half the output size and the latent upsampler doubles it
    # once more before decoding (4K): a native 4K refine is minutes per step even on one H100.
    max_refine_pixels: int = 1920 * 1088
    max_sequence_length: int = 1024

"""Exact output sizes and frame counts, and the nearest sizes a model can generate."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Resolution = Literal["720p", "1080p", "4K"]
AspectRatio = Literal["16:9", "9:16", "1:1"]

_LANDSCAPE: dict[str, tuple[int, int]] = {"720p": (1280, 720), "1080p": (1920, 1080), "4K": (3840, 2160)}
ASPECT_RATIOS: dict[str, float] = {"16:9": 16 / 9, "9:16": 9 / 16, "1:1": 1.0}


def output_size(resolution: Resolution, aspect_ratio: AspectRatio) -> tuple[int, int]:
    """The contract's exact (width, height) for a resolution and aspect ratio."""
    long_side, short_side = _LANDSCAPE[resolution]
    if aspect_ratio == "16:9":
        return long_side, short_side
    if aspect_ratio == "9:16":
        return short_side, long_side
    return short_side, short_side


ALL_ASPECT_RATIOS: tuple[AspectRatio, ...] = ("16:9", "9:16", "1:1")


def nearest_aspect_ratio(
    width: int, height: int, choices: tuple[AspectRatio, ...] = ALL_ASPECT_RATIOS
) -> AspectRatio:
    """The aspect ratio among `choices` closest to an image's, compared on a log scale."""
    ratio = math.log(width / height)
    return min(choices, key=lambda name: abs(math.log(ASPECT_RATIOS[name]) - ratio))


def generation_size(width: int, height: int, *, multiple: int, max_pixels: int | None) -> tuple[int, int]:
    """The smallest model-valid size (multiples of `multiple`) covering the output, scaled to max_pixels."""
    scale = 1.0
    if max_pixels is not None and width * height > max_pixels:
        scale = math.sqrt(max_pixels / (width * height))
    gen_w = max(multiple, math.ceil(width * scale / multiple) * multiple)
    gen_h = max(multiple, math.ceil(height * scale / multiple) * multiple)
    return gen_w, gen_h


@dataclass(frozen=True)
class StageSizes:
    """Sizes of a two-stage run: stage 1, the refine stage, and what is decoded (before the exact crop)."""

    stage1: tuple[int, int] | None  # None: one stage only
    refine: tuple[int, int]
    decoded: tuple[int, int]

    @property
    def extra_upsample(self) -> bool:
        """The latent upsampler doubles the refined latents once more before decoding (4K)."""
        return self.decoded != self.refine


def stage_sizes(
    width: int, height: int, *, multiple: int, max_refine_pixels: int, two_stage: bool
) -> StageSizes:
    """Where each stage runs for an exact output size: stage 1 at half the refine size (the x2 upsampler
    brings it back), the refine size the smallest `multiple`-aligned size covering the output, and above
    max_refine_pixels a refine at half the output, doubled once more by the upsampler before decoding."""
    if not two_stage:
        size = generation_size(width, height, multiple=multiple // 2, max_pixels=None)
        return StageSizes(stage1=None, refine=size, decoded=size)
    refine = generation_size(width, height, multiple=multiple, max_pixels=None)
    decoded = refine
    if refine[0] * refine[1] > max_refine_pixels:
        refine = generation_size(
            math.ceil(width / 2), math.ceil(height / 2), multiple=multiple, max_pixels=None
        )
        decoded = (refine[0] * 2, refine[1] * 2)
    return StageSizes(stage1=(refine[0] // 2, refine[1] // 2), refine=refine, decoded=decoded)


@dataclass(frozen=True)
class FramePlan:
    """How many frames the user gets and how many the model must generate."""

    fps: int
    frames: int
    generated_frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.fps


def plan_frames(duration: float, fps: int, temporal_multiple: int) -> FramePlan:
    """Frames for a duration (exact to one frame), generated as temporal_multiple*k + 1 then trimmed."""
    frames = max(1, round(duration * fps))
    k = math.ceil((frames - 1) / temporal_multiple)
    return FramePlan(fps=fps, frames=frames, generated_frames=temporal_multiple * k + 1)


def describe_size(width: int, height: int) -> tuple[str, str]:
    """The (resolution, aspect_ratio) labels for actual pixel dimensions, or "WxH"-style fallbacks."""
    for resolution in ("720p", "1080p", "4K"):
        for aspect in ("16:9", "9:16", "1:1"):
            if output_size(resolution, aspect) == (width, height):  # type: ignore[arg-type]
                return resolution, aspect
    divisor = math.gcd(width, height)
    return f"{width}x{height}", f"{width // divisor}:{height // divisor}"

"""Fitting decoded frames to the exact output size, and turning them into uint8 RGB."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F


def fit_frames(video: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Scale (F, C, H, W) frames to cover width x height, then center-crop to exactly that size."""
    _, _, src_h, src_w = video.shape
    scale = max(width / src_w, height / src_h)
    if abs(scale - 1.0) > 1e-9:
        new_w = max(width, round(src_w * scale))
        new_h = max(height, round(src_h * scale))
        video = F.interpolate(video, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
        src_h, src_w = new_h, new_w
    top = (src_h - height) // 2
    left = (src_w - width) // 2
    return video[:, :, top : top + height, left : left + width]


def to_uint8_rgb(video: torch.Tensor) -> np.ndarray:
    """(F, C, H, W) frames in [-1, 1] to a (F, H, W, 3) uint8 array on the CPU."""
    pixels = ((video.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def iter_output_frames(
    video: torch.Tensor, *, frames: int, width: int, height: int, chunk: int = 8
) -> Iterator[np.ndarray]:
    """Lazily yield uint8 chunks of the first `frames` frames of a (C, F, H, W) video, fitted to size."""
    for start in range(0, frames, chunk):
        part = video[:, start : min(start + chunk, frames)].permute(1, 0, 2, 3)
        yield to_uint8_rgb(fit_frames(part, width, height))


def fit_audio(audio: np.ndarray, samples: int) -> np.ndarray:
    """Trim or pad (with silence at the end) a (channels, n) waveform to exactly `samples`."""
    if audio.shape[1] >= samples:
        return np.ascontiguousarray(audio[:, :samples])
    pad = np.zeros((audio.shape[0], samples - audio.shape[1]), dtype=audio.dtype)
    return np.concatenate([audio, pad], axis=1)

from __future__ import annotations

import numpy as np
import torch

from kinema.media.frames import fit_audio, fit_frames, iter_output_frames, to_uint8_rgb


def test_fit_frames_center_crops_without_scaling_when_covering() -> None:
    video = torch.zeros(2, 3, 736, 1280)
    video[:, :, 8:728] = 1.0  # the rows a center crop to 720 keeps
    fitted = fit_frames(video, 1280, 720)
    assert fitted.shape == (2, 3, 720, 1280)
    assert torch.all(fitted == 1.0)


def test_fit_frames_scales_up_to_cover_then_crops() -> None:
    fitted = fit_frames(torch.zeros(1, 3, 1088, 1920), 3840, 2160)
    assert fitted.shape == (1, 3, 2160, 3840)


def test_to_uint8_maps_minus_one_to_one_onto_0_255() -> None:
    video = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    pixels = to_uint8_rgb(video)
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 1, 4, 3)
    assert pixels[0, 0, :, 0].tolist() == [0, 128, 255, 255]


def test_iter_output_frames_trims_to_the_requested_count() -> None:
    chunks = list(iter_output_frames(torch.zeros(3, 25, 64, 64), frames=20, width=64, height=32, chunk=8))
    assert [c.shape[0] for c in chunks] == [8, 8, 4]
    assert chunks[0].shape[1:] == (32, 64, 3)


def test_fit_audio_pads_with_silence_and_trims() -> None:
    audio = np.ones((2, 10), dtype=np.float32)
    padded = fit_audio(audio, 15)
    assert padded.shape == (2, 15) and padded[:, 10:].sum() == 0
    assert fit_audio(audio, 4).shape == (2, 4)

from __future__ import annotations

import pytest

from kinema.domain.sizing import (
    describe_size,
    generation_size,
    nearest_aspect_ratio,
    output_size,
    plan_frames,
)


@pytest.mark.parametrize(
    ("resolution", "aspect", "size"),
    [
        ("720p", "16:9", (1280, 720)),
        ("1080p", "16:9", (1920, 1080)),
        ("4K", "16:9", (3840, 2160)),
        ("720p", "9:16", (720, 1280)),
        ("1080p", "9:16", (1080, 1920)),
        ("4K", "9:16", (2160, 3840)),
        ("720p", "1:1", (720, 720)),
        ("1080p", "1:1", (1080, 1080)),
        ("4K", "1:1", (2160, 2160)),
    ],
)
def test_output_size_matches_contract_and_labels_back(
    resolution: str, aspect: str, size: tuple[int, int]
) -> None:
    assert output_size(resolution, aspect) == size  # type: ignore[arg-type]
    assert describe_size(*size) == (resolution, aspect)


def test_describe_size_of_unknown_dimensions_is_explicit() -> None:
    assert describe_size(800, 600) == ("800x600", "4:3")


def test_generation_size_rounds_up_to_multiples_of_32() -> None:
    assert generation_size(1280, 720, multiple=32, max_pixels=None) == (1280, 736)
    assert generation_size(1920, 1080, multiple=32, max_pixels=None) == (1920, 1088)
    assert generation_size(720, 720, multiple=32, max_pixels=None) == (736, 736)


def test_generation_size_caps_pixels_for_4k() -> None:
    width, height = generation_size(3840, 2160, multiple=32, max_pixels=1920 * 1088)
    assert width % 32 == 0 and height % 32 == 0
    assert width * height <= 1920 * 1088 * 1.05
    assert width / height == pytest.approx(16 / 9, rel=0.03)


@pytest.mark.parametrize(
    ("duration", "fps", "frames", "generated"),
    [
        (5.0, 24, 120, 121),
        (1.0, 24, 24, 25),
        (0.1, 24, 2, 9),
        (20.0, 24, 480, 481),
        (5.0, 25, 125, 129),
        (1 / 24, 24, 1, 1),
    ],
)
def test_plan_frames_is_exact_and_8k_plus_1(duration: float, fps: int, frames: int, generated: int) -> None:
    plan = plan_frames(duration, fps, 8)
    assert (plan.frames, plan.generated_frames) == (frames, generated)
    assert (plan.generated_frames - 1) % 8 == 0
    assert plan.generated_frames >= plan.frames
    assert abs(plan.duration - duration) <= 0.5 / fps


@pytest.mark.parametrize(
    ("size", "aspect"),
    [
        ((1920, 1080), "16:9"),
        ((1080, 1920), "9:16"),
        ((1000, 1000), "1:1"),
        ((1600, 1200), "1:1"),
        ((2400, 1200), "16:9"),
        ((900, 1600), "9:16"),
    ],
)
def test_nearest_aspect_ratio(size: tuple[int, int], aspect: str) -> None:
    assert nearest_aspect_ratio(*size) == aspect

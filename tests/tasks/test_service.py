"""The submit-side arithmetic: the hold a run places, Cancel-After parsing, micro-unit money."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from decimal import Decimal

import pytest

from kinema.apps.registry import LTX2_FAST, TINY
from kinema.billing.pricing import PriceTable, bill, from_micros, to_micros
from kinema.errors import BadRequest
from kinema.tasks.service import max_cost_micros, parse_duration


@pytest.mark.parametrize(
    ("resolution", "audio", "duration", "expected"),
    [
        ("720p", False, 5, "0.5"),
        ("1080p", False, 5, "0.5"),
        ("720p", True, 5, "1.25"),
        ("1080p", True, 5, "1.25"),  # the seed's example
        ("4K", False, 5, "1.5"),
        ("4K", True, 5, "1.75"),  # the seed's 4K example
        ("1080p", True, 20, "5"),
        ("4K", True, 1, "0.35"),
        ("720p", False, 2.5, "0.25"),
        ("1080p", True, 7.3, "1.823"),  # 175 frames at 24 fps = 7.292 s, billed on delivered frames
    ],
)
def test_hold_is_the_default_price_of_every_requested_frame(
    resolution: str, audio: bool, duration: float, expected: str
) -> None:
    run = LTX2_FAST.input_model(prompt="x", resolution=resolution, generate_audio=audio, duration=duration)
    frames = round(duration * 24)
    delivered = bill(LTX2_FAST.pricing, resolution=resolution, has_audio=audio, frames=frames, fps=24)
    assert from_micros(max_cost_micros(LTX2_FAST, run)) == Decimal(delivered.cost)
    assert Decimal(delivered.cost) == Decimal(expected)


def test_hold_uses_a_custom_table() -> None:
    table = PriceTable(currency="EUR", video=Decimal("0.02"), video_audio=Decimal("0.05"),
                       video_4k=Decimal("0.2"), video_4k_audio=Decimal("0.333333"))  # fmt: skip
    app = dataclasses.replace(TINY, pricing=table)
    run = app.input_model(prompt="x", resolution="4K", generate_audio=True, duration=3)
    assert to_micros("0.999999") == max_cost_micros(app, run)
    run = app.input_model(prompt="x", resolution="720p", generate_audio=False, duration=0.5)
    assert from_micros(max_cost_micros(app, run)) == Decimal("0.01")


def test_micro_units_are_exact_and_refuse_sub_micro_amounts() -> None:
    assert to_micros("1.25") == 1_250_000 and to_micros(Decimal("-0.000001")) == -1
    assert from_micros(1_750_000) == Decimal("1.75")
    with pytest.raises(ValueError):
        to_micros("0.0000001")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("1.5h", 5400), (" 2m ", 120)],
)
def test_cancel_after_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "soon", "5 minutes", "-5s", "0", "8d", "1h30", "10000h"])
def test_bad_cancel_after_is_a_400(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_duration(text)

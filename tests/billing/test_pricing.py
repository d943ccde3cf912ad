from __future__ import annotations

from decimal import Decimal

import pytest

from kinema.billing.pricing import PriceTable, bill, billable_seconds, format_money


@pytest.mark.parametrize(
    ("resolution", "audio", "seconds", "cost"),
    [
        ("1080p", True, 5, "1.25"),
        ("4K", True, 5, "1.75"),
        ("720p", False, 5, "0.50"),
        ("1080p", False, 5, "0.50"),
        ("4K", False, 5, "1.50"),
        ("720p", True, 8, "2.00"),
        ("4K", True, 20, "7.00"),
    ],
)
def test_default_table_matches_the_seed_platform(
    resolution: str, audio: bool, seconds: int, cost: str
) -> None:
    billing = bill(PriceTable(), resolution=resolution, has_audio=audio, frames=seconds * 24, fps=24)
    assert billing.cost == cost
    assert billing.currency == "USD"
    assert billing.billable_seconds == str(seconds)


def test_partial_seconds_are_billed_exactly_to_the_millisecond() -> None:
    billing = bill(PriceTable(), resolution="720p", has_audio=False, frames=119, fps=24)
    assert billing.billable_seconds == "4.958"
    assert Decimal(billing.cost) == Decimal("0.4958")


def test_custom_table_and_no_floats() -> None:
    table = PriceTable(currency="EUR", video=Decimal("0.07"), video_audio=Decimal("0.123456"))
    billing = bill(table, resolution="1080p", has_audio=True, frames=75, fps=25)
    assert billing.cost == "0.370368"
    assert billing.rate_per_second == "0.123456"
    assert billing.currency == "EUR"
    assert isinstance(table.rate("720p", False), Decimal)


def test_billable_seconds_and_money_formatting() -> None:
    assert billable_seconds(1, 24) == Decimal("0.042")
    assert format_money(Decimal("1.2")) == "1.20"
    assert format_money(Decimal("0.0000004")) == "0.00"
    assert format_money(Decimal("3")) == "3.00"

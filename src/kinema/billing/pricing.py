"""Per-second prices and the arithmetic of a charge, in exact decimals (never floats)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from pydantic import BaseModel, ConfigDict, Field

from kinema.domain.outputs import Billing

MICRO = Decimal("0.000001")
MILLI = Decimal("0.001")


def format_money(amount: Decimal) -> str:
    """A decimal amount as a string with at least two and at most six decimal places."""
    text = f"{amount.quantize(MICRO, rounding=ROUND_HALF_UP):f}"
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0").ljust(2, "0")
    return f"{whole}.{frac}"


class PriceTable(BaseModel):
    """Rates per delivered second; the default is the seed platform's table."""

    model_config = ConfigDict(frozen=True)

    currency: str = "USD"
    video: Decimal = Field(default=Decimal("0.10"), description="720p/1080p without audio, per second")
    video_audio: Decimal = Field(default=Decimal("0.25"), description="720p/1080p with audio, per second")
    video_4k: Decimal = Field(default=Decimal("0.30"), description="4K without audio, per second")
    video_4k_audio: Decimal = Field(default=Decimal("0.35"), description="4K with audio, per second")

    def rate(self, resolution: str, has_audio: bool) -> Decimal:
        """The per-second rate for a configuration."""
        if resolution == "4K":
            return self.video_4k_audio if has_audio else self.video_4k
        return self.video_audio if has_audio else self.video


def billable_seconds(frames: int, fps: int) -> Decimal:
    """Delivered seconds, rounded half-up to the millisecond."""
    return (Decimal(frames) / Decimal(fps)).quantize(MILLI, rounding=ROUND_HALF_UP)


def bill(table: PriceTable, *, resolution: str, has_audio: bool, frames: int, fps: int) -> Billing:
    """The charge for the seconds actually delivered."""
    seconds = billable_seconds(frames, fps)
    rate = table.rate(resolution, has_audio)
    cost = (seconds * rate).quantize(MICRO, rounding=ROUND_HALF_UP)
    return Billing(
        billable_seconds=f"{seconds.normalize():f}",
        rate_per_second=format_money(rate),
        cost=format_money(cost),
        currency=table.currency,
    )


MICROS_PER_UNIT = 1_000_000


def to_micros(amount: Decimal | str) -> int:
    """An exact amount as integer micro-units (the ledger's unit); more than six decimals is an error."""
    value = Decimal(amount)
    micros = value * MICROS_PER_UNIT
    if micros != micros.to_integral_value():
        raise ValueError(f"{amount} has more than six decimal places")
    return int(micros)


def from_micros(micros: int) -> Decimal:
    """Integer micro-units back to an exact decimal amount."""
    return Decimal(micros) / MICROS_PER_UNIT


def format_micros(micros: int) -> str:
    """Integer micro-units as the API and CLI write money: format_money's at least two decimals."""
    return format_money(from_micros(micros))

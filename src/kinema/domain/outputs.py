"""What a completed task delivers: where the MP4 is, facts read from it, what ran and what it cost."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Billing(BaseModel):
    """What a completed task costs; amounts serialized as exact decimal strings."""

    model_config = ConfigDict(frozen=True)

    billable_seconds: str
    rate_per_second: str
    cost: str
    currency: str


class VideoOutput(BaseModel):
    """Where the produced MP4 is."""

    video: str = Field(description="URL of the stored MP4 (H.264 + optional AAC).")


class StageRun(BaseModel):
    """One sampling or upscaling stage as it ran."""

    name: str
    width: int
    height: int
    steps: int
    sigmas: list[float] | None = None
    guidance_scale: float | None = None


class ModelRun(BaseModel):
    """The model side of a run, as it actually happened (not as the input asked)."""

    weights: str
    generation: str
    variant: str
    stages: list[StageRun]
    upscale: str = Field(description="How the output size was reached beyond the last stage.")
    text_encoder: str = Field(description="Where the text encoder ran: gpu, cpu, or the device (CPU runs).")
    fallbacks: list[str] = Field(default_factory=list, description="Departures from the recipe, and why.")


class OutputMeta(BaseModel):
    """Facts about the delivered file and run, read from the file itself, never echoed from the input."""

    width: int
    height: int
    resolution: str
    aspect_ratio: str
    duration: float
    fps: float
    frames: int
    has_audio: bool
    video_codec: str
    audio_codec: str | None
    size_bytes: int
    seed: int | None = Field(
        description="The seed used; null when the provider takes none (Veo via the Gemini API)."
    )
    timings: dict[str, float]
    billing: Billing
    model: ModelRun | None = Field(
        default=None,
        description="What ran: weights, generation, variant, stages and upscaling (local models).",
    )

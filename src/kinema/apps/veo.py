"""What Google's Veo 3.1 accepts, as kinema's input schema plus the rules that depend on the key's API.

Google supports fewer choices than the contract: 16:9 and 9:16 only, 4, 6 or 8 seconds, and 1080p or 4K
only at 8 seconds. Those limits are in the JSON Schema and refused with a 422 before any call to Google;
nothing is silently changed to something else.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, StrictBool, StrictFloat, StrictInt, ValidationInfo, field_validator

from kinema.apps.schema import VideoInput
from kinema.domain.sizing import AspectRatio
from kinema.errors import InvalidInput
from kinema.settings import Settings

VEO_DURATIONS = (4, 6, 8)
VEO_ASPECT_RATIOS: tuple[AspectRatio, ...] = ("16:9", "9:16")
VEO_FPS = 24
FULL_LENGTH_ONLY = ("1080p", "4K")  # Google renders these sizes only as 8-second clips

# One schema-level statement of the cross-field rule, so clients can check it without reading prose.
_RULES: dict[str, Any] = {
    "allOf": [
        {
            "if": {
                "properties": {"resolution": {"enum": list(FULL_LENGTH_ONLY)}},
                "required": ["resolution"],
            },
            "then": {"properties": {"duration": {"const": 8}}},
        }
    ]
}


class VeoInput(VideoInput):
    """The common input, limited to what Veo 3.1 renders."""

    model_config = ConfigDict(json_schema_extra=_RULES)

    aspect_ratio: Literal["16:9", "9:16"] | None = Field(
        default=None,
        description="16:9 or 9:16 (Google renders no 1:1). Default 16:9, or the nearer of the two to the "
        "image's shape when an image is given.",
    )
    generate_audio: StrictBool = Field(
        default=False,
        description="An AAC track generated with the video. With a Gemini API key Google always generates "
        "audio; kinema removes the track when this is false.",
    )
    duration: StrictFloat = Field(
        default=8.0,
        json_schema_extra={"enum": list(VEO_DURATIONS)},
        description="Seconds of video: 4, 6 or 8. 1080p and 4K are rendered only at 8.",
    )
    seed: StrictInt | None = Field(
        default=None,
        ge=0,
        le=2**32 - 1,
        description="Random seed, with a Vertex AI key only: Google's Gemini API takes no seed (422).",
    )

    @field_validator("duration")
    @classmethod
    def _veo_duration(cls, value: float, info: ValidationInfo) -> float:
        if value not in VEO_DURATIONS:
            raise ValueError("Veo renders 4, 6 or 8 seconds")
        resolution = info.data.get("resolution")
        if resolution in FULL_LENGTH_ONLY and value != 8:
            raise ValueError(f"Veo renders {resolution} only as 8-second clips")
        return float(value)


def google_api(settings: Settings) -> Literal["gemini", "vertex"]:
    """Which Google API the configured key is for."""
    return "vertex" if settings.google_vertexai else "gemini"


def check_veo_input(validated: VideoInput, settings: Settings) -> None:
    """Refuse, before any call to Google, what this server's kind of key cannot do (InvalidInput)."""
    if validated.seed is not None and google_api(settings) == "gemini":
        raise InvalidInput(
            "invalid input: seed: Google's Gemini API takes no seed; leave it out, or use a Vertex AI key "
            "(KINEMA_GOOGLE_VERTEXAI=true)",
            details=[
                {"field": "seed", "type": "unsupported_by_provider", "message": "not with a Gemini key"}
            ],
        )


def missing_key_reason(settings: Settings) -> str | None:
    """Why a Veo app cannot run here (no key), and how to give it one; None when a key is set."""
    if settings.google_api_key is not None:
        return None
    return (
        "needs your Google API key: set KINEMA_GOOGLE_API_KEY (or GOOGLE_API_KEY / GEMINI_API_KEY) "
        "and restart"
    )

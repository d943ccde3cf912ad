"""The common input contract every video app accepts, as pydantic models published as JSON Schema."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    ValidationError,
    create_model,
)

from kinema.domain.sizing import AspectRatio, Resolution
from kinema.errors import InvalidInput


def _has_printable(text: str) -> str:
    """A prompt must say something: control and format characters alone are not a prompt."""
    if not any(ch.isprintable() and not ch.isspace() for ch in text):
        raise ValueError("the prompt has no visible characters")
    return text


Prompt = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=4000),
    AfterValidator(_has_printable),
]
OptionalText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=4000)]


class VideoInput(BaseModel):
    """Common input: prompt, optional reference image, size, audio and duration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: Prompt = Field(description="What to generate; 1 to 4000 characters after trimming.")
    image: str | None = Field(
        default=None,
        description="Reference / first frame: https:// URL, data: URI or an uploaded file id (file_...); "
        "the CLI also accepts a local path.",
    )
    resolution: Resolution = Field(default="720p", description="Output resolution.")
    aspect_ratio: AspectRatio | None = Field(
        default=None, description="16:9 by default, or the image's nearest ratio when an image is given."
    )
    generate_audio: StrictBool = Field(
        default=False, description="Generate a synchronized audio track (AAC) in the same pass."
    )
    # Strict numbers: true, "1" or "7" are refused, not coerced (JSON integers still count as numbers).
    duration: StrictFloat = Field(default=5.0, description="Seconds of video.")
    negative_prompt: OptionalText | None = Field(default=None, description="What to avoid.")
    seed: StrictInt | None = Field(
        default=None, ge=0, le=2**32 - 1, description="Random seed; chosen and reported when omitted."
    )


def input_model_for(
    name: str, *, default_duration: float, min_duration: float, max_duration: float
) -> type[VideoInput]:
    """A VideoInput subclass whose duration default and bounds are the app's own."""
    duration: Any = (
        StrictFloat,
        Field(
            default=default_duration,
            ge=min_duration,
            le=max_duration,
            allow_inf_nan=False,
            description=f"Seconds of video, {min_duration:g} to {max_duration:g}.",
        ),
    )
    return create_model(name, __base__=VideoInput, duration=duration)


def format_validation_error(error: ValidationError) -> str:
    """A one-line message naming each bad field."""
    parts = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "input"
        if item["type"] == "extra_forbidden":
            parts.append(f"{field}: unknown field")
        else:
            parts.append(f"{field}: {item['msg']}")
    return "invalid input: " + "; ".join(parts)


def parse_input(model: type[VideoInput], raw: Any) -> VideoInput:
    """Validate a raw JSON object against an app's input model, raising InvalidInput."""
    if not isinstance(raw, dict):
        raise InvalidInput("invalid input: expected a JSON object")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(
            format_validation_error(exc),
            details=exc.errors(include_url=False, include_context=False, include_input=False),
        ) from exc

"""The catalogue of apps: who they are, what they accept, what they cost, which engine runs them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kinema.apps.schema import VideoInput, input_model_for
from kinema.billing.pricing import PriceTable
from kinema.engines.sampling import DISTILLED_SIGMAS, LTX2Sampling
from kinema.errors import AppNotFound


@dataclass(frozen=True)
class App:
    """An app addressed owner/name, with its schema, pricing and engine configuration."""

    owner: str
    name: str
    version: str
    title: str
    description: str
    input_model: type[VideoInput]
    sampling: LTX2Sampling
    default_weights: str  # a Hugging Face model id, or "builtin:tiny"
    fps: int = 24
    pricing: PriceTable = field(default_factory=PriceTable)
    notes: tuple[str, ...] = ()
    examples: tuple[dict[str, Any], ...] = ()
    approx_download_gb: float | None = None

    @property
    def id(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def is_builtin(self) -> bool:
        return self.default_weights.startswith("builtin:")

    def input_schema(self) -> dict[str, Any]:
        """The input model as JSON Schema."""
        return self.input_model.model_json_schema()

    def describe(self) -> dict[str, Any]:
        """The app's public description: schema, defaults, pricing, notes, examples (CLI and API)."""
        return {
            "id": self.id,
            "owner": self.owner,
            "name": self.name,
            "version": self.version,
            "title": self.title,
            "description": self.description,
            "fps": self.fps,
            "notes": list(self.notes),
            "input_schema": self.input_schema(),
            "pricing": {
                "currency": self.pricing.currency,
                "per_second": {
                    "720p/1080p video": str(self.pricing.video),
                    "720p/1080p video+audio": str(self.pricing.video_audio),
                    "4K video": str(self.pricing.video_4k),
                    "4K video+audio": str(self.pricing.video_4k_audio),
                },
            },
            "examples": list(self.examples),
            "weights": self.default_weights,
        }


_EXAMPLES = (
    {"prompt": "A drone shot rising over a foggy forest at sunrise", "generate_audio": True},
    {"prompt": "The camera slowly zooms out", "image": "./landscape.jpg", "resolution": "1080p"},
)

LTX2_FAST = App(
    owner="lightricks",
    name="ltx-2-fast",
    version="2.0-distilled",
    title="LTX-2 Fast",
    description="LTX-2 distilled: 8-step text/image-to-video with joint audio. The default app.",
    input_model=input_model_for("LTX2FastInput", default_duration=5.0, min_duration=1.0, max_duration=20.0),
    # 4K is generated at 1080p and upscaled: the 19B model at 4K natively does not fit one GPU's time budget.
    sampling=LTX2Sampling(sigmas=DISTILLED_SIGMAS, max_generation_pixels=1920 * 1088),
    default_weights="Lightricks/LTX-2",
    examples=_EXAMPLES,
    approx_download_gb=90.0,
)

LTX2_FULL = App(
    owner="lightricks",
    name="ltx-2",
    version="2.0",
    title="LTX-2",
    description="LTX-2 full model: 40 steps with classifier-free and spatio-temporal guidance; quality tier.",
    input_model=input_model_for("LTX2Input", default_duration=5.0, min_duration=1.0, max_duration=20.0),
    sampling=LTX2Sampling(
        num_inference_steps=40,
        sigmas=None,
        guidance_scale=4.0,
        stg_scale=1.0,
        modality_scale=3.0,
        guidance_rescale=0.7,
        audio_guidance_scale=7.0,
        max_generation_pixels=1920 * 1088,
    ),
    default_weights="Lightricks/LTX-2",
    examples=_EXAMPLES,
    approx_download_gb=90.0,
)

TINY = App(
    owner="kinema",
    name="tiny",
    version="1",
    title="kinema tiny (test model)",
    description="The LTX-2 engine on tiny random weights built in code, for tests and offline smoke runs.",
    input_model=input_model_for("TinyInput", default_duration=1.0, min_duration=0.1, max_duration=20.0),
    sampling=LTX2Sampling(sigmas=(1.0, 0.725, 0.421875), max_sequence_length=128),
    default_weights="builtin:tiny",
    notes=(
        "Output is random noise by design: the weights are random. Use it to check the install, not to "
        "judge quality.",
    ),
    examples=({"prompt": "smoke test", "duration": 1.0},),
)

APPS: dict[str, App] = {app.id: app for app in (LTX2_FAST, LTX2_FULL, TINY)}
DEFAULT_APP = LTX2_FAST.id


def get_app(app_id: str) -> App:
    """The app registered as owner/name."""
    try:
        return APPS[app_id]
    except KeyError:
        known = ", ".join(sorted(APPS))
        raise AppNotFound(f"no app named {app_id!r}; known apps: {known}") from None


def list_apps() -> list[App]:
    """All apps, default first."""
    return sorted(APPS.values(), key=lambda app: (app.id != DEFAULT_APP, app.id))

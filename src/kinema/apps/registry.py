"""The catalogue of apps: who they are, what they accept, what they cost, which engine runs them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kinema.apps.schema import VideoInput, input_model_for
from kinema.apps.veo import (
    VEO_ASPECT_RATIOS,
    VEO_FPS,
    VeoInput,
    check_veo_input,
    google_api,
    missing_key_reason,
)
from kinema.billing.pricing import PriceTable, format_money
from kinema.domain.sizing import ALL_ASPECT_RATIOS, AspectRatio
from kinema.engines.loading import WeightsStatus, human_bytes, is_local_source, weights_status
from kinema.engines.sampling import LTX2Sampling
from kinema.errors import AppNotFound, AppUnavailable
from kinema.settings import Settings


@dataclass(frozen=True)
class RemoteModel:
    """A model an outside provider runs with the user's own key: the provider and its model ids."""

    provider: str  # "google"
    gemini_model: str  # the id on Google's Gemini API
    vertex_model: str  # the id on Vertex AI

    def model_id(self, app_id: str, settings: Settings) -> str:
        """The provider's model id for this server: settings.google_models overrides the default."""
        if app_id in settings.google_models:
            return settings.google_models[app_id]
        return self.vertex_model if google_api(settings) == "vertex" else self.gemini_model


@dataclass(frozen=True)
class Availability:
    """Whether an app can run on this server as configured, and if not, why."""

    available: bool
    reason: str | None = None


@dataclass(frozen=True)
class App:
    """An app addressed owner/name, with its schema, pricing and engine configuration."""

    owner: str
    name: str
    version: str
    title: str
    description: str
    input_model: type[VideoInput]
    # A local app has sampling and weights (LTX-2 on this machine); a remote app has a provider model.
    sampling: LTX2Sampling | None = None
    default_weights: str | None = None  # a Hugging Face model id, or "builtin:tiny"
    remote: RemoteModel | None = None
    fps: int = 24
    pricing: PriceTable = field(default_factory=PriceTable)
    notes: tuple[str, ...] = ()
    examples: tuple[dict[str, Any], ...] = ()
    aspect_ratios: tuple[AspectRatio, ...] = ALL_ASPECT_RATIOS
    # Checks that depend on this server's configuration, run before any work (and before a provider call).
    input_rules: Callable[[VideoInput, Settings], None] | None = None

    def __post_init__(self) -> None:
        local = self.sampling is not None and self.default_weights is not None
        if local == (self.remote is not None):
            raise ValueError(f"app {self.id}: give either sampling and default_weights, or remote")

    @property
    def id(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def is_remote(self) -> bool:
        """The model runs at an outside provider: no GPU, no weights, no torch in this process."""
        return self.remote is not None

    @property
    def is_builtin(self) -> bool:
        return self.default_weights is not None and self.default_weights.startswith("builtin:")

    def input_schema(self) -> dict[str, Any]:
        """The input model as JSON Schema."""
        return self.input_model.model_json_schema()

    def weights_status(self, settings: Settings) -> WeightsStatus | None:
        """Whether a local app's weights are on this machine (cache and directories only, no network)."""
        if self.sampling is None or self.default_weights is None:
            return None
        source = settings.model_paths.get(self.id, self.default_weights)
        return weights_status(self.id, source, self.sampling.variant, settings.hf_cache_dir)

    def availability(self, settings: Settings) -> Availability:
        """Whether this server can run the app: a provider app needs its API key, a local app its weights."""
        if self.remote is not None and self.remote.provider == "google" and settings.google_api_key is None:
            return Availability(False, missing_key_reason())
        status = self.weights_status(settings)
        if status is None or status.present:
            return Availability(True)
        if is_local_source(status.source):
            # The reason is public (GET /v1/apps): no server paths in it.
            return Availability(
                False, "needs its weights: its KINEMA_MODEL_PATHS directory holds no usable model"
            )
        if settings.allow_download:
            return Availability(True)  # fetched on first run
        size = f", about {human_bytes(status.download_bytes)}" if status.download_bytes else ""
        return Availability(
            False,
            f"needs its weights ({status.source}{size}), which are not on this machine: download them with "
            f"`kinema models pull {self.id}`, or set KINEMA_ALLOW_DOWNLOAD=1 to fetch them on first run",
        )

    def describe_weights(self, settings: Settings) -> dict[str, Any] | None:
        """The weights part of describe(): source, present, generation, download size when absent."""
        status = self.weights_status(settings)
        if status is None:
            return None
        download = None if status.present else status.download_bytes
        return {
            "source": "local directory" if is_local_source(status.source) else status.source,
            "variant": self.sampling.variant if self.sampling is not None else None,
            "present": status.present,
            "generation": status.generation,
            "download_bytes": download,
            "download_size": human_bytes(download) if download else None,
            "download_estimated": download is not None and not status.download_exact,
        }

    def check_input(self, validated: VideoInput, settings: Settings) -> None:
        """Refuse what this server cannot run, before any work: AppUnavailable (503) or InvalidInput (422)."""
        availability = self.availability(settings)
        if not availability.available:
            raise AppUnavailable(f"{self.id} cannot run here: it {availability.reason}")
        if self.input_rules is not None:
            self.input_rules(validated, settings)

    def describe(self, settings: Settings | None = None) -> dict[str, Any]:
        """The app's public description: schema, defaults, pricing, notes, examples (CLI and API).

        With settings, it also says whether this server can run the app and which provider model it calls.
        """
        availability = self.availability(settings) if settings is not None else Availability(True)
        provider = None
        if self.remote is not None:
            provider = {"name": self.remote.provider}
            if settings is not None:
                provider["api"] = google_api(settings)
                provider["model"] = self.remote.model_id(self.id, settings)
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
                    "720p/1080p video": format_money(self.pricing.video),
                    "720p/1080p video+audio": format_money(self.pricing.video_audio),
                    "4K video": format_money(self.pricing.video_4k),
                    "4K video+audio": format_money(self.pricing.video_4k_audio),
                },
            },
            "examples": list(self.examples),
            "weights": self.describe_weights(settings) if settings is not None else None,
            "engine": "remote" if self.is_remote else "local",
            "provider": provider,
            "available": availability.available,
            "unavailable_reason": availability.reason,
        }


_EXAMPLES = (
    {"prompt": "A drone shot rising over a foggy forest at sunrise", "generate_audio": True},
    {"prompt": "The camera slowly zooms out", "image": "./landscape.jpg", "resolution": "1080p"},
)

LTX2_FAST = App(
    owner="lightricks",
    name="ltx-2-fast",
    version="2.5-distilled-2stage",
    title="LTX-2 Fast",
    description="LTX-2.5 distilled, the official two-stage recipe: 8 steps at half size, the x2 latent "
    "upsampler, 3 refining steps at full size; text/image-to-video with joint audio. The default app.",
    input_model=input_model_for("LTX2FastInput", default_duration=5.0, min_duration=1.0, max_duration=20.0),
    sampling=LTX2Sampling(variant="distilled"),
    default_weights="Lightricks/LTX-2.5-Diffusers",
    notes=(
        "Weights: Lightricks/LTX-2.5-Diffusers (gated: accept the licence on its Hugging Face page and set "
        "HF_TOKEN). Point KINEMA_MODEL_PATHS at LTX-2.3 or LTX-2 weights to pin an older generation; the "
        "matching recipe follows from the weights' configs.",
    ),
    examples=_EXAMPLES,
)

LTX2_FULL = App(
    owner="lightricks",
    name="ltx-2",
    version="2.5-full-2stage",
    title="LTX-2",
    description="LTX-2.5 full model: 30 guided steps (CFG, spatio-temporal and modality guidance) at half "
    "size, then the x2 latent upsampler and 3 steps with the distilled LoRA at full size; quality tier.",
    input_model=input_model_for("LTX2Input", default_duration=5.0, min_duration=1.0, max_duration=20.0),
    sampling=LTX2Sampling(variant="full"),
    default_weights="Lightricks/LTX-2.5-Diffusers",
    notes=LTX2_FAST.notes,
    examples=_EXAMPLES,
)

TINY = App(
    owner="kinema",
    name="tiny",
    version="1",
    title="kinema tiny (test model)",
    description="The LTX-2.5 two-stage engine on tiny random weights in the real repo layout, built in code, "
    "for tests and offline smoke runs.",
    input_model=input_model_for("TinyInput", default_duration=1.0, min_duration=0.1, max_duration=20.0),
    sampling=LTX2Sampling(variant="distilled", max_sequence_length=128),
    default_weights="builtin:tiny",
    notes=(
        "Output is random noise by design: the weights are random. Use it to check the install, not to "
        "judge quality.",
    ),
    examples=({"prompt": "smoke test", "duration": 1.0},),
)

_VEO_NOTES = (
    "Runs on Google's servers with your own Google API key (KINEMA_GOOGLE_API_KEY); no GPU needed here. "
    "Google bills your Google account for each run; kinema's price table is separate.",
    "Google renders 16:9 or 9:16, 4, 6 or 8 seconds, and 1080p or 4K only at 8 seconds; other requests are "
    "refused (422) before any call.",
    "A cancelled run stops kinema waiting; Google may still finish, and bill, the video.",
)
_VEO_EXAMPLES: tuple[dict[str, Any], ...] = (
    {"prompt": "A drone shot rising over a foggy forest at sunrise", "generate_audio": True},
    {"prompt": "The camera slowly zooms out", "image": "./landscape.jpg", "duration": 6},
)


def _veo_app(name: str, version: str, title: str, description: str, model: str) -> App:
    """A Veo app: Google's model `model` in its Gemini API (-preview) and Vertex AI (-001) names."""
    return App(
        owner="google",
        name=name,
        version=version,
        title=title,
        description=description,
        input_model=VeoInput,
        remote=RemoteModel(
            provider="google", gemini_model=f"{model}-generate-preview", vertex_model=f"{model}-generate-001"
        ),
        fps=VEO_FPS,
        notes=_VEO_NOTES,
        examples=_VEO_EXAMPLES,
        aspect_ratios=VEO_ASPECT_RATIOS,
        input_rules=check_veo_input,
    )


VEO_3_1_FAST = _veo_app(
    "veo-3-1-fast",
    "3.1-fast",
    "Veo 3.1 Fast (Google)",
    "Google's Veo 3.1 Fast, run by Google with your own API key: text/image-to-video with audio.",
    "veo-3.1-fast",
)
VEO_3_1 = _veo_app(
    "veo-3-1",
    "3.1",
    "Veo 3.1 (Google)",
    "Google's Veo 3.1 (standard quality tier), run by Google with your own API key.",
    "veo-3.1",
)

APPS: dict[str, App] = {app.id: app for app in (LTX2_FAST, LTX2_FULL, TINY, VEO_3_1_FAST, VEO_3_1)}
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

"""The catalogue of apps: who they are, what they accept, what they cost, which engine runs them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kinema.apps.schema import VideoInput, input_model_for
from kinema.apps.veo import VEO_ASPECT_RATIOS, VEO_FPS, VeoInput, check_veo_input, missing_key_reason
from kinema.billing.pricing import PriceTable, format_money
from kinema.domain.sizing import ALL_ASPECT_RATIOS, AspectRatio
from kinema.domain.stages import DELIVERY_STAGES, stage_label
from kinema.engines.base import EngineSpec
from kinema.engines.kandinsky6 import FPS as KANDINSKY6_FPS
from kinema.engines.kandinsky6 import KANDINSKY6_PRO, KANDINSKY6_PRO_DISTILL, MAX_DURATION
from kinema.engines.loading import WeightsStatus, human_bytes, is_local_source
from kinema.engines.registry import app_weights_status, engine_family
from kinema.engines.sampling import LTX2Sampling
from kinema.engines.veo import GoogleModel
from kinema.errors import AppNotFound, AppUnavailable
from kinema.settings import Settings


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
    engine: EngineSpec  # the family that runs it, with its options and default weights
    fps: int = 24
    pricing: PriceTable = field(default_factory=PriceTable)
    notes: tuple[str, ...] = ()
    examples: tuple[dict[str, Any], ...] = ()
    aspect_ratios: tuple[AspectRatio, ...] = ALL_ASPECT_RATIOS
    # Checks that depend on this server's configuration, run before any work (and before a provider call).
    input_rules: Callable[[VideoInput, Settings], None] | None = None
    # Why this server cannot run the app at all (a provider app without its key), or None.
    unmet_requirement: Callable[[Settings], str | None] | None = None

    def __post_init__(self) -> None:
        family = engine_family(self.engine.family)  # an unknown family fails at import, not at run
        if family.remote == (self.engine.weights is not None):
            raise ValueError(f"app {self.id}: a local family needs weights, a provider's family none")

    @property
    def id(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def is_remote(self) -> bool:
        """The model runs at an outside provider: no GPU, no weights, no torch in this process."""
        return engine_family(self.engine.family).remote

    @property
    def is_builtin(self) -> bool:
        return self.engine.weights is not None and self.engine.weights.startswith("builtin:")

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages a run of this app reports, in order: its engine's, then delivery."""
        return engine_family(self.engine.family).stages + DELIVERY_STAGES

    def input_schema(self) -> dict[str, Any]:
        """The input model as JSON Schema."""
        return self.input_model.model_json_schema()

    def weights_status(self, settings: Settings) -> WeightsStatus | None:
        """Whether a local app's weights are on this machine (cache and directories only, no network)."""
        return app_weights_status(self.id, self.engine, settings)

    def availability(self, settings: Settings) -> Availability:
        """Whether this server can run the app: a provider app needs its API key, a local app its weights."""
        if self.unmet_requirement is not None and (reason := self.unmet_requirement(settings)) is not None:
            return Availability(False, reason)
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
            "variant": self.engine.variant,
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
        options = self.engine.options
        provider = options.describe(self.id, settings) if isinstance(options, GoogleModel) else None
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
            "family": self.engine.family,
            "stages": [{"name": name, "label": stage_label(name)} for name in self.stages],
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
    engine=EngineSpec(
        "ltx2", options=LTX2Sampling(), weights="Lightricks/LTX-2.5-Diffusers", variant="distilled"
    ),
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
    engine=EngineSpec("ltx2", options=LTX2Sampling(), weights="Lightricks/LTX-2.5-Diffusers", variant="full"),
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
    engine=EngineSpec(
        "ltx2", options=LTX2Sampling(max_sequence_length=128), weights="builtin:tiny", variant="distilled"
    ),
    notes=(
        "Output is random noise by design: the weights are random. Use it to check the install, not to "
        "judge quality.",
    ),
    examples=({"prompt": "smoke test", "duration": 1.0},),
)

_KANDINSKY6_NOTES = (
    "Native size about 864x480 (480x864 portrait, 640x640 square): 720p, 1080p and 4K are that video resized "
    "and center-cropped (output_meta.model.upscale says how); Kandinsky's separate super-resolution model is "
    "not used. A 5-second model: 1 to 5 s at 24 fps; audio is 44.1 kHz mono, stereo AAC in the MP4.",
    "Needs a GPU with about 70 GB free for the 30B transformer in bf16 (the 7B text encoder then stays on "
    "the CPU), about 90 GB to keep everything on the GPU; KINEMA_OFFLOAD=model for smaller cards.",
    "Licence: MIT, as the Kandinsky 6.0 model cards state (check the model page). The Kandinsky 6.0 Pro "
    "repos are gated on Hugging Face: accept the terms on the model page and set HF_TOKEN.",
    'Smoke test without the download: KINEMA_MODEL_PATHS=\'{"<app>": "builtin:tiny-kandinsky6"}\' (the fast '
    "app) or builtin:tiny-kandinsky6-full (the quality app) runs tiny random weights in the real layout.",
)
_KANDINSKY6_EXAMPLES: tuple[dict[str, Any], ...] = (
    {
        "prompt": "A golden retriever runs along a sunny beach, waves crashing, cinematic footage",
        "generate_audio": True,
    },
    {
        "prompt": "A man with short gray hair plays a red electric guitar",
        "image": "./guitar-man.png",
        "generate_audio": True,
    },
)

KANDINSKY6_FAST = App(
    owner="kandinskylab",
    name="kandinsky-6-fast",
    version="6.0-pro-distill-10step",
    title="Kandinsky 6 Fast",
    description="Kandinsky 6.0 Pro distilled (pi-Flow): 10 unguided steps of one 30B transformer that "
    "denoises video and audio together at about 864x480, then resized to the output size; "
    "text/image-to-video with joint audio, up to 5 s.",
    input_model=input_model_for(
        "Kandinsky6FastInput", default_duration=MAX_DURATION, min_duration=1.0, max_duration=MAX_DURATION
    ),
    engine=EngineSpec(
        "kandinsky6",
        options=KANDINSKY6_PRO_DISTILL,
        weights="kandinskylab/Kandinsky-6.0-Pro-distill-5s-Diffusers",
        variant="distilled",
    ),
    fps=KANDINSKY6_FPS,
    # Ten transformer passes per clip, about LTX-2 Fast's work: its video price, audio a little cheaper.
    pricing=PriceTable(
        video=Decimal("0.10"),
        video_audio=Decimal("0.20"),
        video_4k=Decimal("0.20"),
        video_4k_audio=Decimal("0.30"),
    ),
    notes=(
        "Weights: kandinskylab/Kandinsky-6.0-Pro-distill-5s-Diffusers, about 89 GB (a 60 GB transformer, "
        "Qwen2.5-VL 7B and CLIP text encoders, video and audio VAEs, vocoder).",
        *_KANDINSKY6_NOTES,
    ),
    examples=_KANDINSKY6_EXAMPLES,
)

KANDINSKY6 = App(
    owner="kandinskylab",
    name="kandinsky-6",
    version="6.0-pro-50step-cfg5",
    title="Kandinsky 6",
    description="Kandinsky 6.0 Pro, the flow-matching model: 50 steps with classifier-free guidance 5.0 at "
    "about 864x480, video and audio denoised together, then resized to the output size; quality tier.",
    input_model=input_model_for(
        "Kandinsky6Input", default_duration=MAX_DURATION, min_duration=1.0, max_duration=MAX_DURATION
    ),
    engine=EngineSpec(
        "kandinsky6",
        options=KANDINSKY6_PRO,
        weights="kandinskylab/Kandinsky-6.0-Pro-5s-Diffusers",
        variant="full",
    ),
    fps=KANDINSKY6_FPS,
    # 50 guided steps are 100 transformer passes, ten times the fast app's.
    pricing=PriceTable(
        video=Decimal("0.50"),
        video_audio=Decimal("0.60"),
        video_4k=Decimal("0.60"),
        video_4k_audio=Decimal("0.70"),
    ),
    notes=(
        "Weights: kandinskylab/Kandinsky-6.0-Pro-5s-Diffusers, about 99 GB (a 70 GB transformer stored "
        "partly in fp32, Qwen2.5-VL 7B and CLIP text encoders, video and audio VAEs, vocoder).",
        *_KANDINSKY6_NOTES,
    ),
    examples=_KANDINSKY6_EXAMPLES,
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
        engine=EngineSpec(
            "veo", options=GoogleModel(f"{model}-generate-preview", vertex_model=f"{model}-generate-001")
        ),
        fps=VEO_FPS,
        notes=_VEO_NOTES,
        examples=_VEO_EXAMPLES,
        aspect_ratios=VEO_ASPECT_RATIOS,
        input_rules=check_veo_input,
        unmet_requirement=missing_key_reason,
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

APPS: dict[str, App] = {
    app.id: app for app in (LTX2_FAST, LTX2_FULL, TINY, KANDINSKY6_FAST, KANDINSKY6, VEO_3_1_FAST, VEO_3_1)
}
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

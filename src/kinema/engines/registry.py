"""The engine families kinema knows, and loading an app's engine (warm, on the worker's device).

A family is one module under kinema.engines plus one entry in FAMILIES. Its loader is named as
"module:function" and imported on first use, so a process that never runs a local model never imports torch.
The worker, runner, API and CLI only see the Engine protocol (kinema.engines.base) and these functions.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from kinema.engines.base import Engine, EngineSpec, LayoutError, WeightsPlanner
from kinema.engines.cache import WarmModels
from kinema.engines.kandinsky6 import KANDINSKY6_WEIGHTS
from kinema.engines.loading import WeightsStatus, resolve_weights, weights_status
from kinema.engines.ltx_recipes import LTX2_WEIGHTS
from kinema.errors import ModelNotAvailable
from kinema.settings import Settings

# load(app_id, spec, model_dir, settings, device) -> Engine. model_dir is None for a provider's engine; device
# is the worker's own device ("cuda:1", "cpu"), or None to let the family choose from settings.
Loader = Callable[[str, EngineSpec, Path | None, Settings, str | None], Engine]


@dataclass(frozen=True)
class EngineFamily:
    """One kind of model kinema can run: how to load it, what stages it reports, how to find its weights."""

    name: str
    title: str
    loader: str  # "module:function", a Loader
    stages: tuple[str, ...]  # what generate() reports, in order; the worker adds encode and store
    remote: bool = False  # runs at a provider: no weights, no GPU, no torch here
    weights: WeightsPlanner | None = None  # a local family's weights planner
    builtins: Mapping[str, str] = field(default_factory=dict)  # builtin:<name> -> "module:function(dir)"
    model_name: str = "{generation}"  # how people name a generation of its models, e.g. "LTX-{generation}"

    def label(self, generation: str | None) -> str:
        """A generation as people name it ("LTX-2.5"); "?" when unknown."""
        return self.model_name.format(generation=generation) if generation else "?"


FAMILIES: dict[str, EngineFamily] = {
    family.name: family
    for family in (
        EngineFamily(
            name="ltx2",
            title="LTX-2 (Lightricks) through diffusers",
            loader="kinema.engines.ltx2:load_engine",
            stages=("load", "encode_text", "denoise", "upsample", "decode_video", "decode_audio"),
            weights=LTX2_WEIGHTS,
            builtins={"tiny": "kinema.engines.tiny:save_tiny_model"},
            model_name="LTX-{generation}",
        ),
        EngineFamily(
            name="kandinsky6",
            title="Kandinsky 6 (Kandinsky Lab) through diffusers",
            loader="kinema.engines.kandinsky6:load_engine",
            stages=("load", "encode_text", "denoise", "decode_video", "decode_audio"),
            weights=KANDINSKY6_WEIGHTS,
            builtins={
                "tiny-kandinsky6": "kinema.engines.kandinsky6_tiny:save_tiny_kandinsky6",
                "tiny-kandinsky6-full": "kinema.engines.kandinsky6_tiny:save_tiny_kandinsky6_full",
            },
            model_name="Kandinsky {generation}",
        ),
        EngineFamily(
            name="veo",
            title="Google Veo through the Gemini API or Vertex AI",
            loader="kinema.engines.veo:load_engine",
            stages=("submit", "generate", "download"),
            remote=True,
        ),
    )
}


# One model load at a time per process. from_pretrained builds modules on the meta device under a context
# that patches torch globally (accelerate's init_empty_weights), so two workers loading at once corrupt
# each other's models ("Cannot copy out of meta tensor"; found by the two-worker test). Loading is
# disk-bound anyway.
_LOADING = threading.Lock()


def engine_family(name: str) -> EngineFamily:
    """The family registered under name."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"no engine family {name!r}; known: {', '.join(sorted(FAMILIES))}") from None


def _import(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def weights_source(app_id: str, spec: EngineSpec, settings: Settings) -> str | None:
    """Where an app's weights come from here: KINEMA_MODEL_PATHS overrides the app's default."""
    return settings.model_paths.get(app_id, spec.weights) if spec.weights is not None else None


def planner_for(spec: EngineSpec) -> WeightsPlanner | None:
    """The weights planner of a local app's family (None for a provider)."""
    return engine_family(spec.family).weights


def app_weights_status(app_id: str, spec: EngineSpec, settings: Settings) -> WeightsStatus | None:
    """Whether a local app's weights are on this machine (cache and directories only, no network)."""
    source = weights_source(app_id, spec, settings)
    planner = planner_for(spec)
    if source is None or planner is None:
        return None
    return weights_status(source, planner, spec.variant, settings.hf_cache_dir)


def locate_weights(app_id: str, spec: EngineSpec, settings: Settings) -> Path:
    """The local directory holding an app's weights: a builtin model is built, a hub model downloaded
    (when allowed); ModelNotAvailable otherwise."""
    family = engine_family(spec.family)
    source = weights_source(app_id, spec, settings)
    if source is None or family.weights is None:
        raise ValueError(f"{app_id} runs at a provider; it has no weights")
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in family.builtins:
            raise ModelNotAvailable(f"{app_id}: the {family.name} family has no builtin model {name!r}")
        return cast(Path, _import(family.builtins[name])(settings.models_dir / f"kinema-{name}"))
    return resolve_weights(
        app_id,
        source,
        family.weights,
        variant=spec.variant,
        allow_download=settings.allow_download,
        cache_dir=settings.hf_cache_dir,
    )


def load_engine(
    app_id: str, spec: EngineSpec, settings: Settings, warm: WarmModels, device: str | None = None
) -> tuple[Engine, bool]:
    """The app's warm engine on this device, loading it only the first time; whether it loaded now."""
    family = engine_family(spec.family)
    model_dir = None if family.remote else locate_weights(app_id, spec, settings)
    spec = replace(spec, weights=weights_source(app_id, spec, settings))  # what runs here, for output_meta
    placement = (device or settings.device, settings.dtype, settings.fp8, settings.compile, settings.offload)
    key = "|".join(map(str, (app_id, spec, model_dir, *placement, settings.vae_tiling)))

    def loader() -> Engine:
        load = cast(Loader, _import(family.loader))
        try:
            with _LOADING:
                return load(app_id, spec, model_dir, settings, device)
        except LayoutError as exc:
            raise ModelNotAvailable(f"{app_id}: {exc}", details={"weights": str(model_dir)}) from exc
        except (OSError, ValueError, RuntimeError) as exc:  # damaged or partial files (safetensors, configs)
            if model_dir is None or _is_out_of_memory(exc):
                raise
            raise ModelNotAvailable(
                f"{app_id}: the weights in {model_dir} could not be loaded ({exc}); download them again"
                f" with `kinema models pull {app_id}`",
                public_message=f"the weights for {app_id} on this server could not be loaded",
                details={"weights": str(model_dir)},
            ) from exc

    if family.remote:  # a client is cheap, and must not take a warm model's place
        return loader(), False
    engine, loaded = warm.get_or_load(key, loader)
    return cast(Engine, engine), loaded


def _is_out_of_memory(exc: BaseException) -> bool:
    """torch's out-of-memory error is a RuntimeError that must not pass as damaged weights."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.OutOfMemoryError)


def identify_model(model_dir: Path) -> tuple[str, str | None] | None:
    """Which family (and generation) a model directory holds, for `kinema models list`."""
    for family in FAMILIES.values():
        if family.weights is not None and (generation := family.weights.identify(model_dir)) is not None:
            return family.name, generation
    return None

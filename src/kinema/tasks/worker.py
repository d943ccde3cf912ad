"""The worker path: validate -> render (a local model, or a remote provider) -> probe -> bill -> store.

Two kinds of app share one tail. A local app (LTX-2) loads its warm engine, generates frames and encodes
them; a remote app (Google's Veo) has the provider make the video and brings its file onto the contract.
Either way the MP4 in staging is then probed, billed and stored the same way, so output_meta is always read
from the delivered file. torch and diffusers are imported only on the local path.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from kinema.apps.registry import App
from kinema.apps.schema import VideoInput, parse_input
from kinema.billing.pricing import bill
from kinema.domain.outputs import ModelRun, OutputMeta, VideoOutput
from kinema.domain.sizing import describe_size, nearest_aspect_ratio, output_size, plan_frames
from kinema.domain.tasks import Task, TaskError, TaskProgress, TaskStatus, utcnow
from kinema.engines.base import (
    CancelToken,
    GenerationRequest,
    ProgressCallback,
    ProgressEvent,
    ignore_progress,
)
from kinema.engines.cache import WARM_MODELS, WarmModels
from kinema.errors import Cancelled, KinemaError, ProviderBadOutput
from kinema.media.encode import EncodeOptions, encode_mp4
from kinema.media.images import ImageLimits, load_image
from kinema.media.probe import probe_video
from kinema.settings import Settings
from kinema.storage.base import Storage
from kinema.storage.files import is_storage_fault, storage_fault
from kinema.storage.keys import output_key

if TYPE_CHECKING:
    from kinema.engines.ltx2 import LTX2Engine

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What a run needs from its caller: settings, storage, a progress sink and a cancel switch.

    allow_local_paths marks the machine's own user (the CLI): images may be local files, and errors keep
    their full text; a server's runs get errors without server paths (those go to its log).
    """

    settings: Settings
    storage: Storage
    progress: ProgressCallback = ignore_progress
    cancel: CancelToken = field(default_factory=CancelToken)
    allow_local_paths: bool = False
    warm: WarmModels = WARM_MODELS


@dataclass(frozen=True)
class PreparedInput:
    """A validated input with its image decoded and its output size settled."""

    input: VideoInput
    image: Image.Image | None
    width: int
    height: int
    aspect_ratio: str


def image_limits(settings: Settings) -> ImageLimits:
    """The image limits configured in settings."""
    return ImageLimits(
        max_bytes=settings.image_max_bytes,
        max_pixels=settings.image_max_pixels,
        fetch_timeout_s=settings.image_fetch_timeout_s,
        allow_private_urls=settings.image_allow_private_urls,
    )


def prepare_input(app: App, raw: Any, settings: Settings, *, allow_local_paths: bool) -> PreparedInput:
    """Validate input and load the image: InvalidInput or AppUnavailable before any model or provider work."""
    validated = parse_input(app.input_model, raw)
    app.check_input(validated, settings)
    image = None
    if validated.image is not None:
        image = load_image(validated.image, image_limits(settings), allow_local_paths=allow_local_paths)
    aspect = validated.aspect_ratio or (
        nearest_aspect_ratio(*image.size, app.aspect_ratios) if image is not None else "16:9"
    )
    width, height = output_size(validated.resolution, aspect)
    return PreparedInput(input=validated, image=image, width=width, height=height, aspect_ratio=aspect)


def weights_dir(app: App, settings: Settings) -> Path:
    """The local diffusers directory for an app's weights (building the tiny model if needed)."""
    from kinema.engines.loading import resolve_weights
    from kinema.engines.tiny import save_tiny_model

    if app.default_weights is None:
        raise ValueError(f"{app.id} runs at a provider; it has no weights")
    source = settings.model_paths.get(app.id, app.default_weights)
    if source == "builtin:tiny":
        return save_tiny_model(settings.models_dir / "kinema-tiny")
    variant = app.sampling.variant if app.sampling is not None else "distilled"
    return resolve_weights(
        app.id,
        source,
        variant=variant,
        allow_download=settings.allow_download,
        cache_dir=settings.hf_cache_dir,
    )


def load_engine(app: App, settings: Settings, warm: WarmModels) -> tuple[LTX2Engine, bool]:
    """The app's warm engine, loading it (after checking it fits) only the first time."""
    from kinema.engines.device import check_fits, choose_placement
    from kinema.engines.ltx2 import LTX2Engine, load_pipeline
    from kinema.engines.ltx_recipes import LayoutError, plan_local_layout
    from kinema.errors import ModelNotAvailable

    assert app.sampling is not None, f"{app.id} is not a local app"
    sampling = app.sampling
    model_dir = weights_dir(app, settings)
    placement = choose_placement(settings)
    key = f"{app.id}|{model_dir}|{sampling.variant}|{placement.key}|{settings.offload}"

    def loader() -> LTX2Engine:
        try:
            layout = plan_local_layout(model_dir, sampling.variant)
        except LayoutError as exc:
            raise ModelNotAvailable(f"{app.id}: {exc}", details={"weights": str(model_dir)}) from exc
        folders = {
            *layout.components,
            layout.transformer,
            *(x for x in (layout.upsampler, layout.stage2_lora) if x),
        }
        try:
            text_encoder = check_fits(app.id, model_dir, placement, settings, folders=folders)
            if placement.device.type == "cuda" and text_encoder == "device":
                text_encoder = "gpu"
            loaded = load_pipeline(
                model_dir,
                layout,
                placement,
                offload=settings.offload,
                vae_tiling=settings.vae_tiling,
                text_encoder=text_encoder,
            )
        except (OSError, ValueError, RuntimeError) as exc:  # damaged or partial files (safetensors, configs)
            if isinstance(exc, torch_oom()):
                raise
            raise ModelNotAvailable(
                f"{app.id}: the weights in {model_dir} could not be loaded ({exc}); download them again"
                f" with `kinema models pull {app.id}`",
                public_message=f"the weights for {app.id} on this server could not be loaded",
                details={"weights": str(model_dir)},
            ) from exc
        source = settings.model_paths.get(app.id, app.default_weights or "")
        return LTX2Engine(
            loaded, sampling, placement, layout=layout, weights=source, text_encoder=text_encoder
        )

    engine, loaded = warm.get_or_load(key, loader)
    return engine, loaded


def torch_oom() -> type[BaseException]:
    """torch's out-of-memory error (a RuntimeError that must not pass as damaged weights)."""
    import torch

    return torch.OutOfMemoryError


def _checked(frames: Iterable[np.ndarray], cancel: CancelToken) -> Iterator[np.ndarray]:
    for chunk in frames:
        cancel.raise_if_cancelled()
        yield chunk


def run_task(
    app: App,
    raw_input: Any,
    ctx: RunContext,
    *,
    prepared: PreparedInput | None = None,
    task: Task | None = None,
) -> Task:
    """Run one task to its end state; bad input raises InvalidInput (an app this setup cannot run,
    AppUnavailable), every later failure is a failed task.

    A server passes the task it claimed from its store; the CLI lets this make a fresh one.
    """
    prepared = prepared or prepare_input(
        app, raw_input, ctx.settings, allow_local_paths=ctx.allow_local_paths
    )
    task = task or Task(
        app=app.id, version=app.version, input=prepared.input.model_dump(mode="json", exclude_none=True)
    )
    return _run(app, prepared, ctx, task)


@dataclass(frozen=True)
class Rendered:
    """What a render left in staging: an MP4 on the contract, the seed it used, and its stage timings."""

    seed: int | None
    timings: dict[str, float]
    model: dict[str, Any] | None = None  # what a local model ran, for output_meta


def _run(app: App, prepared: PreparedInput, ctx: RunContext, task: Task) -> Task:
    task.status, task.started_at = TaskStatus.running, task.started_at or utcnow()

    def report(event: ProgressEvent) -> None:
        task.progress = TaskProgress(stage=event.stage, step=event.step, total=event.total)
        ctx.progress(event)

    staging: Path | None = None
    try:
        begun = time.perf_counter()
        staging = ctx.storage.staging_file(".mp4")
        render = _render_remote if app.is_remote else _render_local
        rendered = render(app, prepared, ctx, report, staging)
        ctx.cancel.raise_if_cancelled()
        task.output, task.output_meta = _deliver(app, ctx, task, staging, rendered, report, begun)
        staging = None  # stored: nothing to discard
        task.status = TaskStatus.completed
    except Cancelled as exc:
        task.status, task.error = TaskStatus.cancelled, TaskError(code=exc.code, message=exc.message)
    except KinemaError as exc:
        message = exc.message if ctx.allow_local_paths else exc.public_message
        if message != exc.message:
            log.warning("task %s failed: %s", task.id, exc.message)
        task.status, task.error = TaskStatus.failed, TaskError(code=exc.code, message=message)
    except OSError as exc:  # an encoder writing into staging meets a full or read-only disk
        if not is_storage_fault(exc):
            log.exception("task %s failed", task.id)
            task.status = TaskStatus.failed
            task.error = TaskError(code="internal_error", message="generation failed; see the server log")
        else:
            fault = storage_fault(exc, "cannot write the output")
            log.warning("task %s failed: %s", task.id, fault.message)
            task.status = TaskStatus.failed
            task.error = TaskError(code=fault.code, message=fault.public_message)
    except Exception:
        log.exception("task %s failed", task.id)
        task.status = TaskStatus.failed
        task.error = TaskError(code="internal_error", message="generation failed; see the server log")
    finally:
        if staging is not None:
            ctx.storage.discard(staging)
        task.completed_at = utcnow()
    return task


def _deliver(
    app: App,
    ctx: RunContext,
    task: Task,
    staging: Path,
    rendered: Rendered,
    report: ProgressCallback,
    begun: float,
) -> tuple[VideoOutput, OutputMeta]:
    """The shared tail: read the file back, bill what it holds, store it; output_meta comes from the file."""
    info = probe_video(staging)
    resolution, aspect = describe_size(info.width, info.height)
    billing = bill(
        app.pricing,
        resolution=resolution,
        has_audio=info.has_audio,
        frames=info.frames,
        fps=round(info.fps),
    )
    report(ProgressEvent("store"))
    timings = dict(rendered.timings)
    started = time.perf_counter()
    stored = ctx.storage.put(staging, output_key(task.id))
    timings["store"] = time.perf_counter() - started
    timings["total"] = time.perf_counter() - begun
    meta = OutputMeta(
        width=info.width,
        height=info.height,
        resolution=resolution,
        aspect_ratio=aspect,
        duration=round(info.duration, 6),
        fps=info.fps,
        frames=info.frames,
        has_audio=info.has_audio,
        video_codec=info.video_codec,
        audio_codec=info.audio_codec,
        size_bytes=stored.size_bytes,
        seed=rendered.seed,
        timings={k: round(v, 4) for k, v in timings.items()},
        billing=billing,
        model=ModelRun.model_validate(rendered.model) if rendered.model is not None else None,
    )
    return VideoOutput(video=stored.url), meta


def encode_options(settings: Settings, *, hardware: bool) -> EncodeOptions:
    """The encoder settings for kinema's own MP4s."""
    return EncodeOptions(
        crf=settings.video_crf,
        preset=settings.video_preset,
        hardware=settings.hardware_encoder and hardware,
        audio_sample_rate=settings.audio_sample_rate,
        audio_bitrate=settings.audio_bitrate,
    )


def _render_local(
    app: App, prepared: PreparedInput, ctx: RunContext, report: ProgressCallback, staging: Path
) -> Rendered:
    """LTX-2 on this machine: the warm engine generates frames (and audio), encoded into staging."""
    begun = time.perf_counter()
    report(ProgressEvent("load"))
    engine, _ = load_engine(app, ctx.settings, ctx.warm)
    timings = {"load": time.perf_counter() - begun}
    ctx.cancel.raise_if_cancelled()

    request = GenerationRequest(
        prompt=prepared.input.prompt,
        negative_prompt=prepared.input.negative_prompt,
        image=prepared.image,
        width=prepared.width,
        height=prepared.height,
        frames=plan_frames(prepared.input.duration, app.fps, engine.temporal_multiple),
        generate_audio=prepared.input.generate_audio,
        seed=prepared.input.seed if prepared.input.seed is not None else secrets.randbelow(2**32),
    )
    clip = engine.generate(request, report, ctx.cancel)
    timings.update(clip.timings)
    model = clip.model

    report(ProgressEvent("encode"))
    started = time.perf_counter()
    encode_mp4(
        staging,
        _checked(clip.frames, ctx.cancel),
        width=clip.width,
        height=clip.height,
        fps=clip.fps,
        audio=clip.audio,
        sample_rate=clip.sample_rate,
        options=encode_options(ctx.settings, hardware=engine.placement.device.type == "cuda"),
    )
    timings["encode"] = time.perf_counter() - started
    return Rendered(seed=clip.seed, timings=timings, model=model)


def _render_remote(
    app: App, prepared: PreparedInput, ctx: RunContext, report: ProgressCallback, staging: Path
) -> Rendered:
    """A provider makes the video with the user's key; its file is brought onto the contract in staging."""
    from kinema.apps.veo import google_api
    from kinema.engines.veo import VeoClient, VeoConfig, VeoRequest
    from kinema.media.conform import ContractTarget, UnusableVideo, conform_mp4

    assert app.remote is not None and app.remote.provider == "google", f"no remote engine for {app.id}"
    settings, validated = ctx.settings, prepared.input
    # Vertex AI takes a seed, so one is always chosen and reported; the Gemini API takes none.
    seed = None
    if google_api(settings) == "vertex":
        seed = validated.seed if validated.seed is not None else secrets.randbelow(2**32)
    request = VeoRequest(
        model=app.remote.model_id(app.id, settings),
        prompt=validated.prompt,
        negative_prompt=validated.negative_prompt,
        image=prepared.image,
        width=prepared.width,
        height=prepared.height,
        aspect_ratio=prepared.aspect_ratio,
        resolution=validated.resolution,
        duration_seconds=round(validated.duration),
        generate_audio=validated.generate_audio,
        seed=seed,
    )
    download = ctx.storage.staging_file(".provider.mp4")
    try:
        with VeoClient(VeoConfig.from_settings(settings)) as client:
            result = client.generate(request, download, report, ctx.cancel)
        ctx.cancel.raise_if_cancelled()
        report(ProgressEvent("encode"))
        started = time.perf_counter()
        want = ContractTarget(
            width=prepared.width,
            height=prepared.height,
            duration=validated.duration,
            audio=validated.generate_audio,
        )
        try:
            done = conform_mp4(download, staging, want, encode_options(settings, hardware=False))
        except UnusableVideo as exc:
            raise ProviderBadOutput(f"Google's video is unusable: {exc}") from exc
        timings = {**result.timings, "encode": time.perf_counter() - started}
        log.info("veo: operation %s delivered (%s, %d polls)", result.operation, done, result.polls)
        return Rendered(seed=seed, timings=timings)
    finally:
        ctx.storage.discard(download)

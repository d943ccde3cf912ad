"""The worker path: validate -> engine.generate -> encode (or conform) -> probe -> bill -> store.

The app names its engine; the worker only knows the Engine protocol (kinema.engines.base). A local engine
(LTX-2, Kandinsky 6) generates frames, which are encoded; a provider's engine (Google's Veo) returns its
file, which is brought onto the contract. Either way the MP4 in staging is then probed, billed and stored
the same way, so output_meta is always read from the delivered file. torch and diffusers are imported only
when a local engine loads.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from kinema.apps.registry import App
from kinema.apps.schema import VideoInput, parse_input
from kinema.billing.pricing import bill
from kinema.domain.outputs import ModelRun, OutputMeta, VideoOutput
from kinema.domain.sizing import describe_size, nearest_aspect_ratio, output_size, plan_frames
from kinema.domain.tasks import Task, TaskError, TaskProgress, TaskStatus, utcnow
from kinema.engines import registry
from kinema.engines.base import (
    CancelToken,
    Engine,
    GenerationRequest,
    ProgressCallback,
    ProgressEvent,
    ProviderStateCallback,
    ignore_progress,
    ignore_provider_state,
)
from kinema.engines.cache import WARM_MODELS, WarmModels
from kinema.errors import Cancelled, KinemaError, ProviderBadOutput
from kinema.media.conform import ContractTarget, UnusableVideo, conform_mp4
from kinema.media.encode import EncodeOptions, encode_mp4
from kinema.media.images import ImageLimits, load_image
from kinema.media.probe import probe_video
from kinema.settings import Settings
from kinema.storage.base import Storage
from kinema.storage.files import is_storage_fault, storage_fault
from kinema.storage.keys import output_key

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What a run needs from its caller: settings, storage, a progress sink, a cancel switch and, for a
    provider app, the state to resume from and where to save new state.

    allow_local_paths marks the machine's own user (the CLI): images may be local files, and errors keep
    their full text; a server's runs get errors without server paths (those go to its log).
    """

    settings: Settings
    storage: Storage
    progress: ProgressCallback = ignore_progress
    cancel: CancelToken = field(default_factory=CancelToken)
    allow_local_paths: bool = False
    warm: WarmModels = WARM_MODELS
    device: str | None = None  # the worker's own device ("cuda:1"); None: settings decide
    # A provider app's resumable state: what an earlier attempt of this task saved, and where a run saves
    # new state (a server keeps it in its task store; the CLI keeps none).
    resume: dict[str, Any] | None = None
    on_provider_state: ProviderStateCallback = ignore_provider_state


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


def load_engine(
    app: App, settings: Settings, warm: WarmModels, device: str | None = None
) -> tuple[Engine, bool]:
    """The app's warm engine on this worker's device, and whether it was loaded now."""
    return registry.load_engine(app.id, app.engine, settings, warm, device)


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
        rendered = _render(app, prepared, ctx, report, staging)
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
    stored = ctx.storage.put(staging, output_key(task.id, task.attempt))
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


def _render(
    app: App, prepared: PreparedInput, ctx: RunContext, report: ProgressCallback, staging: Path
) -> Rendered:
    """The app's engine makes the clip; frames are encoded (or a provider's file conformed) into staging."""
    begun = time.perf_counter()
    timings: dict[str, float] = {}
    if not app.is_remote:
        report(ProgressEvent("load"))
    engine, _ = load_engine(app, ctx.settings, ctx.warm, ctx.device)
    if not app.is_remote:
        timings["load"] = time.perf_counter() - begun
    ctx.cancel.raise_if_cancelled()

    validated = prepared.input
    download = ctx.storage.staging_file(".provider.mp4") if app.is_remote else None
    try:
        request = GenerationRequest(
            prompt=validated.prompt,
            negative_prompt=validated.negative_prompt,
            image=prepared.image,
            width=prepared.width,
            height=prepared.height,
            frames=plan_frames(validated.duration, app.fps, engine.frame_multiple),
            generate_audio=validated.generate_audio,
            seed=validated.seed if validated.seed is not None else secrets.randbelow(2**32),
            resolution=validated.resolution,
            aspect_ratio=prepared.aspect_ratio,
            duration=validated.duration,
            download_to=download,
            resume=ctx.resume,
            on_provider_state=ctx.on_provider_state,
        )
        clip = engine.generate(request, report, ctx.cancel)
        timings.update(clip.timings)
        ctx.cancel.raise_if_cancelled()

        report(ProgressEvent("encode"))
        started = time.perf_counter()
        options = encode_options(ctx.settings, hardware=engine.device.startswith("cuda"))
        if clip.video_file is not None:
            want = ContractTarget(
                width=prepared.width,
                height=prepared.height,
                duration=validated.duration,
                audio=validated.generate_audio,
            )
            try:
                done = conform_mp4(clip.video_file, staging, want, options)
            except UnusableVideo as exc:
                raise ProviderBadOutput(f"the provider's video is unusable: {exc}") from exc
            log.info("%s: the provider's video delivered (%s)", app.id, done)
        elif clip.frames is not None:
            encode_mp4(
                staging,
                _checked(clip.frames, ctx.cancel),
                width=clip.width,
                height=clip.height,
                fps=clip.fps,
                audio=clip.audio,
                sample_rate=clip.sample_rate,
                options=options,
            )
        else:
            raise ValueError(f"{app.id}: its engine returned neither frames nor a video file")
        timings["encode"] = time.perf_counter() - started
        return Rendered(seed=clip.seed, timings=timings, model=clip.model)
    finally:
        if download is not None:
            ctx.storage.discard(download)

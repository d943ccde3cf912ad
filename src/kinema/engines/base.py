"""The engine seam: what an engine is given, what it reports while it works, and what it hands back.

An app names its engine with an EngineSpec (family, options, weights). A family (kinema.engines.registry)
loads an Engine from that spec: a local family from weights on this machine, a remote family as a client of
a provider. The worker uses nothing of an engine beyond the Engine protocol below.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from kinema.domain.sizing import FramePlan
from kinema.errors import Cancelled

ProviderStateCallback = Callable[[dict[str, Any]], None]


def ignore_provider_state(state: dict[str, Any]) -> None:
    """A provider-state callback that keeps nothing (a run with no store to resume from: the CLI)."""


@dataclass(frozen=True)
class GenerationRequest:
    """A validated, fully resolved request: exact output size, frame plan and seed."""

    prompt: str
    negative_prompt: str | None
    image: Image.Image | None
    width: int
    height: int
    frames: FramePlan
    generate_audio: bool
    seed: int
    # The contract terms as asked, for engines that pass them on (a provider takes these, not pixel sizes).
    resolution: str = "720p"
    aspect_ratio: str = "16:9"
    duration: float = 0.0
    # A staging path a remote engine writes the provider's file into (the worker discards it afterwards).
    download_to: Path | None = None
    # A provider's engine: the state an earlier attempt of this task saved (e.g. the operation it started),
    # to follow that work instead of submitting again; None on a first attempt. Local engines ignore it.
    resume: dict[str, Any] | None = None
    # A provider's engine calls this as soon as it has state worth resuming (right after a submit), before
    # waiting; the caller keeps it durably and hands it back as `resume` if the task runs again.
    on_provider_state: ProviderStateCallback = field(default=ignore_provider_state, compare=False, repr=False)


@dataclass(frozen=True)
class ProgressEvent:
    """A stage of the work and, for stepwise stages, the step reached."""

    stage: str
    step: int | None = None
    total: int | None = None


ProgressCallback = Callable[[ProgressEvent], None]


def ignore_progress(event: ProgressEvent) -> None:
    """A progress callback that does nothing."""


class CancelToken:
    """Cooperative cancellation: the caller sets it, the engine checks it between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("the task was cancelled")

    def sleep(self, seconds: float) -> None:
        """Wait up to `seconds`, raising Cancelled as soon as the task is cancelled (for polling loops)."""
        if self._event.wait(max(0.0, seconds)):
            raise Cancelled("the task was cancelled")


@dataclass
class GeneratedClip:
    """What an engine made: frames (lazily, uint8 RGB chunks at the exact output size) with optional audio,
    or, from a provider, a video file that the worker brings onto the contract (size, duration, codecs)."""

    width: int
    height: int
    fps: int
    frame_count: int
    frames: Iterator[np.ndarray] | None
    audio: np.ndarray | None  # float32, (channels, samples), exactly frame_count / fps seconds
    sample_rate: int | None
    seed: int | None  # None: the provider takes no seed
    timings: dict[str, float] = field(default_factory=dict)
    model: dict[str, Any] | None = None  # what ran (weights, generation, variant, stages), for output_meta
    video_file: Path | None = None  # a provider's MP4 (frames is None then)


class Engine(Protocol):
    """A warm model (or a provider's client) that turns requests into clips: everything the worker uses."""

    @property
    def frame_multiple(self) -> int:
        """Frame counts are k * frame_multiple + 1 (1: any count)."""
        ...

    @property
    def size_multiple(self) -> int:
        """The multiple the model generates sizes at; the engine crops to the exact requested size."""
        ...

    @property
    def device(self) -> str:
        """Where it runs: "cuda:0", "cpu", or "remote" for a provider."""
        ...

    @property
    def audio_sample_rate(self) -> int | None:
        """The sample rate of the audio it makes, None when it makes none."""
        ...

    def generate(
        self, request: GenerationRequest, progress: ProgressCallback, cancel: CancelToken
    ) -> GeneratedClip: ...


@dataclass(frozen=True)
class EngineSpec:
    """What an app asks of its engine: set in the app registry, read only by the family's loader."""

    family: str  # a key of kinema.engines.registry.FAMILIES
    options: Any = None  # the family's own settings for this app (LTX2Sampling, a provider model, ...)
    weights: str | None = None  # a Hugging Face id, a local directory, or "builtin:<name>"; None: provider
    variant: str = "default"  # which part of the weights the app uses (LTX: "distilled" or "full")


class LayoutError(ValueError):
    """A directory or repo that does not hold what a variant needs (the message says what is missing)."""


@dataclass(frozen=True)
class WeightsPlan:
    """The files a variant loads from a model directory, and what the directory holds."""

    needed: tuple[str, ...]  # paths relative to the directory
    generation: str | None = None  # the model generation read from its configs, for display
    notes: tuple[str, ...] = ()  # departures from the usual layout, said before a download
    single_files: tuple[str, ...] = ()  # checkpoint files that must exist whole (no index, no folder)


class WeightsPlanner(Protocol):
    """A local family's knowledge of its weights: which files a variant needs; sizes to expect."""

    def plan(self, model_dir: Path, files: list[str], variant: str) -> WeightsPlan:
        """Plan from the directory's small files (model_index.json, configs) and the repo's file list;
        raises LayoutError when the directory holds no usable model for the variant."""
        ...

    def estimate_bytes(self, generation: str | None, variant: str) -> int:
        """About how many bytes the variant downloads, before the repo's listing is known."""
        ...

    def identify(self, model_dir: Path) -> str | None:
        """The generation a directory holds when it is one of this family's models (read from its
        model_index.json and configs), else None."""
        ...

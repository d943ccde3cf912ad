"""What an engine is given, what it reports while it works, and what it hands back."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

from kinema.domain.sizing import FramePlan
from kinema.errors import Cancelled


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
    """Frames (produced lazily, uint8 RGB chunks at the exact output size) and optional audio."""

    width: int
    height: int
    fps: int
    frame_count: int
    frames: Iterator[np.ndarray]
    audio: np.ndarray | None  # float32, (channels, samples), exactly frame_count / fps seconds
    sample_rate: int | None
    seed: int
    timings: dict[str, float] = field(default_factory=dict)
    model: dict[str, Any] | None = None  # what ran (weights, generation, variant, stages), for output_meta


class Engine(Protocol):
    """A warm model that turns requests into clips."""

    def generate(
        self, request: GenerationRequest, progress: ProgressCallback, cancel: CancelToken
    ) -> GeneratedClip: ...

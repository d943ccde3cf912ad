"""A test-only app, `test/instant`, whose engine costs what the test asks: the prompt "steps=5 step_s=0.2"
means 5 denoising steps of 0.2 s each (default 3 steps of no time), then a solid-colour clip.

The cluster tests and the scale bench run tens of tasks through real worker processes with it, where the
tiny LTX model's seconds of CPU per task would drown what they measure (the queue). It is a local engine
family like LTX: a builtin "weights" directory, a warm engine per worker, progress and cancel checks every
step, frames encoded and probed by the real worker.

Processes get it by starting kinema through tests/kinema_test_apps.py, which registers it first.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from kinema.apps.registry import APPS, App
from kinema.apps.schema import input_model_for
from kinema.engines.base import (
    CancelToken,
    EngineSpec,
    GeneratedClip,
    GenerationRequest,
    ProgressCallback,
    ProgressEvent,
    WeightsPlan,
)
from kinema.engines.registry import FAMILIES, EngineFamily
from kinema.settings import Settings

APP_ID = "test/instant"


InstantInput = input_model_for("InstantInput", default_duration=0.1, min_duration=0.04, max_duration=2.0)


def job_size(prompt: str) -> tuple[int, float]:
    """Steps and seconds per step from a prompt like "steps=5 step_s=0.2 anything else"."""
    values = dict(part.split("=", 1) for part in prompt.split() if "=" in part)
    return int(values.get("steps", 3)), float(values.get("step_s", 0.0))


class InstantPlanner:
    """The instant family's weights: a builtin directory with nothing to plan."""

    def plan(self, model_dir: Path, files: list[str], variant: str) -> WeightsPlan:
        return WeightsPlan(needed=())

    def estimate_bytes(self, generation: str | None, variant: str) -> int:
        return 0

    def identify(self, model_dir: Path) -> str | None:
        return None


def save_instant(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory


class InstantEngine:
    frame_multiple = 1
    size_multiple = 1
    audio_sample_rate = None

    def __init__(self, device: str) -> None:
        self.device = device
        self.pid_loaded = time.time()

    def generate(
        self, request: GenerationRequest, progress: ProgressCallback, cancel: CancelToken
    ) -> GeneratedClip:
        steps, step_s = job_size(request.prompt)
        started = time.perf_counter()
        for step in range(steps):
            cancel.raise_if_cancelled()
            progress(ProgressEvent("denoise", step + 1, steps))
            if step_s:
                cancel.sleep(step_s)
        count = request.frames.frames
        frame = np.full((request.height, request.width, 3), 90, dtype=np.uint8)

        def frames() -> Iterator[np.ndarray]:
            yield np.repeat(frame[None], count, axis=0)

        return GeneratedClip(
            width=request.width,
            height=request.height,
            fps=24,
            frame_count=count,
            frames=frames(),
            audio=None,
            sample_rate=None,
            seed=request.seed,
            timings={"denoise": time.perf_counter() - started},
        )


def load_engine(
    app_id: str, spec: EngineSpec, model_dir: Path | None, settings: Settings, device: str | None
) -> Any:
    return InstantEngine(device or "cpu")


def register() -> None:
    """Add the instant family and the test/instant app to this process's registries (idempotent)."""
    FAMILIES["instant"] = EngineFamily(
        name="instant",
        title="instant (test engine)",
        loader="tests.instant_app:load_engine",
        stages=("load", "denoise"),
        weights=InstantPlanner(),
        builtins={"instant": "tests.instant_app:save_instant"},
    )
    APPS[APP_ID] = App(
        owner="test",
        name="instant",
        version="1",
        title="instant (test app)",
        description="Steps that take what the input says, then a solid-colour clip.",
        input_model=InstantInput,
        engine=EngineSpec("instant", weights="builtin:instant"),
    )

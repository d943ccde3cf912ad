"""Every LTX generation through the real apps' whole path: weights pinned by settings, MP4 probed.

Each generation's tiny repo (real configs, real layout) runs text-to-video and image-to-video and audio on
and off, three runs a generation spread over 720p, 1080p and 4K and every aspect ratio (the full product would
be 36 runs, about 10 more CPU minutes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kinema.apps.registry import LTX2_FAST, LTX2_FULL, App
from kinema.domain.tasks import TaskStatus
from kinema.engines.cache import WarmModels
from kinema.engines.ltx_recipes import DISTILLED_SIGMAS, RECIPES, STAGE_2_SIGMAS
from kinema.engines.tiny import save_tiny_repo
from kinema.settings import Settings
from kinema.storage.local import LocalStorage
from kinema.tasks.worker import RunContext, run_task
from tests.conftest import assert_mp4, png_data_uri

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generations")
    return {g: save_tiny_repo(g, root / f"repo-{g}") for g in RECIPES}


@pytest.fixture(scope="module")
def warm() -> WarmModels:
    return WarmModels(capacity=1)


CASES = [
    # generation, app, input, expected (width, height)
    ("2.0", LTX2_FAST, {"resolution": "720p", "generate_audio": True}, (1280, 720)),
    ("2.0", LTX2_FULL, {"resolution": "1080p", "aspect_ratio": "9:16", "image": "png"}, (1080, 1920)),
    ("2.0", LTX2_FAST, {"resolution": "4K", "generate_audio": True, "image": "png"}, (3840, 2160)),
    ("2.3", LTX2_FAST, {"resolution": "1080p", "generate_audio": True, "image": "png"}, (1920, 1080)),
    ("2.3", LTX2_FAST, {"resolution": "720p", "aspect_ratio": "1:1"}, (720, 720)),
    # LTX-2.3's VAE and upsampler configs are LTX-2.5's, and the 4K path depends only on those: 4K runs on
    # 2.0 and 2.5 (about 45 s each on a CPU), 2.3 takes the remaining orientation at 720p.
    ("2.3", LTX2_FAST, {"resolution": "720p", "aspect_ratio": "9:16"}, (720, 1280)),
    ("2.5", LTX2_FULL, {"resolution": "720p", "image": "png"}, (1280, 720)),
    ("2.5", LTX2_FAST, {"resolution": "1080p", "aspect_ratio": "1:1", "generate_audio": True}, (1080, 1080)),
    ("2.5", LTX2_FAST, {"resolution": "4K", "aspect_ratio": "9:16", "generate_audio": True}, (2160, 3840)),
]


@pytest.mark.parametrize(("generation", "app", "extra", "size"), CASES)
def test_each_generation_runs_the_two_stage_recipe_to_an_exact_mp4(
    generation: str,
    app: App,
    extra: dict[str, Any],
    size: tuple[int, int],
    repos: dict[str, Path],
    warm: WarmModels,
    tmp_path: Path,
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        device="cpu",
        model_paths={app.id: str(repos[generation])},
        _env_file=None,  # type: ignore[call-arg]
    )
    ctx = RunContext(settings=settings, storage=LocalStorage(settings.outputs_dir), warm=warm)
    raw: dict[str, Any] = {"prompt": f"LTX-{generation} smoke", "duration": 1.0, "seed": 11, **extra}
    if raw.get("image") == "png":
        raw["image"] = png_data_uri(320, 180)  # 16:9: the app takes the image's ratio
    task = run_task(app, raw, ctx)
    assert task.status is TaskStatus.completed, task.error
    audio = bool(extra.get("generate_audio"))
    assert_mp4(
        settings.outputs_dir / f"{task.id}.mp4",
        width=size[0],
        height=size[1],
        duration=1.0,
        fps=24,
        audio=audio,
    )
    assert task.output_meta is not None and task.output_meta.model is not None
    model = task.output_meta.model
    # The pinned weights decide the recipe: generation from the configs, the app's variant.
    assert (model.generation, model.variant) == (generation, app.engine.variant)
    stage1, stage2 = model.stages[0], model.stages[1]
    assert (stage2.width, stage2.height) == (stage1.width * 2, stage1.height * 2)
    assert stage2.sigmas == list(STAGE_2_SIGMAS)
    if model.variant == "distilled":
        assert stage1.sigmas == list(DISTILLED_SIGMAS)
    else:
        assert stage1.steps == RECIPES[generation].full_steps and stage1.guidance_scale == 3.0
    if extra["resolution"] == "4K":
        assert model.stages[-1].name == "upsample" and model.upscale.startswith("latent_upsampler_x2")
        assert stage2.width * stage2.height <= 1920 * 1088
    else:
        assert len(model.stages) == 2 and "latent_upsampler" not in model.upscale
    assert task.output_meta.has_audio is audio
    # Billed at the tier of what was delivered (4K and audio rates included).
    four_k = extra["resolution"] == "4K"
    rate = {(False, False): "0.10", (False, True): "0.25", (True, False): "0.30", (True, True): "0.35"}
    assert task.output_meta.resolution == ("4K" if four_k else extra["resolution"])
    assert task.output_meta.billing.rate_per_second == rate[four_k, audio]
    assert task.output_meta.billing.cost == rate[four_k, audio]  # 1 s

"""The Kandinsky 6 family through the real loading path, on tiny models built from the real configs.

Each tiny repo (Pro-distill-5s and Pro-5s layouts) is built once and loaded through the engine registry
(KINEMA_MODEL_PATHS -> WeightsPlanner -> from_pretrained), and the tests record what the pipeline actually
does (transformer calls and their inputs, the scheduler's timesteps, the guidance it used, which folders
loaded) rather than trusting the arguments kinema passes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from kinema.domain.outputs import ModelRun
from kinema.domain.sizing import plan_frames
from kinema.engines import registry
from kinema.engines.base import CancelToken, EngineSpec, GenerationRequest, LayoutError, ProgressEvent
from kinema.engines.cache import WarmModels
from kinema.engines.kandinsky6 import (
    AUDIO_SAMPLE_RATE,
    KANDINSKY6_PRO,
    KANDINSKY6_PRO_DISTILL,
    KANDINSKY6_WEIGHTS,
    Kandinsky6Engine,
    model_size,
)
from kinema.engines.kandinsky6_tiny import save_tiny_repo
from kinema.errors import Cancelled
from kinema.settings import Settings

CONFIGS = Path(__file__).parents[2] / "src" / "kinema" / "engines" / "kandinsky6_configs"
FAST, FULL = "test/kandinsky-6-fast", "test/kandinsky-6"
FAST_SPEC = EngineSpec(
    family="kandinsky6",
    options=KANDINSKY6_PRO_DISTILL,
    weights="kandinskylab/Kandinsky-6.0-Pro-distill-5s-Diffusers",
    variant="distilled",
)
# Guidance as the recipe has it; 3 steps instead of 50 keep the CPU run short.
FULL_SPEC = EngineSpec(
    family="kandinsky6",
    options=dataclasses.replace(KANDINSKY6_PRO, steps=3),
    weights="kandinskylab/Kandinsky-6.0-Pro-5s-Diffusers",
    variant="full",
)
COMPONENTS = {"transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer_2", "scheduler", "audio_vae"}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: on a shared CPU, thread hand-offs cost more than the work itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kandinsky6")
    return {
        "distilled": save_tiny_repo("pro-distill", root / "distill"),
        "full": save_tiny_repo("pro", root / "full"),
    }


@pytest.fixture(scope="module")
def settings(repos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(  # type: ignore[call-arg]
        data_dir=tmp_path_factory.mktemp("data"),
        device="cpu",
        model_paths={FAST: str(repos["distilled"]), FULL: str(repos["full"])},
        _env_file=None,
    )


@pytest.fixture(scope="module")
def loaded_folders() -> list[str]:
    return []


@pytest.fixture(scope="module")
def engines(settings: Settings, loaded_folders: list[str]) -> dict[str, Kandinsky6Engine]:
    """Both engines loaded through the registry, recording which pipeline folders diffusers loads."""
    from diffusers.pipelines import pipeline_utils

    real = pipeline_utils.load_sub_model

    def recording(**kwargs: Any) -> Any:
        loaded_folders.append(kwargs["name"])
        return real(**kwargs)

    warm = WarmModels(capacity=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline_utils, "load_sub_model", recording)
        fast, fast_loaded = registry.load_engine(FAST, FAST_SPEC, settings, warm)
        full, _ = registry.load_engine(FULL, FULL_SPEC, settings, warm)
    assert fast_loaded
    assert isinstance(fast, Kandinsky6Engine) and isinstance(full, Kandinsky6Engine)
    return {"distilled": fast, "full": full}


class Recorder:
    """What the transformer and the text encoder actually receive during a run."""

    def __init__(self, engine: Kandinsky6Engine) -> None:
        self.transformer: list[dict[str, Any]] = []
        self.text_encoder_calls = 0
        self.handles = [
            engine.pipe.transformer.register_forward_pre_hook(self._transformer, with_kwargs=True),
            engine.pipe.text_encoder.register_forward_pre_hook(self._text_encoder),
        ]

    def _transformer(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        self.transformer.append(
            {
                "timestep": float(kwargs["timestep"][0]),
                "latent_frames": kwargs["hidden_states"].shape[1],
                "audio": kwargs["audio_hidden_states"] is not None,
                "token_types": kwargs["visual_token_type_ids"],
                "text_mask": kwargs["encoder_attention_mask"],
            }
        )

    def _text_encoder(self, module: Any, args: Any) -> None:
        self.text_encoder_calls += 1

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.fixture
def record(engines: dict[str, Kandinsky6Engine]) -> Iterator[dict[str, Recorder]]:
    recorders = {name: Recorder(engine) for name, engine in engines.items()}
    yield recorders
    for recorder in recorders.values():
        recorder.close()


def request_for(
    width: int,
    height: int,
    *,
    duration: float = 0.5,
    audio: bool = True,
    image: Image.Image | None = None,
    prompt: str = "a red fox runs through snow",
    seed: int = 7,
) -> GenerationRequest:
    return GenerationRequest(
        prompt=prompt,
        negative_prompt=None,
        image=image,
        width=width,
        height=height,
        frames=plan_frames(duration, 24, 4),
        generate_audio=audio,
        seed=seed,
    )


def run(
    engine: Kandinsky6Engine, request: GenerationRequest, cancel: CancelToken | None = None
) -> tuple[list[np.ndarray], np.ndarray | None, list[ProgressEvent], dict[str, Any]]:
    events: list[ProgressEvent] = []
    clip = engine.generate(request, events.append, cancel or CancelToken())
    assert clip.frames is not None and clip.model is not None
    return list(clip.frames), clip.audio, events, clip.model


def stages(events: list[ProgressEvent]) -> list[str]:
    return [e.stage for e in events if e.stage != "denoise" or e.step == 0]


# --- weights -----------------------------------------------------------------------------------------


def real_layout(tmp_path: Path, repo: str) -> tuple[Path, list[str]]:
    """A directory with a real repo's model_index.json and component configs (no weights), and its file list
    as the hub would list it (weights, tokenizer files, a README and a demo asset)."""
    index = json.loads((CONFIGS / repo / "model_index.json").read_text())
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    files = ["model_index.json", "README.md", "assets/demo.mp4"]
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "audio_vae", "vocoder", "scheduler"):
        folder = tmp_path / name
        folder.mkdir()
        config = "scheduler_config.json" if name == "scheduler" else "config.json"
        (folder / config).write_text((CONFIGS / repo / f"{name}.json").read_text())
        files.append(f"{name}/{config}")
        if name != "scheduler":
            files.append(f"{name}/diffusion_pytorch_model.safetensors")
    files += ["tokenizer/tokenizer.json", "tokenizer/preprocessor_config.json", "tokenizer_2/vocab.json"]
    return tmp_path, files


@pytest.mark.parametrize(("repo", "variant"), [("pro-distill", "distilled"), ("pro", "full")])
def test_weights_plan_takes_every_pipeline_folder_and_nothing_else(
    tmp_path: Path, repo: str, variant: str
) -> None:
    model_dir, files = real_layout(tmp_path, repo)
    plan = KANDINSKY6_WEIGHTS.plan(model_dir, files, variant)
    assert set(plan.needed) == set(files) - {"README.md", "assets/demo.mp4"}
    assert plan.generation == "6.0 Pro"
    assert KANDINSKY6_WEIGHTS.identify(model_dir) == "6.0 Pro"


@pytest.mark.parametrize(("repo", "wrong"), [("pro-distill", "full"), ("pro", "distilled")])
def test_weights_plan_refuses_the_other_variants_repo(tmp_path: Path, repo: str, wrong: str) -> None:
    model_dir, files = real_layout(tmp_path, repo)
    with pytest.raises(LayoutError, match=r"not the (full|distilled) one: point the app at a"):
        KANDINSKY6_WEIGHTS.plan(model_dir, files, wrong)
    with pytest.raises(LayoutError, match="no 'fast' variant"):
        KANDINSKY6_WEIGHTS.plan(model_dir, files, "fast")


def test_weights_identify_only_kandinsky6_directories(tmp_path: Path, repos: dict[str, Path]) -> None:
    assert KANDINSKY6_WEIGHTS.identify(repos["distilled"]) == "6.0"  # scaled down: neither Pro nor Lite
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "LTX2Pipeline"}))
    assert KANDINSKY6_WEIGHTS.identify(tmp_path) is None
    assert registry.identify_model(repos["full"]) == ("kandinsky6", "6.0")
    # Published sizes: the Pro-distill transformer 60.3 GB, the full one 69.7 GB, the whole Lite repo 35.3 GB.
    assert KANDINSKY6_WEIGHTS.estimate_bytes("6.0 Pro", "distilled") == pytest.approx(89.25e9)
    assert KANDINSKY6_WEIGHTS.estimate_bytes(None, "full") == pytest.approx(98.65e9)
    assert KANDINSKY6_WEIGHTS.estimate_bytes("6.0 Lite", "full") == pytest.approx(35.3e9)


def test_tiny_repo_keeps_the_real_layout_and_structural_options(repos: dict[str, Path]) -> None:
    for variant, repo in (("distilled", "pro-distill"), ("full", "pro")):
        model_dir = repos[variant]
        index = json.loads((model_dir / "model_index.json").read_text())
        real = json.loads((CONFIGS / repo / "model_index.json").read_text())
        assert {k: v for k, v in index.items() if not k.startswith("_")} == {
            k: v for k, v in real.items() if not k.startswith("_")
        }
        transformer = json.loads((model_dir / "transformer" / "config.json").read_text())
        shipped = json.loads((CONFIGS / repo / "transformer.json").read_text())
        for key in (
            "in_visual_dim",
            "out_visual_dim",
            "in_audio_dim",
            "out_audio_dim",
            "patch_size",
            "ca_rope",
        ):
            assert transformer[key] == shipped[key]
        for key in ("cross_gates", "fix_modulation", "text_token_padding", "visual_cond", "scale_factor"):
            assert transformer[key] == shipped[key]
        assert transformer["model_dim"] < shipped["model_dim"]
        assert (model_dir / "tokenizer" / "preprocessor_config.json").is_file()


# --- loading -----------------------------------------------------------------------------------------


def test_loads_through_the_registry_from_the_model_paths_directory(
    engines: dict[str, Kandinsky6Engine], loaded_folders: list[str], repos: dict[str, Path]
) -> None:
    engine = engines["distilled"]
    # diffusers loads each folder model_index.json names; the Qwen tokenizer is loaded by kinema (text only).
    assert set(loaded_folders) == COMPONENTS | {"vocoder"}
    assert engine.pipe.tokenizer.name_or_path == str(repos["distilled"] / "tokenizer")
    assert engine.pipe.transformer.config["_name_or_path"] == str(repos["distilled"] / "transformer")
    assert type(engine.pipe.scheduler).__name__ == "PiflowScheduler"
    assert type(engines["full"].pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert (engine.frame_multiple, engine.size_multiple) == (4, 16)
    assert (engine.device, engine.audio_sample_rate) == ("cpu", AUDIO_SAMPLE_RATE)


def test_a_fast_app_pointed_at_full_weights_is_model_not_available(settings: Settings) -> None:
    from kinema.errors import ModelNotAvailable

    swapped = settings.model_copy(update={"model_paths": {FAST: settings.model_paths[FULL]}})
    with pytest.raises(ModelNotAvailable, match="full model, not the distilled one"):
        registry.load_engine(FAST, FAST_SPEC, swapped, WarmModels(capacity=1))


def test_model_size_keeps_the_aspect_ratio_near_the_documented_864x480() -> None:
    assert model_size(1280, 720, multiple=16, max_pixels=864 * 480) == (864, 480)
    assert model_size(1080, 1920, multiple=16, max_pixels=864 * 480) == (480, 864)
    assert model_size(720, 720, multiple=16, max_pixels=864 * 480) == (640, 640)
    assert model_size(96, 54, multiple=16, max_pixels=864 * 480) == (96, 48)  # never upscaled


# --- generation --------------------------------------------------------------------------------------


def test_text_to_video_runs_the_distilled_recipe_unguided_at_exact_size(
    engines: dict[str, Kandinsky6Engine], record: dict[str, Recorder]
) -> None:
    engine = engines["distilled"]
    frames, audio, events, model = run(engine, request_for(96, 54, duration=1.0))

    calls = record["distilled"].transformer
    assert len(calls) == 10  # ten steps, one transformer pass each: no classifier-free guidance
    assert len({c["timestep"] for c in calls}) == 10
    assert engine.pipe.guidance_scale == 1.0 and not engine.pipe.do_classifier_free_guidance
    assert len(engine.pipe.scheduler.timesteps) == 10
    assert all(c["audio"] and c["token_types"] is None for c in calls)
    assert calls[0]["latent_frames"] == 7  # 24 frames -> 25 generated -> (25 - 1) / 4 + 1
    assert all(c["text_mask"] is not None for c in calls)  # the cached padding mask reached the transformer

    assert sum(chunk.shape[0] for chunk in frames) == 24
    assert {chunk.shape[1:] for chunk in frames} == {(54, 96, 3)}
    assert frames[0].dtype == np.uint8
    assert audio is not None and audio.dtype == np.float32 and audio.shape == (1, 44100)
    assert stages(events) == ["encode_text", "denoise", "decode_video", "decode_audio"]
    assert [e.step for e in events if e.stage == "denoise"] == list(range(11))
    run_info = ModelRun.model_validate(model)
    assert (run_info.variant, run_info.generation, run_info.upscale) == ("distilled", "6.0", "resize+crop")
    assert [(s.width, s.height, s.steps, s.guidance_scale) for s in run_info.stages] == [(96, 48, 10, 1.0)]


def test_image_to_video_conditions_on_a_tail_frame_at_exact_portrait_size(
    engines: dict[str, Kandinsky6Engine], record: dict[str, Recorder]
) -> None:
    image = Image.new("RGB", (300, 500), (220, 40, 40))
    frames, audio, events, _ = run(engines["distilled"], request_for(54, 96, audio=False, image=image))

    calls = record["distilled"].transformer
    assert len(calls) == 10
    # 12 frames -> 13 generated -> 4 latent frames, plus the clean reference frame with token type 1.
    assert {c["latent_frames"] for c in calls} == {5}
    assert all(
        c["token_types"] is not None and c["token_types"][0].tolist() == [0, 0, 0, 0, 1] for c in calls
    )
    assert not any(c["audio"] for c in calls)  # no audio asked: the audio stream is not sampled at all
    assert sum(chunk.shape[0] for chunk in frames) == 12
    assert {chunk.shape[1:] for chunk in frames} == {(96, 54, 3)}
    assert audio is None
    assert stages(events) == ["encode_text", "denoise", "decode_video"]
    assert engines["distilled"].calls[-1]["image"] is True


def test_full_model_runs_guided_with_the_negative_prompt(
    engines: dict[str, Kandinsky6Engine], record: dict[str, Recorder]
) -> None:
    engine = engines["full"]
    frames, audio, _, model = run(engine, request_for(64, 64, prompt="a lighthouse at night"))

    calls = record["full"].transformer
    assert len(calls) == 6  # three steps, a conditional and an unconditional pass each
    assert engine.pipe.guidance_scale == 5.0 and engine.pipe.do_classifier_free_guidance
    (embeds,) = engine._embeddings.values()
    assert embeds[3] is not None  # the (default) negative prompt was encoded
    assert {chunk.shape[1:] for chunk in frames} == {(64, 64, 3)}
    assert audio is not None and audio.shape == (1, round(12 * 44100 / 24))
    assert model["stages"][0]["guidance_scale"] == 5.0 and model["upscale"] == "none"


def test_a_repeated_prompt_skips_the_text_encoder(
    engines: dict[str, Kandinsky6Engine], record: dict[str, Recorder]
) -> None:
    engine = engines["distilled"]
    run(engine, request_for(32, 32, audio=False, prompt="a paper boat"))
    first = record["distilled"].text_encoder_calls
    run(engine, request_for(32, 32, audio=False, prompt="a paper boat", seed=8))
    assert first == 1 and record["distilled"].text_encoder_calls == 1


def test_cancel_stops_denoising_within_one_step(
    engines: dict[str, Kandinsky6Engine], record: dict[str, Recorder]
) -> None:
    cancel = CancelToken()

    def progress(event: ProgressEvent) -> None:
        if event.stage == "denoise" and event.step == 2:
            cancel.cancel()

    with pytest.raises(Cancelled):
        engines["distilled"].generate(request_for(32, 32), progress, cancel)
    assert len(record["distilled"].transformer) == 2


def test_cancel_stops_the_chunked_video_decode(engines: dict[str, Kandinsky6Engine]) -> None:
    engine = engines["distilled"]
    cancel = CancelToken()
    decoded: list[int] = []
    handle = engine.pipe.vae.decoder.register_forward_hook(lambda *args: decoded.append(1))

    def progress(event: ProgressEvent) -> None:
        if event.stage == "decode_video":
            cancel.cancel()

    try:
        with pytest.raises(Cancelled, match="decoding"):
            engine.generate(request_for(32, 32, duration=1.0), progress, cancel)
    finally:
        handle.remove()
    assert decoded == []  # 7 latent frames decode in chunks; none ran after the cancel


# --- the whole worker path -------------------------------------------------------------------------------


def test_the_fast_app_runs_through_the_worker_to_an_exact_mp4_with_audio(
    repos: dict[str, Path], tmp_path: Path
) -> None:
    from kinema.apps.registry import KANDINSKY6_FAST
    from kinema.domain.tasks import TaskStatus
    from kinema.storage.local import LocalStorage
    from kinema.tasks.worker import RunContext, run_task
    from tests.conftest import assert_mp4, png_data_uri, streams

    data_dir = tmp_path / "data"
    (data_dir / "models").mkdir(parents=True)
    (data_dir / "models" / "kinema-tiny-kandinsky6").symlink_to(repos["distilled"], target_is_directory=True)
    settings = Settings(  # type: ignore[call-arg]
        data_dir=data_dir,
        device="cpu",
        model_paths={KANDINSKY6_FAST.id: "builtin:tiny-kandinsky6"},
        _env_file=None,
    )
    # The fast app as registered, generating at a CPU-sized 96x48 instead of about 864x480.
    small = dataclasses.replace(KANDINSKY6_PRO_DISTILL, max_pixels=96 * 54)
    app = dataclasses.replace(
        KANDINSKY6_FAST, engine=dataclasses.replace(KANDINSKY6_FAST.engine, options=small)
    )
    events: list[ProgressEvent] = []
    ctx = RunContext(
        settings=settings,
        storage=LocalStorage(settings.outputs_dir),
        progress=events.append,
        warm=WarmModels(capacity=1),
        allow_local_paths=True,
    )
    raw = {"prompt": "waves on a beach", "image": png_data_uri(320, 180), "generate_audio": True, "seed": 3}
    task = run_task(app, {**raw, "duration": 1.0}, ctx)

    assert task.status is TaskStatus.completed, task.error
    path = settings.outputs_dir / f"{task.id}.mp4"
    info = assert_mp4(path, width=1280, height=720, duration=1.0, fps=24, audio=True)
    (track,) = streams(info, "audio")
    assert track["codec_name"] == "aac"
    meta = task.output_meta
    assert meta is not None and meta.model is not None
    assert (meta.frames, meta.has_audio, meta.seed) == (24, True, 3)
    assert (meta.model.variant, meta.model.upscale) == ("distilled", "resize+crop")
    assert [(s.width, s.height, s.steps, s.guidance_scale) for s in meta.model.stages] == [(96, 48, 10, 1.0)]
    assert meta.billing.rate_per_second == "0.20" and meta.billing.cost == "0.20"
    seen = [e.stage for e in events]
    assert sorted(set(seen), key=seen.index) == list(app.stages)

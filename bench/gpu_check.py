"""One-shot GPU check: kinema's CUDA paths and the real LTX-2 sizes, timed, printed as one JSON object.

Meant to run once on a rented GPU with a hard wall limit, so every section is guarded (an error is
recorded and the next section runs), every section checks a global deadline, a watchdog writes what
was measured before the wall limit can kill the process, and results are written after each section.

    python bench/gpu_check.py                # on the GPU (about 4-5 minutes on an H100, capped)
    python bench/gpu_check.py --cpu-smoke    # tiny sizes on a CPU, to check the code paths

Sections, most important first: env, tiny_e2e (kinema's worker on the tiny app), two_stage_apps (the
LTX engine's whole two-stage path with every component at its real size and random weights: LTX-2.5
distilled at 720p / 1080p / 4K with audio, warm, per-stage times and peak memory; then FP8), real_transformer
(the 19B LTX-2 transformer, random weights: bf16, then FP8 storage), real_vae_decode (the real video
VAE, untiled and tiled), real_transformer_compile (regional torch.compile, only with time to spare).
The results go to stdout (last line) and to $OUT/gpu_check.json when OUT is set.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

STARTED = time.monotonic()  # before the heavy imports, so the deadline counts them

import torch  # noqa: E402

try:
    import kinema  # noqa: F401
except ImportError:  # not installed on this machine: use the checkout this script lives in
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# Distilled LTX-2 schedule, as kinema's LTX-2 Fast app samples it.
DISTILLED_SIGMAS = (1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875)
GIB = 1024**3
Results = dict[str, Any]  # a section's measurements, JSON-ready

# Where LTX-2.0's real configs differ from the diffusers defaults (diffusers
# scripts/convert_ltx2_to_diffusers.py, version "2.0"). The VAE's ratios matter: left to the default,
# spatial_compression_ratio comes out as 64 and enable_tiling() tiles at the wrong latent size.
REAL_TRANSFORMER: dict[str, Any] = {"rope_type": "split"}
REAL_VAE: dict[str, Any] = {
    "decoder_causal": False,
    "spatial_compression_ratio": 32,
    "temporal_compression_ratio": 8,
}

# A narrow LTX-2 transformer for --cpu-smoke: same structure (video + audio streams), tiny widths.
SMOKE_TRANSFORMER: dict[str, Any] = {
    **REAL_TRANSFORMER,
    "num_layers": 2,
    "num_attention_heads": 4,
    "attention_head_dim": 16,
    "cross_attention_dim": 64,
    "audio_num_attention_heads": 4,
    "audio_attention_head_dim": 8,
    "audio_cross_attention_dim": 32,
    "caption_channels": 64,
}


def log(message: str) -> None:
    """A progress line with the elapsed time, flushed at once (the output is read live)."""
    print(f"[gpu_check +{time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {str(k): _round(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round(v) for v in value]
    return value


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1500]


@dataclass
class Check:
    """The run's options, its deadline and everything measured so far."""

    smoke: bool
    budget_s: float
    out_dir: Path | None
    device: torch.device
    smoke_compile: bool = False
    results: dict[str, Any] = field(default_factory=dict)
    current: str = ""  # "section/step" now running, for the watchdog's note
    lock: threading.Lock = field(default_factory=threading.Lock)

    def left(self) -> float:
        """Seconds until the soft deadline."""
        return self.budget_s - (time.monotonic() - STARTED)

    def write(self, note: str | None = None) -> str:
        """Write the results (with the elapsed time) under $OUT; return them, less tracebacks, as JSON.

        Tracebacks go to stderr as they happen and into the file; leaving them out of the returned
        line keeps the final stdout object short enough to survive a truncated output tail.
        """
        with self.lock:
            self.results["elapsed_s"] = round(time.monotonic() - STARTED, 1)
            if note is not None:
                self.results["note"] = note
            text = _dumps_retrying(self.results)
            if self.out_dir is not None:
                try:
                    self.out_dir.mkdir(parents=True, exist_ok=True)
                    tmp = self.out_dir / "gpu_check.json.part"
                    tmp.write_text(text + "\n")
                    tmp.replace(self.out_dir / "gpu_check.json")
                except OSError as exc:
                    print(
                        f"could not write {self.out_dir}/gpu_check.json: {exc}", file=sys.stderr, flush=True
                    )
            return json.dumps(_without_tracebacks(json.loads(text)))

    def section(self, name: str, run: Callable[[Check, Results], None], *, need_s: float) -> None:
        """Run one section unless time is short; record its result or its error, then free memory."""
        sections = self.results.setdefault("sections", {})
        left = self.left()
        if left < need_s:
            sections[name] = {"status": "skipped", "reason": f"{left:.0f}s left, needs {need_s:.0f}s"}
            log(f"== {name}: skipped ({left:.0f}s left, needs {need_s:.0f}s)")
            self.write()
            return
        log(f"== {name} ({left:.0f}s left)")
        self.current = name
        began = time.monotonic()
        result: Results = {}  # filled as the section goes, so the watchdog can report a partial section
        entry: dict[str, Any] = {"status": "running", "result": result}
        sections[name] = entry
        try:
            run(self, result)
            failed = _failed_steps(entry["result"])
            entry["status"] = "partial" if failed else "ok"
            if failed:
                entry["failed_steps"] = failed
        except SkipSection as exc:
            entry["status"], entry["reason"] = "skipped", str(exc)
        except Exception as exc:
            entry["status"], entry["error"] = "error", _error_text(exc)
            entry["traceback"] = traceback.format_exc()[-3000:]
            print(entry["traceback"], file=sys.stderr, flush=True)
            log(f"!! {name} failed: {_error_text(exc)}")
        finally:
            entry["seconds"] = round(time.monotonic() - began, 2)
            free_memory()
            self.current = ""
        log(f"== {name}: {entry['status']} in {entry['seconds']:.1f}s")
        self.write()

    def step(self, into: dict[str, Any], name: str, run: Callable[[], Any], *, need_s: float = 0.0) -> Any:
        """One guarded measurement inside a section: its value, or its error recorded under `name`."""
        left = self.left()
        if left < need_s:
            into[name] = {"skipped": f"{left:.0f}s left, needs {need_s:.0f}s"}
            log(f"   {name}: skipped ({left:.0f}s left)")
            return None
        failed, section = False, self.current
        self.current = f"{section}/{name}"
        into[name] = {"running": True}
        try:
            value = run()
        except Exception as exc:
            failed, oom = True, isinstance(exc, torch.OutOfMemoryError)
            into[name] = {"error": _error_text(exc), "oom": oom}
            if not oom:
                into[name]["traceback"] = traceback.format_exc()[-2000:]
                print(into[name]["traceback"], file=sys.stderr, flush=True)
            log(f"   {name}: {'OOM' if oom else 'error'}: {_error_text(exc)[:300]}")
        self.current = section
        if failed:
            free_memory()  # here, not in the handler: the traceback's frames hold the failed step's tensors
            return None
        into[name] = value
        log(f"   {name}: {json.dumps(_round(value), default=str)[:400]}")
        return value


def _without_tracebacks(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_tracebacks(v) for k, v in value.items() if k != "traceback"}
    return value


def _dumps_retrying(results: dict[str, Any]) -> str:
    # The watchdog serializes while the main thread may be adding a key; try again in that case.
    for _ in range(20):
        try:
            return json.dumps(_round(results), default=str)
        except RuntimeError:
            time.sleep(0.05)
    return json.dumps({"error": "results kept changing while being written"})


class SkipSection(Exception):
    """Raised inside a section that does not apply here (for example a CUDA-only measurement on CPU)."""


def _failed_steps(result: Any, prefix: str = "") -> list[str]:
    failed: list[str] = []
    if isinstance(result, dict):
        if "error" in result:
            return [prefix or "result"]
        for key, value in result.items():
            failed += _failed_steps(value, f"{prefix}.{key}" if prefix else str(key))
    return failed


def start_watchdog(check: Check, hard_limit_s: float) -> None:
    """Before the wall limit kills us, write what we have and exit, so the numbers are not lost."""

    def fire() -> None:
        log(f"!! watchdog: {hard_limit_s:.0f}s reached during {check.current or 'teardown'}; exiting")
        text = check.write(note=f"watchdog stopped the run at {hard_limit_s:.0f}s during {check.current}")
        print(text, flush=True)
        os._exit(3)

    timer = threading.Timer(max(1.0, hard_limit_s - (time.monotonic() - STARTED)), fire)
    timer.daemon = True
    timer.start()


def free_memory() -> None:
    """Drop garbage and cached CUDA blocks so the next measurement starts clean."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def allocated_gib(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else None


def timed(device: torch.device, run: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of run(), synchronized on the device, and its value."""
    sync(device)
    began = time.perf_counter()
    value = run()
    sync(device)
    return time.perf_counter() - began, value


# 1. env ---------------------------------------------------------------------------------------------


def section_env(check: Check, out: Results) -> None:
    """Versions, the device and its capabilities, NVENC, and a matmul sanity figure."""
    import av
    import diffusers
    import transformers

    from kinema.engines.device import choose_placement, cuda_supports_fp8
    from kinema.media.encode import nvenc_available
    from kinema.settings import Settings

    out |= {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "av": av.__version__,
        "ffmpeg_libs": {name: ".".join(map(str, v)) for name, v in av.library_versions.items()},
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_supports_fp8": cuda_supports_fp8(),
        "h264_nvenc_in_av": "h264_nvenc" in av.codecs_available,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(
            device_name=props.name,
            capability=list(torch.cuda.get_device_capability(0)),
            total_memory_gib=props.total_memory / GIB,
            multiprocessors=props.multi_processor_count,
            flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
            cudnn_sdp=torch.backends.cuda.cudnn_sdp_enabled(),
        )
    check.step(out, "nvenc_available", lambda: nvenc_available())
    check.step(
        out,
        "placement_fp8_compile",
        lambda: choose_placement(Settings(_env_file=None, fp8=True, compile=True)).key,  # type: ignore[call-arg]
    )
    check.step(out, "bf16_matmul_tflops", lambda: matmul_tflops(check.device, 512 if check.smoke else 8192))


def matmul_tflops(device: torch.device, n: int) -> float:
    """Sustained bf16 TFLOP/s of an n x n matmul: a sanity check on clocks and the driver."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    reps = 20 if device.type == "cuda" else 2
    seconds, _ = timed(device, lambda: [a @ b for _ in range(reps)])
    return 2 * n**3 * reps / seconds / 1e12


# 2. tiny_e2e ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class E2ECase:
    name: str
    input: dict[str, Any]
    hardware_encoder: bool


def e2e_cases(smoke: bool) -> list[E2ECase]:
    """The worker runs to time: 720p twice (cold, warm), the encoder comparison, then bigger sizes."""
    if smoke:
        clip = {"resolution": "720p", "duration": 0.5, "generate_audio": True, "seed": 1}
        return [
            E2ECase("720p_0.5s_audio_cold", clip, True),
            E2ECase("720p_0.5s_audio_warm", clip, True),
            E2ECase("720p_0.5s_audio_warm_libx264", clip, False),
            E2ECase(
                "720p_1x1_0.5s",
                {"resolution": "720p", "aspect_ratio": "1:1", "duration": 0.5, "seed": 2},
                True,
            ),
        ]
    clip = {"resolution": "720p", "duration": 5.0, "generate_audio": True, "seed": 1}
    return [
        E2ECase("720p_5s_audio_cold", clip, True),
        E2ECase("720p_5s_audio_warm", clip, True),
        E2ECase("720p_5s_audio_warm_libx264", clip, False),
        E2ECase("1080p_2s_noaudio", {"resolution": "1080p", "duration": 2.0, "seed": 3}, True),
        E2ECase(
            "4K_1s_audio", {"resolution": "4K", "duration": 1.0, "generate_audio": True, "seed": 4}, True
        ),
    ]


def section_tiny_e2e(check: Check, out: Results) -> None:
    """kinema's real worker path (load, generate, encode, probe, bill, store) on the tiny app."""
    from kinema.apps.registry import TINY
    from kinema.engines.cache import WarmModels
    from kinema.engines.tiny import save_tiny_model
    from kinema.media.encode import nvenc_available
    from kinema.settings import Settings
    from kinema.storage.local import LocalStorage
    from kinema.tasks.worker import RunContext, run_task

    data_dir = Path(tempfile.mkdtemp(prefix="kinema-gpu-check-"))
    device_setting = "cpu" if check.smoke else "auto"
    warm = WarmModels(capacity=1)  # our own cache, cleared at the end to free the GPU for the next section
    storage = LocalStorage(data_dir / "outputs")
    nvenc = nvenc_available()
    out |= {"device_setting": device_setting, "nvenc_available": nvenc}

    def settings(hardware_encoder: bool) -> Settings:
        return Settings(  # type: ignore[call-arg]
            _env_file=None, data_dir=data_dir, device=device_setting, hardware_encoder=hardware_encoder
        )

    # Built apart from the first run, so that run's "load" is loading only.
    check.step(
        out,
        "build_tiny_model_s",
        lambda: timed(check.device, lambda: save_tiny_model(settings(True).models_dir / "kinema-tiny"))[0],
    )

    def run_case(case: E2ECase) -> dict[str, Any]:
        reset_peak(check.device)
        ctx = RunContext(settings=settings(case.hardware_encoder), storage=storage, warm=warm)
        seconds, task = timed(
            check.device, lambda: run_task(TINY, {"prompt": "gpu check", **case.input}, ctx)
        )
        if task.output_meta is None:
            error = task.error.message if task.error else "no output"
            raise RuntimeError(f"task {task.status}: {error}")
        meta = task.output_meta
        on_cuda = check.device.type == "cuda"
        return {
            "wall_s": seconds,
            "encoder": "h264_nvenc" if (case.hardware_encoder and on_cuda and nvenc) else "libx264",
            "width": meta.width,
            "height": meta.height,
            "frames": meta.frames,
            "fps": meta.fps,
            "duration": meta.duration,
            "has_audio": meta.has_audio,
            "video_codec": meta.video_codec,
            "audio_codec": meta.audio_codec,
            "size_bytes": meta.size_bytes,
            "timings": meta.timings,
            "peak_gib": peak_gib(check.device),
        }

    runs: dict[str, Any] = {}
    out["runs"] = runs
    try:
        for case in e2e_cases(check.smoke):
            check.step(runs, case.name, partial(run_case, case), need_s=25 if not check.smoke else 5)
    finally:
        warm.clear()
        shutil.rmtree(data_dir, ignore_errors=True)


# 3. real_transformer --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """A generation size in pixels and frames, at an fps."""

    width: int
    height: int
    frames: int
    fps: float = 24.0

    @property
    def name(self) -> str:
        return f"{self.width}x{self.height}x{self.frames}"

    @property
    def latent(self) -> tuple[int, int, int]:
        """(frames, height, width) of the video latents: 8x temporal (causal first frame), 32x spatial."""
        return (self.frames - 1) // 8 + 1, self.height // 32, self.width // 32


def transformer_shapes(smoke: bool) -> list[Shape]:
    if smoke:
        return [Shape(128, 96, 17), Shape(256, 160, 17)]
    return [Shape(768, 512, 121), Shape(1280, 736, 121)]


def build_on_device(model_class: Any, config: dict[str, Any], device: torch.device) -> Any:
    """A diffusers model with random weights, built directly on the device in bf16 (no CPU copy)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = model_class(**config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def build_transformer(check: Check) -> Any:
    """LTX2VideoTransformer3DModel: the real 19B config, or a narrow one for --cpu-smoke."""
    from diffusers import LTX2VideoTransformer3DModel

    config = SMOKE_TRANSFORMER if check.smoke else REAL_TRANSFORMER  # the defaults are the real sizes
    return build_on_device(LTX2VideoTransformer3DModel, config, check.device)


def transformer_inputs(model: Any, shape: Shape, text_len: int, device: torch.device) -> dict[str, Any]:
    """The keyword arguments LTX2Pipeline.__call__ passes the transformer (no CFG, batch 1)."""
    cfg = model.config
    frames, height, width = shape.latent
    # As the pipeline does: audio latents/s = sampling rate / hop / audio VAE time ratio (25 for LTX-2).
    audio_frames = round(shape.frames / shape.fps * model.audio_rope.audio_latents_per_second)
    dtype = torch.bfloat16
    mask = torch.ones(1, text_len, device=device, dtype=torch.int64)
    return {
        "hidden_states": torch.randn(1, frames * height * width, cfg.in_channels, device=device, dtype=dtype),
        "audio_hidden_states": torch.randn(
            1, audio_frames, cfg.audio_in_channels, device=device, dtype=dtype
        ),
        # LTX-2.0 connectors output caption_channels for both streams; the transformer projects them.
        "encoder_hidden_states": torch.randn(1, text_len, cfg.caption_channels, device=device, dtype=dtype),
        "audio_encoder_hidden_states": torch.randn(
            1, text_len, cfg.caption_channels, device=device, dtype=dtype
        ),
        "encoder_attention_mask": mask,
        "audio_encoder_attention_mask": mask,
        "num_frames": frames,
        "height": height,
        "width": width,
        "fps": shape.fps,
        "audio_num_frames": audio_frames,
        "video_coords": model.rope.prepare_video_coords(1, frames, height, width, device, fps=shape.fps),
        "audio_coords": model.audio_rope.prepare_audio_coords(1, audio_frames, device),
    }


def describe_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    return {
        "video_tokens": inputs["hidden_states"].shape[1],
        "audio_tokens": inputs["audio_hidden_states"].shape[1],
        "text_tokens": inputs["encoder_hidden_states"].shape[1],
        "latent_fhw": [inputs["num_frames"], inputs["height"], inputs["width"]],
    }


@torch.inference_mode()
def transformer_step(model: Any, inputs: dict[str, Any], sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One denoising forward as the pipeline calls it (timestep = 1000 * sigma, cross timesteps on)."""
    device = inputs["hidden_states"].device
    timestep = torch.full((1,), sigma * 1000.0, device=device, dtype=torch.float32)
    video, audio = model(
        **inputs,
        timestep=timestep,
        sigma=timestep,
        use_cross_timestep=True,
        isolate_modalities=False,
        return_dict=False,
    )
    return video, audio


@torch.inference_mode()
def denoise(model: Any, inputs: dict[str, Any], sigmas: tuple[float, ...]) -> None:
    """The distilled Euler loop over `sigmas` (velocity prediction), latents in fp32 as in the pipeline."""
    latents = inputs["hidden_states"].float()
    audio = inputs["audio_hidden_states"].float()
    steps = inputs.copy()
    for i, sigma in enumerate(sigmas):
        following = sigmas[i + 1] if i + 1 < len(sigmas) else 0.0
        steps["hidden_states"], steps["audio_hidden_states"] = latents.bfloat16(), audio.bfloat16()
        velocity, audio_velocity = transformer_step(model, steps, sigma)
        latents = latents + (following - sigma) * velocity.float()
        audio = audio + (following - sigma) * audio_velocity.float()


def param_stats(model: Any) -> dict[str, Any]:
    count = sum(p.numel() for p in model.parameters())
    stored = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"params": count, "params_billion": count / 1e9, "param_gib": stored / GIB}


def time_forwards(
    check: Check, model: Any, shape: Shape, text_len: int, *, repeats: int, denoise_steps: bool
) -> dict[str, Any]:
    """Warm-up forward, then `repeats` timed forwards (and optionally the 8-step loop) at one shape."""
    device = check.device
    inputs = transformer_inputs(model, shape, text_len, device)
    reset_peak(device)
    warmup_s, _ = timed(device, lambda: transformer_step(model, inputs, 1.0))
    times = [timed(device, lambda: transformer_step(model, inputs, 0.9))[0] for _ in range(repeats)]
    step_s = sum(times) / len(times)
    result: dict[str, Any] = {
        **describe_inputs(inputs),
        "warmup_s": warmup_s,
        "step_s": step_s,
        "step_times_s": times,
        "est_denoise_8_steps_s": 8 * step_s,
        "peak_gib": peak_gib(device),
    }
    if denoise_steps:
        result["denoise_8_steps_s"] = timed(device, lambda: denoise(model, inputs, DISTILLED_SIGMAS))[0]
    return result


def section_real_transformer(check: Check, out: Results) -> None:
    """The LTX-2 transformer at real size: init memory, bf16 step and 8-step times, then FP8 storage."""
    device = check.device
    text_len = 64 if check.smoke else 1024
    out |= {
        "config": "smoke" if check.smoke else "default (real LTX-2 19B)",
        "text_len": text_len,
    }
    free_memory()
    base = allocated_gib(device)
    seconds, model = timed(device, lambda: build_transformer(check))
    out.update(
        param_stats(model),
        init_s=seconds,
        allocated_after_init_gib=allocated_gib(device),
        allocated_before_gib=base,
    )
    log(
        f"   transformer built: {out['params_billion']:.2f}B params, "
        f"{out['param_gib']:.1f} GiB in {seconds:.1f}s"
    )
    shapes = transformer_shapes(check.smoke)
    need = (10, 25) if not check.smoke else (0, 0)  # the 720p shape takes ~3x the 512p one
    bf16: dict[str, Any] = {}
    out["bf16"] = bf16
    for shape, need_s in zip(shapes, need, strict=True):
        check.step(
            bf16,
            shape.name,
            partial(time_forwards, check, model, shape, text_len, repeats=1, denoise_steps=True),
            need_s=need_s,
        )

    fp8: dict[str, Any] = {}
    out["fp8"] = fp8

    def enable_fp8() -> dict[str, Any]:
        seconds, _ = timed(
            device,
            lambda: model.enable_layerwise_casting(
                storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16
            ),
        )
        free_memory()
        return {"enable_s": seconds, "allocated_gib": allocated_gib(device), **param_stats(model)}

    if check.step(fp8, "enable", enable_fp8, need_s=20 if not check.smoke else 0) is not None:
        for shape, need_s in zip(shapes, need, strict=True):
            check.step(
                fp8,
                shape.name,
                partial(time_forwards, check, model, shape, text_len, repeats=2, denoise_steps=False),
                need_s=need_s,
            )


# 4. real_vae_decode ---------------------------------------------------------------------------------


def build_vae(check: Check) -> Any:
    """The video VAE: the real config in bf16 on the device, or the tiny app's VAE for --cpu-smoke."""
    from diffusers import AutoencoderKLLTX2Video

    if check.smoke:
        from kinema.engines.tiny import build_tiny_components

        vae = build_tiny_components()["vae"]
        return vae.to(device=check.device, dtype=torch.bfloat16).eval().requires_grad_(False)
    return build_on_device(AutoencoderKLLTX2Video, REAL_VAE, check.device)


def section_real_vae_decode(check: Check, out: Results) -> None:
    """Decode 720p x 121-frame latents with the real VAE, untiled and tiled: time and peak memory."""
    device = check.device
    seconds, vae = timed(device, lambda: build_vae(check))
    channels = vae.config.latent_channels
    # 1280x736x121 -> 16x23x40 latents; the smoke size still exceeds one 512px tile so tiling really tiles.
    frames, height, width = (3, 20, 24) if check.smoke else Shape(1280, 736, 121).latent
    out |= {
        "config": "tiny app VAE" if check.smoke else "default (real LTX-2)",
        "init_s": seconds,
        **param_stats(vae),
        "latents": [1, channels, frames, height, width],
        "output_fhw": [(frames - 1) * 8 + 1, height * 32, width * 32],
        "allocated_gib": allocated_gib(device),
    }
    latents = torch.randn(1, channels, frames, height, width, device=device, dtype=torch.bfloat16)

    @torch.inference_mode()
    def decode(z: torch.Tensor) -> tuple[int, ...]:
        return tuple(vae.decode(z, None, return_dict=False)[0].shape)

    check.step(out, "warmup_small_s", lambda: timed(device, lambda: decode(latents[:, :, :2, :4, :4]))[0])

    expected = [1, 3, *out["output_fhw"]]

    def measure() -> dict[str, Any]:
        free_memory()
        reset_peak(device)
        seconds, shape = timed(device, lambda: decode(latents))
        return {
            "seconds": seconds,
            "peak_gib": peak_gib(device),
            "output_shape": list(shape),
            "shape_ok": list(shape) == expected,
        }

    check.step(out, "untiled", measure, need_s=15 if not check.smoke else 0)
    vae.enable_tiling()
    check.step(out, "tiled", measure, need_s=15 if not check.smoke else 0)


# 5. real_transformer_compile ------------------------------------------------------------------------


def section_compile(check: Check, out: Results) -> None:
    """Regional torch.compile of the real bf16 transformer: first call (compiles) and steady step time."""
    if check.device.type != "cuda" and not check.smoke_compile:
        raise SkipSection("CUDA only (pass --smoke-compile to try it on CPU)")
    import torch._dynamo

    device = check.device
    text_len = 64 if check.smoke else 1024
    seconds, model = timed(device, lambda: build_transformer(check))
    out |= {"init_s": seconds, "dtype": "bfloat16", "fullgraph": False}
    seconds, _ = timed(device, lambda: model.compile_repeated_blocks(fullgraph=False))
    out["compile_call_s"] = seconds
    torch._dynamo.utils.counters.clear()
    shapes = transformer_shapes(check.smoke)[::-1]  # 720p first: the production size matters most

    def measure(shape: Shape) -> dict[str, Any]:
        inputs = transformer_inputs(model, shape, text_len, device)
        first_s, _ = timed(device, lambda: transformer_step(model, inputs, 1.0))
        timed(device, lambda: transformer_step(model, inputs, 0.95))
        times = [timed(device, lambda: transformer_step(model, inputs, 0.9))[0] for _ in range(3)]
        return {
            "first_call_s": first_s,
            "step_s": sum(times) / len(times),
            "step_times_s": times,
            "est_denoise_8_steps_s": 8 * sum(times) / len(times),
            "peak_gib": peak_gib(device),
        }

    for shape, need_s in zip(shapes, (0, 100) if not check.smoke else (0, 0), strict=True):
        check.step(out, shape.name, partial(measure, shape), need_s=need_s)
    counters = torch._dynamo.utils.counters
    out["graph_breaks"] = sum(counters["graph_break"].values())
    out["unique_graphs"] = counters["stats"].get("unique_graphs", 0)
    torch._dynamo.reset()


# Gemma 3 12B's text config (google/gemma-3-12b-it). LTX-2.5's Gemma 4 12B is not here in config form;
# the same size class stands in for it (the text encoder runs once per prompt; its embeddings are cached).
GEMMA_12B_TEXT: dict[str, Any] = {
    "vocab_size": 262_208,
    "hidden_size": 3840,
    "intermediate_size": 15_360,
    "num_hidden_layers": 48,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 256,
    "max_position_embeddings": 131_072,
    "sliding_window": 1024,
}


def build_real_pipeline(check: Check, generation: str) -> tuple[Any, Any]:
    """An LTX2Pipeline and latent upsampler with every component at its real size, random bf16 weights,
    built from the generation's real configs directly on the device (tiny ones for --cpu-smoke)."""
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2Pipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder, LTX2VocoderWithBWE
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from kinema.engines.tiny import (
        build_tiny_components,
        build_tiny_tokenizer,
        build_tiny_upsampler,
        real_config,
    )

    if check.smoke:
        return LTX2Pipeline(**build_tiny_components(generation)), build_tiny_upsampler(generation)
    device = check.device
    connectors = real_config(generation, "connectors")
    connectors["caption_channels"] = connectors.get("caption_channels") or GEMMA_12B_TEXT["hidden_size"]
    connectors["text_proj_in_factor"] = connectors.get("text_proj_in_factor") or 49
    vocoder = real_config(generation, "vocoder")
    vocoder_cls = LTX2VocoderWithBWE if vocoder.get("bwe_hidden_channels") else LTX2Vocoder
    text_config = Gemma3Config(text_config=GEMMA_12B_TEXT, vision_config={"num_hidden_layers": 1})
    components = {
        "scheduler": FlowMatchEulerDiscreteScheduler.from_config(real_config(generation, "scheduler")),
        "vae": build_on_device(AutoencoderKLLTX2Video, real_config(generation, "vae"), device),
        "audio_vae": build_on_device(AutoencoderKLLTX2Audio, real_config(generation, "audio_vae"), device),
        "text_encoder": build_on_device(lambda **_: Gemma3ForConditionalGeneration(text_config), {}, device),
        "tokenizer": build_tiny_tokenizer(),
        "connectors": build_on_device(LTX2TextConnectors, connectors, device),
        "transformer": build_on_device(
            LTX2VideoTransformer3DModel, real_config(generation, "transformer"), device
        ),
        "vocoder": build_on_device(vocoder_cls, vocoder, device),
    }
    upsampler = build_on_device(LTX2LatentUpsamplerModel, real_config(generation, "latent_upsampler"), device)
    return LTX2Pipeline(**components), upsampler


def two_stage_cases(smoke: bool) -> list[tuple[str, str, float, bool]]:
    """(name, resolution, seconds, audio): the issue's targets, or one small case for --cpu-smoke."""
    if smoke:
        return [("720p_1s_audio", "720p", 1.0, True)]
    return [
        ("720p_5s_audio", "720p", 5.0, True),
        ("1080p_5s_audio", "1080p", 5.0, True),
        ("4k_5s", "4K", 5.0, False),
    ]


def section_two_stage_apps(check: Check, out: Results) -> None:
    """lightricks/ltx-2-fast's engine end to end at real size (random weights): each case warm, per stage."""
    from kinema.domain.sizing import output_size, plan_frames
    from kinema.engines.base import CancelToken, GenerationRequest
    from kinema.engines.device import Placement
    from kinema.engines.ltx2 import LTX2Engine, prepare_loaded
    from kinema.engines.ltx_recipes import Layout
    from kinema.engines.sampling import LTX2Sampling
    from kinema.media.encode import EncodeOptions, encode_mp4

    generation = "2.5"
    device = check.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    built: dict[str, Any] = {}

    def build() -> dict[str, Any]:
        started = time.perf_counter()
        built["pipe"], built["upsampler"] = build_real_pipeline(check, generation)
        return {"seconds": time.perf_counter() - started, "allocated_gib": allocated_gib(device)}

    if check.step(out, "build", build, need_s=30) is None:
        return
    pipe, upsampler = built.pop("pipe"), built.pop("upsampler")
    out["parameters_b"] = {
        name: round(sum(p.numel() for p in getattr(pipe, name).parameters()) / 1e9, 3)
        for name in ("transformer", "text_encoder", "connectors", "vae", "audio_vae", "vocoder")
    }
    layout = Layout(generation, "distilled", "transformer", False, None, "latent_upsampler", ())
    for mode in ("bf16", "fp8"):
        if mode == "fp8" and (device.type != "cuda" or check.left() < 120):
            out[mode] = {"status": "skipped", "reason": "CUDA only, or no time left"}
            continue
        placement = Placement(device=device, dtype=dtype, fp8=mode == "fp8", compile=False)
        loaded = prepare_loaded(
            pipe, upsampler, placement, offload="none", vae_tiling=True, text_encoder="device"
        )
        engine = LTX2Engine(loaded, LTX2Sampling(), placement, layout=layout, weights="random")
        results: dict[str, Any] = {"weights_gib": allocated_gib(device)}
        out[mode] = results
        for name, resolution, seconds, audio in two_stage_cases(check.smoke):
            width, height = output_size(resolution, "16:9")  # type: ignore[arg-type]
            request = GenerationRequest(
                prompt="A drone shot rising over a foggy forest at sunrise",
                negative_prompt=None,
                image=None,
                width=width,
                height=height,
                frames=plan_frames(seconds, 24, 8),
                generate_audio=audio,
                seed=1,
            )

            def run_case(request: GenerationRequest = request, engine: LTX2Engine = engine) -> dict[str, Any]:
                reset_peak(device)
                started = time.perf_counter()
                clip = engine.generate(request, lambda event: None, CancelToken())
                target = Path(tempfile.mkdtemp()) / "clip.mp4"
                encode_started = time.perf_counter()
                encode_mp4(
                    target,
                    clip.frames,
                    width=clip.width,
                    height=clip.height,
                    fps=clip.fps,
                    audio=clip.audio,
                    sample_rate=clip.sample_rate,
                    options=EncodeOptions(hardware=device.type == "cuda"),
                )
                sync(device)
                shutil.rmtree(target.parent, ignore_errors=True)
                return {
                    "end_to_end_s": time.perf_counter() - started,
                    "stages_s": {**clip.timings, "encode_incl_frames": time.perf_counter() - encode_started},
                    "peak_gib": peak_gib(device),
                    "model": clip.model,
                }

            check.step(results, f"{name}_cold", run_case, need_s=20)
            check.step(results, f"{name}_warm", run_case, need_s=20)
    del pipe, upsampler
    free_memory()


# main -----------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=400.0,
        help="Soft deadline from process start; sections that would not fit are skipped.",
    )
    parser.add_argument(
        "--hard-limit-s",
        type=float,
        default=None,
        help="Watchdog: write results and exit at this many seconds (default budget + 10).",
    )
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="Tiny sizes on the CPU, to check code paths."
    )
    parser.add_argument(
        "--smoke-compile",
        action="store_true",
        help="With --cpu-smoke, also run the compile section on the CPU (slow; needs a C++ compiler).",
    )
    parser.add_argument(
        "--compile-min-s",
        type=float,
        default=150.0,
        help="Run the compile section only with at least this much budget left.",
    )
    parser.add_argument("--only", default=None, help="Comma-separated section names to run (default: all).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("diffusers", "transformers", "torch._inductor", "torch._dynamo"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    if args.cpu_smoke:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        device = torch.device("cpu")
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    check = Check(
        smoke=args.cpu_smoke,
        budget_s=args.budget_s,
        out_dir=out_dir,
        device=device,
        smoke_compile=args.smoke_compile,
    )
    check.results["meta"] = {
        "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
        "device": str(device),
        "budget_s": args.budget_s,
        "argv": argv if argv is not None else sys.argv[1:],
        "started_unix": time.time() - (time.monotonic() - STARTED),
    }
    start_watchdog(check, args.hard_limit_s if args.hard_limit_s is not None else args.budget_s + 10)
    if device.type == "cpu" and not args.cpu_smoke:
        log("!! no CUDA device: only env runs; use --cpu-smoke for the tiny CPU variant")

    needs_gpu = device.type == "cuda" or args.cpu_smoke
    sections: list[tuple[str, Callable[[Check, Results], None], float, bool]] = [
        ("env", section_env, 0, True),
        ("tiny_e2e", section_tiny_e2e, 30, needs_gpu),
        ("two_stage_apps", section_two_stage_apps, 90, needs_gpu),
        ("real_transformer", section_real_transformer, 60, needs_gpu),
        ("real_vae_decode", section_real_vae_decode, 30, needs_gpu),
        (
            "real_transformer_compile",
            section_compile,
            args.compile_min_s if not args.cpu_smoke else 0,
            needs_gpu and (not args.cpu_smoke or args.smoke_compile),
        ),
    ]
    only = set(args.only.split(",")) if args.only else None
    for name, run, need_s, applies in sections:
        if only is not None and name not in only:
            continue
        if not applies:
            check.results.setdefault("sections", {})[name] = {
                "status": "skipped",
                "reason": "needs CUDA" if not args.cpu_smoke else "CUDA only (--smoke-compile)",
            }
            log(f"== {name}: skipped (needs CUDA)")
            continue
        check.section(name, run, need_s=need_s)

    log("done")
    print(check.write(), flush=True)
    statuses = [s.get("status") for s in check.results.get("sections", {}).values()]
    return 1 if "error" in statuses else 0


if __name__ == "__main__":
    sys.exit(main())

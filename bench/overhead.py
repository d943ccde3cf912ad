"""kinema's overhead over the bare library path, measured side by side in one process.

The same tiny LTX-2.5 model, sizes, schedule and seed run (a) through kinema's worker (prompt encoding, the
two-stage recipe, decoding, fitting to the exact size, MP4 encode, probe, store) and (b) as the diffusers
docs' two-stage recipe (stage 1 at half size, LTX2LatentUpsamplePipeline, stage 2 at full size) plus PyAV
write of its frames and audio. Prints the median time of each and the ratio kinema / bare.

    .venv/bin/python bench/overhead.py [--rounds 3] [--duration 2] [--resolution 720p] [--no-audio]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from kinema.apps.registry import TINY
from kinema.domain.sizing import generation_size, output_size, plan_frames
from kinema.domain.tasks import TaskStatus
from kinema.engines.cache import WarmModels
from kinema.engines.ltx_recipes import DISTILLED_SIGMAS, STAGE_2_SIGMAS
from kinema.settings import Settings
from kinema.storage.local import LocalStorage
from kinema.tasks.worker import RunContext, load_engine, run_task


def bare_run(
    pipe: object,
    upsample_pipe: object,
    out: Path,
    *,
    prompt: str,
    width: int,
    height: int,
    frames: int,
    generated: int,
    fps: int,
    audio: bool,
    seed: int,
) -> None:
    """What a user writes without kinema: the docs' two-stage calls, then its frames written with PyAV."""
    unguided = {
        "guidance_scale": 1.0,
        "stg_scale": 0.0,
        "modality_scale": 1.0,
        "guidance_rescale": 0.0,
        "audio_guidance_scale": 1.0,
        "audio_stg_scale": 0.0,
        "audio_modality_scale": 1.0,
        "audio_guidance_rescale": 0.0,
        "spatio_temporal_guidance_blocks": None,
    }
    gen_w, gen_h = generation_size(width, height, multiple=64, max_pixels=None)
    generator = torch.Generator("cpu").manual_seed(seed)
    common = {
        "prompt": prompt,
        "num_frames": generated,
        "frame_rate": float(fps),
        "generator": generator,
        "max_sequence_length": TINY.engine.options.max_sequence_length,
        **unguided,
    }
    latents, audio_latents = pipe(  # type: ignore[operator]
        height=gen_h // 2,
        width=gen_w // 2,
        sigmas=list(DISTILLED_SIGMAS),
        output_type="latent",
        return_dict=False,
        **common,
    )
    upscaled = upsample_pipe(  # type: ignore[operator]
        latents=latents, latents_normalized=False, output_type="latent", return_dict=False
    )[0]
    result = pipe(  # type: ignore[operator]
        height=gen_h,
        width=gen_w,
        latents=upscaled,
        audio_latents=audio_latents,
        sigmas=list(STAGE_2_SIGMAS),
        noise_scale=STAGE_2_SIGMAS[0],
        output_type="np",
        **common,
    )
    video = result.frames[0][:frames]  # (F, H, W, 3) floats in [0, 1]
    top, left = (gen_h - height) // 2, (gen_w - width) // 2
    pixels = (video[:, top : top + height, left : left + width] * 255).round().astype(np.uint8)
    with av.open(str(out), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast", "profile": "high"}
        astream = container.add_stream("aac", rate=48000, layout="stereo") if audio else None
        for i, rgb in enumerate(pixels):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if astream is not None:
            wave = result.audio[0].float().cpu().numpy()
            rate = pipe.vocoder.config.output_sampling_rate  # type: ignore[attr-defined]
            wave = np.ascontiguousarray(wave[:, : round(frames / fps * rate)])
            source = av.AudioFrame.from_ndarray(wave, format="fltp", layout="stereo")
            source.sample_rate, source.pts = rate, 0
            resampler = av.AudioResampler(format="fltp", layout="stereo", rate=48000, frame_size=1024)
            for chunk in [*resampler.resample(source), *resampler.resample(None)]:
                container.mux(astream.encode(chunk))
            container.mux(astream.encode(None))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--resolution", default="720p", choices=["720p", "1080p", "4K"])
    parser.add_argument("--no-audio", action="store_true")
    args = parser.parse_args()
    audio = not args.no_audio

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), _env_file=None)  # type: ignore[call-arg]
        warm = WarmModels()
        ctx = RunContext(settings=settings, storage=LocalStorage(settings.outputs_dir), warm=warm)
        engine, _ = load_engine(TINY, settings, warm)
        width, height = output_size(args.resolution, "16:9")
        plan = plan_frames(args.duration, TINY.fps, engine.frame_multiple)
        raw = {
            "prompt": "overhead benchmark",
            "resolution": args.resolution,
            "duration": args.duration,
            "generate_audio": audio,
            "seed": 1,
        }
        # Warm-up both paths once (allocator, x264 init), then alternate so drift hits both alike.
        kinema_times: list[float] = []
        bare_times: list[float] = []
        for round_ in range(args.rounds + 1):
            gc.collect()
            started = time.perf_counter()
            task = run_task(TINY, raw, ctx)
            elapsed_kinema = time.perf_counter() - started
            assert task.status is TaskStatus.completed, task.error
            gc.collect()
            started = time.perf_counter()
            bare_run(
                engine.pipe,
                engine.upsample_pipe,
                Path(tmp) / "bare.mp4",
                prompt=raw["prompt"],
                width=width,
                height=height,
                frames=plan.frames,
                generated=plan.generated_frames,
                fps=TINY.fps,
                audio=audio,
                seed=1,
            )
            elapsed_bare = time.perf_counter() - started
            if round_ > 0:
                kinema_times.append(elapsed_kinema)
                bare_times.append(elapsed_bare)
                print(f"round {round_}: kinema {elapsed_kinema:.3f}s  bare {elapsed_bare:.3f}s", flush=True)
        timings = task.output_meta.timings if task.output_meta else {}
        kinema_median, bare_median = statistics.median(kinema_times), statistics.median(bare_times)
        print(
            f"\n{args.resolution} {args.duration:g}s audio={audio} "
            f"steps={len(DISTILLED_SIGMAS)}+{len(STAGE_2_SIGMAS)} "
            f"threads={torch.get_num_threads()}"
        )
        print("kinema stages: " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
        print(f"kinema median {kinema_median:.3f}s  bare median {bare_median:.3f}s")
        print(f"overhead ratio kinema/bare = {kinema_median / bare_median:.3f} (target <= 1.03)")


if __name__ == "__main__":
    main()

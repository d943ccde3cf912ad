"""The in-process worker on the tiny model: sizes, audio, image input, warm reuse, cancel, failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from kinema.apps.registry import TINY
from kinema.domain.tasks import TaskStatus
from kinema.engines.base import ProgressEvent
from kinema.errors import InvalidInput
from kinema.tasks.worker import RunContext, load_engine, run_task
from tests.conftest import assert_mp4, ffprobe, png_data_uri, streams


def _output(ctx: RunContext, task_id: str) -> Path:
    return ctx.settings.outputs_dir / f"{task_id}.mp4"


@pytest.mark.parametrize(
    ("aspect", "size"), [("16:9", (1280, 720)), ("9:16", (720, 1280)), ("1:1", (720, 720))]
)
def test_every_aspect_ratio_gives_the_exact_size(ctx: RunContext, aspect: str, size: tuple[int, int]) -> None:
    task = run_task(TINY, {"prompt": "aspect", "aspect_ratio": aspect, "duration": 0.5}, ctx)
    assert task.status is TaskStatus.completed, task.error
    assert_mp4(_output(ctx, task.id), width=size[0], height=size[1], duration=0.5, fps=24, audio=False)
    assert task.output_meta is not None
    assert (task.output_meta.width, task.output_meta.height, task.output_meta.aspect_ratio) == (*size, aspect)


def test_run_with_audio_produces_aac_track_and_truthful_meta(ctx: RunContext) -> None:
    task = run_task(TINY, {"prompt": "with audio", "generate_audio": True, "duration": 2.0, "seed": 7}, ctx)
    assert task.status is TaskStatus.completed, task.error
    path = _output(ctx, task.id)
    info = assert_mp4(path, width=1280, height=720, duration=2.0, fps=24, audio=True)
    meta = task.output_meta
    assert meta is not None
    (video,) = streams(info, "video")
    assert meta.frames == int(video["nb_read_frames"]) == 48
    assert meta.duration == pytest.approx(float(video["duration"]))
    assert (meta.has_audio, meta.audio_codec, meta.video_codec) == (True, "aac", "h264")
    assert meta.size_bytes == path.stat().st_size
    assert meta.seed == 7
    assert meta.billing.cost == "0.50" and meta.billing.billable_seconds == "2"
    assert task.output is not None and task.output.video == path.resolve().as_uri()
    assert set(meta.timings) >= {"load", "encode_text", "denoise", "decode_video", "decode_audio", "encode"}


def test_without_audio_no_audio_decode_or_vocoder_work_is_done(ctx: RunContext) -> None:
    engine, _ = load_engine(TINY, ctx.settings, ctx.warm)
    calls: list[str] = []
    handles = [
        engine.pipe.vocoder.register_forward_hook(lambda *a: calls.append("vocoder")),
        engine.pipe.audio_vae.register_forward_pre_hook(lambda *a: calls.append("audio_vae")),
    ]
    decode = engine.pipe.audio_vae.decode
    engine.pipe.audio_vae.decode = lambda *a, **k: (calls.append("audio_decode"), decode(*a, **k))[1]
    try:
        task = run_task(TINY, {"prompt": "silent", "duration": 0.5}, ctx)
        assert task.status is TaskStatus.completed
        assert calls == []
        assert task.output_meta is not None and "decode_audio" not in task.output_meta.timings
        task = run_task(TINY, {"prompt": "loud", "duration": 0.5, "generate_audio": True}, ctx)
        assert "vocoder" in calls and "audio_decode" in calls
    finally:
        for handle in handles:
            handle.remove()
        del engine.pipe.audio_vae.decode


def test_image_to_video_takes_the_images_aspect_ratio(ctx: RunContext) -> None:
    task = run_task(TINY, {"prompt": "portrait", "image": png_data_uri(300, 520), "duration": 0.5}, ctx)
    assert task.status is TaskStatus.completed, task.error
    assert_mp4(_output(ctx, task.id), width=720, height=1280, duration=0.5, fps=24, audio=False)
    assert task.output_meta is not None and task.output_meta.aspect_ratio == "9:16"


def test_explicit_aspect_ratio_wins_over_the_image(ctx: RunContext) -> None:
    task = run_task(
        TINY, {"prompt": "x", "image": png_data_uri(300, 520), "aspect_ratio": "1:1", "duration": 0.25}, ctx
    )
    assert task.status is TaskStatus.completed, task.error
    assert task.output_meta is not None and (task.output_meta.width, task.output_meta.height) == (720, 720)


@pytest.mark.slow
def test_1080p_with_audio(ctx: RunContext) -> None:
    task = run_task(
        TINY, {"prompt": "hd", "resolution": "1080p", "generate_audio": True, "duration": 0.5}, ctx
    )
    assert task.status is TaskStatus.completed, task.error
    assert_mp4(_output(ctx, task.id), width=1920, height=1080, duration=0.5, fps=24, audio=True)


@pytest.mark.slow
def test_same_seed_same_video(ctx: RunContext) -> None:
    first = run_task(TINY, {"prompt": "seeded", "duration": 0.25, "seed": 42}, ctx)
    second = run_task(TINY, {"prompt": "seeded", "duration": 0.25, "seed": 42}, ctx)
    assert _output(ctx, first.id).read_bytes() == _output(ctx, second.id).read_bytes()


def test_second_run_in_a_process_does_no_loading(ctx: RunContext) -> None:
    run_task(TINY, {"prompt": "warm 1", "duration": 0.25}, ctx)
    loads = ctx.warm.loads
    task = run_task(TINY, {"prompt": "warm 2", "duration": 0.25}, ctx)
    assert ctx.warm.loads == loads
    assert task.output_meta is not None and task.output_meta.timings["load"] < 0.5


def test_progress_reports_stages_and_every_denoising_step(ctx: RunContext) -> None:
    events: list[ProgressEvent] = []
    ctx.progress = events.append
    run_task(TINY, {"prompt": "progress", "duration": 0.25, "generate_audio": True}, ctx)
    stages = [e.stage for e in events]
    assert stages[0] == "load"
    for stage in ("encode_text", "denoise", "upsample", "decode_video", "decode_audio", "encode", "store"):
        assert stage in stages
    # Two stages on one bar: 8 distilled steps, the upsampler, then 3 refining steps.
    steps = [(e.step, e.total) for e in events if e.stage == "denoise"]
    assert steps == [(i, 11) for i in range(12)]
    assert stages.index("upsample") > stages.index("denoise")


def _leftovers(ctx: RunContext) -> list[Path]:
    root = ctx.settings.outputs_dir
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_cancel_during_denoising_stops_and_writes_nothing(ctx: RunContext) -> None:
    steps: list[int] = []

    def cancel_at_first_step(event: ProgressEvent) -> None:
        if event.stage == "denoise" and event.step:
            steps.append(event.step)
            ctx.cancel.cancel()

    ctx.progress = cancel_at_first_step
    task = run_task(TINY, {"prompt": "cancel me", "duration": 0.25}, ctx)
    assert task.status is TaskStatus.cancelled
    assert task.error is not None and task.error.code == "cancelled"
    assert steps == [1]  # diffusers skipped the remaining steps
    assert task.output is None and task.output_meta is None
    assert _leftovers(ctx) == []


def test_interrupt_while_encoding_leaves_no_partial_file(ctx: RunContext) -> None:
    def interrupt(event: ProgressEvent) -> None:
        if event.stage == "encode":
            raise KeyboardInterrupt

    ctx.progress = interrupt
    with pytest.raises(KeyboardInterrupt):
        run_task(TINY, {"prompt": "ctrl-c", "duration": 0.25}, ctx)
    assert _leftovers(ctx) == []


def test_bad_input_raises_before_any_work(ctx: RunContext) -> None:
    with pytest.raises(InvalidInput, match="resolution"):
        run_task(TINY, {"prompt": "x", "resolution": "480p"}, ctx)
    with pytest.raises(InvalidInput):
        run_task(TINY, {"prompt": "x", "image": "data:image/png;base64,bm90IGFuIGltYWdl"}, ctx)
    assert _leftovers(ctx) == []


def test_output_probe_agrees_with_ffprobe_on_odd_durations(ctx: RunContext) -> None:
    task = run_task(TINY, {"prompt": "odd", "duration": 0.3}, ctx)  # 7 frames at 24 fps
    info = ffprobe(_output(ctx, task.id))
    (video,) = streams(info, "video")
    assert int(video["nb_read_frames"]) == 7
    assert task.output_meta is not None and task.output_meta.frames == 7
    assert task.output_meta.billing.billable_seconds == "0.292"


def test_cancel_during_decoding_stops_after_one_temporal_chunk(ctx: RunContext) -> None:
    from kinema.tasks.worker import load_engine

    engine, _ = load_engine(TINY, ctx.settings, ctx.warm)
    chunks: list[int] = []

    def after_chunk(module: object, args: object, output: object) -> None:
        chunks.append(1)
        ctx.cancel.cancel()  # a cancel arriving while the first chunk decodes

    hook = engine.pipe.vae.decoder.register_forward_hook(after_chunk)
    try:
        task = run_task(TINY, {"prompt": "cancel in decode", "duration": 4.0}, ctx)
    finally:
        hook.remove()
    assert task.status is TaskStatus.cancelled
    assert len(chunks) == 1  # a 4 s clip is 3 chunks; the decode stopped after the first
    assert not _leftovers(ctx)

"""Veo apps on the worker path, with a loopback fake of Google: delivery, refusals, errors, cancel."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from kinema.apps.registry import VEO_3_1, VEO_3_1_FAST
from kinema.domain.tasks import TaskStatus
from kinema.errors import AppUnavailable, InvalidInput
from kinema.settings import Settings
from kinema.storage.local import LocalStorage
from kinema.tasks.worker import RunContext, run_task
from tests.conftest import assert_mp4, png_data_uri
from tests.engines.fake_google import API_KEY, FakeGoogle, VideoSpec


def veo_context(tmp_path: Path, fake: FakeGoogle, **overrides: Any) -> RunContext:
    """Settings for the Veo apps pointed at the fake, with short polls (never the environment's key)."""
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "google_api_key": SecretStr(API_KEY),
        "google_vertexai": False,
        "google_base_url": fake.url,
        "google_poll_initial_s": 0.02,
        "google_poll_max_s": 0.05,
        "google_deadline_s": 20.0,
        "video_preset": "ultrafast",
    }
    values.update(overrides)
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    return RunContext(settings=settings, storage=LocalStorage(settings.outputs_dir))


def output(ctx: RunContext, task_id: str) -> Path:
    return ctx.settings.outputs_dir / f"{task_id}.mp4"


def staging_left(ctx: RunContext) -> list[Path]:
    staging = ctx.settings.outputs_dir / ".staging"
    return list(staging.iterdir()) if staging.exists() else []


def test_text_to_video_with_audio_is_delivered_on_the_contract(tmp_path: Path, fake: FakeGoogle) -> None:
    ctx = veo_context(tmp_path, fake)
    task = run_task(VEO_3_1_FAST, {"prompt": "waves", "duration": 4, "generate_audio": True}, ctx)
    assert task.status is TaskStatus.completed, task.error
    assert_mp4(output(ctx, task.id), width=1280, height=720, duration=4.0, fps=24, audio=True)
    meta = task.output_meta
    assert meta is not None
    assert (meta.width, meta.height, meta.frames, meta.has_audio, meta.audio_codec) == (
        1280,
        720,
        96,
        True,
        "aac",
    )
    assert meta.seed is None  # the Gemini API takes none, so none is reported
    assert (meta.billing.billable_seconds, meta.billing.rate_per_second, meta.billing.cost) == (
        "4",
        "0.25",
        "1.00",
    )
    assert set(meta.timings) >= {"submit", "generate", "download", "encode", "store", "total"}
    assert fake.submits()[0].path.endswith("/veo-3.1-fast-generate-preview:predictLongRunning")
    assert staging_left(ctx) == []


def test_audio_off_with_a_gemini_key_removes_googles_track_and_bills_video_only(
    tmp_path: Path, fake: FakeGoogle
) -> None:
    ctx = veo_context(tmp_path, fake)
    task = run_task(VEO_3_1, {"prompt": "quiet", "duration": 4}, ctx)
    assert task.status is TaskStatus.completed, task.error
    assert "generateAudio" not in fake.submits()[0].body["parameters"]  # the Gemini API refuses it
    assert fake.submits()[0].path.endswith("/veo-3.1-generate-preview:predictLongRunning")
    assert_mp4(output(ctx, task.id), width=1280, height=720, duration=4.0, fps=24, audio=False)
    assert task.output_meta is not None and task.output_meta.billing.cost == "0.40"


def test_a_vertex_key_asks_for_no_audio_and_sends_and_reports_a_seed(
    tmp_path: Path, fake: FakeGoogle
) -> None:
    ctx = veo_context(tmp_path, fake, google_vertexai=True)
    task = run_task(VEO_3_1_FAST, {"prompt": "quiet", "duration": 4, "aspect_ratio": "9:16"}, ctx)
    assert task.status is TaskStatus.completed, task.error
    parameters = fake.submits()[0].body["parameters"]
    assert parameters["generateAudio"] is False and parameters["aspectRatio"] == "9:16"
    assert task.output_meta is not None and task.output_meta.seed == parameters["seed"]
    assert_mp4(output(ctx, task.id), width=720, height=1280, duration=4.0, fps=24, audio=False)

    chosen = run_task(VEO_3_1_FAST, {"prompt": "again", "duration": 4, "seed": 99}, ctx)
    assert chosen.output_meta is not None and chosen.output_meta.seed == 99
    assert fake.submits()[1].body["parameters"]["seed"] == 99


def test_image_to_video_takes_the_nearer_of_googles_two_shapes(tmp_path: Path, fake: FakeGoogle) -> None:
    ctx = veo_context(tmp_path, fake)
    raw = {"prompt": "zoom out", "image": png_data_uri(600, 900), "duration": 4, "generate_audio": True}
    task = run_task(VEO_3_1_FAST, raw, ctx)
    assert task.status is TaskStatus.completed, task.error
    submit = fake.submits()[0].body
    assert submit["parameters"]["aspectRatio"] == "9:16" and "image" in submit["instances"][0]
    assert task.output_meta is not None and task.output_meta.aspect_ratio == "9:16"
    assert_mp4(output(ctx, task.id), width=720, height=1280, duration=4.0, fps=24, audio=True)


def test_a_provider_file_off_the_contract_is_transcoded_to_it(tmp_path: Path, fake: FakeGoogle) -> None:
    # Another codec (MPEG-4 Part 2) with its moov atom last; the unit tests cover other sizes.
    fake.behaviour.video = VideoSpec(1280, 720, 4, audio=True, codec="mpeg4", faststart=False)
    ctx = veo_context(tmp_path, fake)
    task = run_task(VEO_3_1_FAST, {"prompt": "small", "duration": 4, "generate_audio": True}, ctx)
    assert task.status is TaskStatus.completed, task.error
    assert_mp4(output(ctx, task.id), width=1280, height=720, duration=4.0, fps=24, audio=True)
    assert task.output_meta is not None and (task.output_meta.width, task.output_meta.height) == (1280, 720)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"prompt": "square", "aspect_ratio": "1:1"}, "aspect_ratio"),
        ({"prompt": "long", "duration": 5}, "duration"),
        ({"prompt": "hd short", "resolution": "1080p", "duration": 4}, "duration"),
        ({"prompt": "4k short", "resolution": "4K", "duration": 6}, "duration"),
        ({"prompt": "seeded", "seed": 3}, "seed"),  # a Gemini key: Google takes no seed
    ],
)
def test_what_google_cannot_do_is_refused_before_any_call(
    tmp_path: Path, fake: FakeGoogle, raw: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput, match=field):
        run_task(VEO_3_1_FAST, raw, veo_context(tmp_path, fake))
    assert fake.requests == []


def test_without_a_key_the_app_is_unavailable_with_the_reason(tmp_path: Path, fake: FakeGoogle) -> None:
    ctx = veo_context(tmp_path, fake, google_api_key=None)
    availability = VEO_3_1_FAST.availability(ctx.settings)
    assert not availability.available and "KINEMA_GOOGLE_API_KEY" in (availability.reason or "")
    with pytest.raises(
        AppUnavailable, match="google/veo-3-1-fast cannot run here: it needs your Google API key"
    ):
        run_task(VEO_3_1_FAST, {"prompt": "no key"}, ctx)
    assert fake.requests == []


@pytest.mark.parametrize(
    ("setup", "code"),
    [
        ({"submit_error": (429, "RESOURCE_EXHAUSTED", "Quota exceeded.")}, "provider_quota_exceeded"),
        (
            {"operation_error": {"code": 3, "message": "Blocked by the safety policy."}},
            "provider_safety_blocked",
        ),
        ({"rai_reasons": ["may violate our usage guidelines"]}, "provider_safety_blocked"),
        ({"video": VideoSpec(1280, 720, 4, audio=False)}, "provider_bad_output"),  # audio asked, none came
    ],
)
def test_provider_failures_end_the_task_failed_with_a_code(
    tmp_path: Path, fake: FakeGoogle, setup: dict[str, Any], code: str
) -> None:
    for name, value in setup.items():
        setattr(fake.behaviour, name, value)
    ctx = veo_context(tmp_path, fake, google_vertexai=True)
    task = run_task(VEO_3_1_FAST, {"prompt": "fails", "duration": 4, "generate_audio": True}, ctx)
    assert task.status is TaskStatus.failed and task.error is not None
    assert task.error.code == code and task.error.message
    assert API_KEY not in task.model_dump_json()
    assert not output(ctx, task.id).exists() and staging_left(ctx) == []


def test_a_run_past_the_deadline_fails_as_provider_timeout(tmp_path: Path, fake: FakeGoogle) -> None:
    fake.behaviour.never_done = True
    task = run_task(
        VEO_3_1_FAST, {"prompt": "slow", "duration": 4}, veo_context(tmp_path, fake, google_deadline_s=0.3)
    )
    assert task.status is TaskStatus.failed and task.error is not None
    assert task.error.code == "provider_timeout" and "may still finish and bill" in task.error.message


def test_cancel_while_google_works_stops_polling_and_marks_the_task_cancelled(
    tmp_path: Path, fake: FakeGoogle
) -> None:
    fake.behaviour.never_done = True
    ctx = veo_context(tmp_path, fake)

    def cancel_after_a_poll() -> None:
        deadline = time.monotonic() + 10
        while not fake.polls() and time.monotonic() < deadline:
            time.sleep(0.01)
        ctx.cancel.cancel()

    threading.Thread(target=cancel_after_a_poll).start()
    started = time.monotonic()
    task = run_task(VEO_3_1_FAST, {"prompt": "never mind", "duration": 4}, ctx)
    assert task.status is TaskStatus.cancelled and task.error is not None and task.error.code == "cancelled"
    assert time.monotonic() - started < 5
    polls = len(fake.polls())
    time.sleep(0.2)
    assert len(fake.polls()) == polls  # nothing keeps asking Google
    assert not output(ctx, task.id).exists() and staging_left(ctx) == []


def test_a_run_resumes_the_operation_its_context_hands_back_instead_of_submitting(
    tmp_path: Path, fake: FakeGoogle
) -> None:
    raw = {"prompt": "resume me", "duration": 4, "generate_audio": True}
    fake.behaviour.never_done = True
    first = veo_context(tmp_path, fake)
    saved: list[dict[str, Any]] = []

    def keep(state: dict[str, Any]) -> None:
        saved.append(state)
        first.cancel.cancel()  # stopped right after the state was kept, as a server shutting down

    first.on_provider_state = keep
    assert run_task(VEO_3_1_FAST, raw, first).status is TaskStatus.cancelled
    (state,) = saved

    fake.behaviour.never_done = False
    again = veo_context(tmp_path, fake)
    again.resume = state
    task = run_task(VEO_3_1_FAST, raw, again)
    assert task.status is TaskStatus.completed, task.error
    assert len(fake.submits()) == 1  # the first attempt's only
    assert_mp4(output(again, task.id), width=1280, height=720, duration=4.0, fps=24, audio=True)

    lost = veo_context(tmp_path, fake)
    lost.resume = {**state, "operation": state["operation"].rsplit("/", 1)[0] + "/expired"}
    failed = run_task(VEO_3_1_FAST, raw, lost)
    assert failed.status is TaskStatus.failed and failed.error is not None
    assert failed.error.code == "provider_operation_lost" and "expired" in failed.error.message
    assert len(fake.submits()) == 1 and staging_left(lost) == []

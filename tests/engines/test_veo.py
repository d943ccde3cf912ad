"""The Veo client against a loopback fake of Google's endpoints: the SDK's real requests, polling, errors."""

from __future__ import annotations

import base64
import io
import itertools
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from kinema.domain.sizing import plan_frames
from kinema.engines.base import CancelToken, GenerationRequest, ProgressEvent, ignore_progress
from kinema.engines.veo import VeoClient, VeoConfig, VeoEngine, VeoRequest
from kinema.errors import (
    Cancelled,
    ProviderAuthFailed,
    ProviderError,
    ProviderInvalidArgument,
    ProviderOperationLost,
    ProviderQuotaExceeded,
    ProviderSafetyBlocked,
    ProviderTimeout,
    ProviderUnavailable,
)
from kinema.media.probe import probe_video
from tests.engines.fake_google import API_KEY, FakeGoogle, VideoSpec


def config(fake: FakeGoogle, *, vertexai: bool = False, **overrides: Any) -> VeoConfig:
    values: dict[str, Any] = {
        "api_key": API_KEY,
        "vertexai": vertexai,
        "base_url": fake.url,
        "request_timeout_s": 5.0,
        "download_timeout_s": 5.0,
        "poll_initial_s": 0.02,
        "poll_max_s": 0.05,
        "deadline_s": 10.0,
    }
    values.update(overrides)
    return VeoConfig(**values)


def request(*, vertexai: bool = False, **overrides: Any) -> VeoRequest:
    values: dict[str, Any] = {
        "model": "veo-3.1-fast-generate-001" if vertexai else "veo-3.1-fast-generate-preview",
        "prompt": "A drone shot rising over a foggy forest at sunrise",
        "negative_prompt": None,
        "image": None,
        "width": 1280,
        "height": 720,
        "aspect_ratio": "16:9",
        "resolution": "720p",
        "duration_seconds": 4,
        "generate_audio": True,
        "seed": None,
    }
    values.update(overrides)
    return VeoRequest(**values)


def generate(
    fake: FakeGoogle,
    tmp_path: Path,
    req: VeoRequest | None = None,
    cancel: CancelToken | None = None,
    **cfg: Any,
) -> tuple[Path, list[str]]:
    stages: list[str] = []
    target = tmp_path / "google.mp4"
    vertexai = bool(cfg.get("vertexai"))
    with VeoClient(config(fake, **cfg)) as client:
        client.generate(
            req or request(vertexai=vertexai),
            target,
            lambda e: stages.append(e.stage),
            cancel or CancelToken(),
        )
    return target, stages


def test_gemini_text_to_video_sends_googles_wire_format_and_downloads_the_file(
    fake: FakeGoogle, tmp_path: Path
) -> None:
    req = request(negative_prompt="blurry", resolution="1080p", duration_seconds=8)
    fake.behaviour.video = VideoSpec(
        1280, 720, 4, audio=True
    )  # the request is the point; keep the file small
    path, stages = generate(fake, tmp_path, req)

    (submit,) = fake.submits()
    assert submit.path == "/v1beta/models/veo-3.1-fast-generate-preview:predictLongRunning"
    assert submit.body == {
        "instances": [{"prompt": "A drone shot rising over a foggy forest at sunrise"}],
        "parameters": {
            "aspectRatio": "16:9",
            "resolution": "1080p",
            "durationSeconds": 8,
            "negativePrompt": "blurry",
        },
    }
    # The key travels in Google's header, never in a URL.
    assert all(
        r.headers.get("x-goog-api-key") == API_KEY for r in fake.requests if not r.path.startswith("/storage")
    )
    assert all("key=" not in r.query for r in fake.requests)
    assert [r.method for r in fake.polls()] == ["GET", "GET"]  # polled until Google said done
    paths = [r.path for r in fake.requests]
    assert any(p.endswith(":download") for p in paths) and any(p.startswith("/storage/") for p in paths)
    info = probe_video(path)
    assert (info.width, info.height, info.frames, info.has_audio) == (1280, 720, 96, True)
    assert stages == ["submit", "generate", "download"]


def test_vertex_image_to_video_maps_every_option_and_reads_the_inline_video(
    fake: FakeGoogle, tmp_path: Path
) -> None:
    image = Image.new("RGB", (800, 600), (10, 200, 30))  # 4:3: cropped to the output's 9:16 shape
    req = request(
        vertexai=True,
        image=image,
        width=720,
        height=1280,
        aspect_ratio="9:16",
        negative_prompt="text",
        generate_audio=False,
        seed=1234,
        duration_seconds=6,
    )
    path, _ = generate(fake, tmp_path, req, vertexai=True)

    (submit,) = fake.submits()
    assert submit.path == "/v1beta1/publishers/google/models/veo-3.1-fast-generate-001:predictLongRunning"
    instance, parameters = submit.body["instances"][0], submit.body["parameters"]
    assert instance["prompt"] == req.prompt and instance["image"]["mimeType"] == "image/jpeg"
    sent = Image.open(io.BytesIO(base64.b64decode(instance["image"]["bytesBase64Encoded"])))
    assert (sent.format, sent.size) == ("JPEG", (720, 1280))
    assert parameters == {
        "aspectRatio": "9:16",
        "resolution": "720p",
        "durationSeconds": 6,
        "generateAudio": False,
        "negativePrompt": "text",
        "seed": 1234,
    }
    assert all(r.path.endswith(":fetchPredictOperation") for r in fake.polls())
    info = probe_video(path)
    assert (info.width, info.height, info.frames, info.has_audio) == (720, 1280, 144, False)


def test_4k_is_asked_for_in_googles_spelling(fake: FakeGoogle, tmp_path: Path) -> None:
    cancel = CancelToken()
    fake.behaviour.never_done = True
    threading.Timer(0.3, cancel.cancel).start()  # the request is what matters here, not a 4K download
    with pytest.raises(Cancelled):
        generate(fake, tmp_path, request(resolution="4K", duration_seconds=8), cancel)
    assert fake.submits()[0].body["parameters"]["resolution"] == "4k"


def test_polling_backs_off_and_survives_a_passing_outage(fake: FakeGoogle, tmp_path: Path) -> None:
    fake.behaviour.polls_before_done = 5
    fake.behaviour.poll_errors = [503, 500]
    path, _ = generate(fake, tmp_path, poll_initial_s=0.02, poll_max_s=0.2)
    polls = fake.polls()
    assert len(polls) == 5 and path.stat().st_size > 0
    gaps = [b.at - a.at for a, b in itertools.pairwise(polls)]
    assert gaps[-1] > gaps[0] * 1.8  # waits grow 1.5x per poll


@pytest.mark.parametrize(
    ("error", "expected", "code"),
    [
        ((429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'predict requests'"),
         ProviderQuotaExceeded, "provider_quota_exceeded"),
        ((400, "INVALID_ARGUMENT", "Unsupported image size."),
         ProviderInvalidArgument, "provider_invalid_argument"),
        ((403, "PERMISSION_DENIED", "Your API key may not use this model."),
         ProviderAuthFailed, "provider_auth_failed"),
        ((503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
         ProviderUnavailable, "provider_unavailable"),
    ],
)  # fmt: skip
def test_refused_submissions_are_clear_errors_with_codes(
    fake: FakeGoogle, tmp_path: Path, error: tuple[int, str, str], expected: type[ProviderError], code: str
) -> None:
    fake.behaviour.submit_error = error
    with pytest.raises(expected) as raised:
        generate(fake, tmp_path)
    assert raised.value.code == code and error[2] in raised.value.message
    assert fake.polls() == []  # nothing to poll, and a refused submit is not retried
    assert len(fake.submits()) == 1


def test_a_wrong_key_is_provider_auth_failed(fake: FakeGoogle, tmp_path: Path) -> None:
    with pytest.raises(ProviderAuthFailed, match="API key not valid"):
        generate(fake, tmp_path, api_key="AIza-not-the-key")


def test_an_unknown_model_is_an_invalid_argument(fake: FakeGoogle, tmp_path: Path) -> None:
    with pytest.raises(ProviderInvalidArgument, match="veo-9-does-not-exist"):
        generate(fake, tmp_path, request(model="veo-9-does-not-exist"))


@pytest.mark.parametrize("vertexai", [False, True])
def test_safety_filtered_videos_are_provider_safety_blocked(
    fake: FakeGoogle, tmp_path: Path, vertexai: bool
) -> None:
    fake.behaviour.rai_reasons = ["The video was filtered because it may violate our usage guidelines."]
    with pytest.raises(ProviderSafetyBlocked, match="usage guidelines"):
        generate(fake, tmp_path, request(vertexai=vertexai), vertexai=vertexai)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"code": 3, "message": "The prompt could not be submitted: it violates the safety policy."},
         ProviderSafetyBlocked),
        ({"code": 3, "message": "Image must be at least 300 pixels wide."}, ProviderInvalidArgument),
        ({"code": 8, "message": "Resource has been exhausted."}, ProviderQuotaExceeded),
        ({"code": 13, "message": "Internal error encountered."}, ProviderUnavailable),
    ],
)  # fmt: skip
def test_failed_operations_map_to_errors_by_their_rpc_code(
    fake: FakeGoogle, tmp_path: Path, status: dict[str, Any], expected: type[ProviderError]
) -> None:
    fake.behaviour.operation_error = status
    with pytest.raises(expected, match=status["message"][:20]):
        generate(fake, tmp_path)


def test_an_operation_past_the_deadline_is_provider_timeout(fake: FakeGoogle, tmp_path: Path) -> None:
    fake.behaviour.never_done = True
    started = time.monotonic()
    with pytest.raises(ProviderTimeout, match=r"did not finish within 0\.4 s") as raised:
        generate(fake, tmp_path, deadline_s=0.4)
    assert time.monotonic() - started < 3
    assert "may still finish and bill" in raised.value.message
    assert fake.polls()  # it kept asking until the deadline


def test_polls_that_hang_time_out_and_count_against_the_deadline(fake: FakeGoogle, tmp_path: Path) -> None:
    fake.behaviour.poll_delay_s = 1.0
    started = time.monotonic()
    with pytest.raises(ProviderTimeout, match=r"did not answer within 0\.2 s"):
        generate(fake, tmp_path, request_timeout_s=0.2, deadline_s=0.8)
    assert time.monotonic() - started < 4


def test_cancel_stops_polling_at_once(fake: FakeGoogle, tmp_path: Path) -> None:
    fake.behaviour.never_done = True
    cancel = CancelToken()
    events: list[ProgressEvent] = []
    target = tmp_path / "google.mp4"
    with VeoClient(config(fake, poll_initial_s=0.05, poll_max_s=0.05)) as client:
        outcome: list[BaseException] = []

        def run() -> None:
            try:
                client.generate(request(), target, events.append, cancel)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 5
        while len(fake.polls()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        cancelled_at = time.monotonic()
        cancel.cancel()
        thread.join(5)
    assert not thread.is_alive() and time.monotonic() - cancelled_at < 1
    assert [type(exc) for exc in outcome] == [Cancelled]
    polls_after = [r for r in fake.polls() if r.at > cancelled_at + 0.06]
    assert polls_after == [] and not target.exists()


def test_the_key_never_appears_in_errors_or_logs(
    fake: FakeGoogle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.behaviour.poll_errors = [503]
    generate(fake, tmp_path)
    fake.behaviour.submit_error = (400, "INVALID_ARGUMENT", f"bad request for key {API_KEY}")
    with pytest.raises(ProviderInvalidArgument) as raised:
        generate(fake, tmp_path)
    assert API_KEY not in raised.value.message and "[redacted]" in raised.value.message
    assert caplog.records and all(API_KEY not in record.getMessage() for record in caplog.records)


# Resuming an operation an earlier attempt started ------------------------------------------------------


def engine_request(tmp_path: Path, **overrides: Any) -> GenerationRequest:
    values: dict[str, Any] = {
        "prompt": "A drone shot rising over a foggy forest at sunrise",
        "negative_prompt": None,
        "image": None,
        "width": 1280,
        "height": 720,
        "frames": plan_frames(4, 24, 1),
        "generate_audio": True,
        "seed": 7,
        "resolution": "720p",
        "aspect_ratio": "16:9",
        "duration": 4.0,
        "download_to": tmp_path / "google.mp4",
    }
    values.update(overrides)
    return GenerationRequest(**values)


def veo_engine(fake: FakeGoogle, *, vertexai: bool = False, **cfg: Any) -> VeoEngine:
    model = "veo-3.1-fast-generate-001" if vertexai else "veo-3.1-fast-generate-preview"
    return VeoEngine(model, config(fake, vertexai=vertexai, **cfg))


def polled_names(fake: FakeGoogle) -> set[str]:
    """The operation names the polls asked about (Gemini: in the path; Vertex: in the body)."""
    return {
        r.body["operationName"] if r.method == "POST" else r.path.removeprefix("/v1beta/")
        for r in fake.polls()
    }


def started_then_crashed(fake: FakeGoogle, engine: VeoEngine, tmp_path: Path) -> dict[str, Any]:
    """A first attempt that submits, saves its operation and dies before its first poll: the saved state."""
    fake.behaviour.never_done = True
    cancel = CancelToken()
    saved: list[dict[str, Any]] = []

    def keep(state: dict[str, Any]) -> None:
        saved.append(state)
        cancel.cancel()  # the process goes away right after the state is kept

    with pytest.raises(Cancelled):
        engine.generate(engine_request(tmp_path, on_provider_state=keep), ignore_progress, cancel)
    assert len(fake.submits()) == 1 and fake.polls() == []  # kept after the submit, before any poll
    (state,) = saved
    return state


@pytest.mark.parametrize("vertexai", [False, True])
def test_an_engine_given_a_saved_operation_polls_it_and_never_submits_again(
    fake: FakeGoogle, tmp_path: Path, vertexai: bool
) -> None:
    engine = veo_engine(fake, vertexai=vertexai)
    state = started_then_crashed(fake, engine, tmp_path)
    (operation,) = fake.operations
    assert state["operation"] == operation and state["api"] == ("vertex" if vertexai else "gemini")

    fake.behaviour.never_done = False
    fake.requests.clear()
    stages: list[str] = []
    saved_again: list[dict[str, Any]] = []
    request = engine_request(tmp_path, resume=state, on_provider_state=saved_again.append)
    clip = engine.generate(request, lambda e: stages.append(e.stage), CancelToken())

    assert fake.submits() == []  # no POST …:predictLongRunning: Google makes (and bills) one video
    assert len(fake.polls()) == 2 and polled_names(fake) == {operation}
    assert saved_again == [] and stages == ["generate", "download"]
    assert clip.video_file is not None
    info = probe_video(clip.video_file)
    assert (info.width, info.height, info.frames) == (1280, 720, 96)


@pytest.mark.parametrize("vertexai", [False, True])
def test_a_saved_operation_google_no_longer_knows_fails_the_run_without_submitting(
    fake: FakeGoogle, tmp_path: Path, vertexai: bool
) -> None:
    engine = veo_engine(fake, vertexai=vertexai)
    state = started_then_crashed(fake, engine, tmp_path)
    fake.reset()  # Google forgot it: the operation expired
    with pytest.raises(ProviderOperationLost, match="no longer knows operation") as raised:
        engine.generate(engine_request(tmp_path, resume=state), ignore_progress, CancelToken())
    assert raised.value.code == "provider_operation_lost" and state["operation"] in raised.value.message
    assert "could bill a second video" in raised.value.message
    assert fake.submits() == [] and len(fake.polls()) == 1


def test_a_saved_operation_of_the_other_api_is_refused_before_any_call(
    fake: FakeGoogle, tmp_path: Path
) -> None:
    state = started_then_crashed(fake, veo_engine(fake, vertexai=False), tmp_path)
    fake.requests.clear()
    with pytest.raises(ProviderOperationLost, match="now calls the vertex API"):
        veo_engine(fake, vertexai=True).generate(
            engine_request(tmp_path, resume=state), ignore_progress, CancelToken()
        )
    with pytest.raises(ProviderOperationLost, match="cannot resume"):
        veo_engine(fake).generate(
            engine_request(tmp_path, resume={"operation": 3}), ignore_progress, CancelToken()
        )
    assert fake.requests == []


def test_a_saved_operation_past_its_deadline_is_asked_about_once_then_times_out(
    fake: FakeGoogle, tmp_path: Path
) -> None:
    engine = veo_engine(fake, deadline_s=5.0)
    state = started_then_crashed(fake, engine, tmp_path)
    state = {**state, "submitted_at": time.time() - 60}  # the server was down longer than the deadline
    with pytest.raises(ProviderTimeout, match=state["operation"]):
        engine.generate(engine_request(tmp_path, resume=state), ignore_progress, CancelToken())
    assert len(fake.submits()) == 1 and len(fake.polls()) == 1  # Google may have finished it meanwhile

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

from kinema.engines.base import CancelToken, ProgressEvent
from kinema.engines.veo import VeoClient, VeoConfig, VeoRequest
from kinema.errors import (
    Cancelled,
    ProviderAuthFailed,
    ProviderError,
    ProviderInvalidArgument,
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

"""Google's Veo through the google-genai SDK with the user's own key: submit, poll with backoff, download.

Two kinds of key reach Veo, and the SDK (3.x) treats them differently:

- A Gemini API key (Google AI Studio). The SDK's `models.generate_videos` refuses the Gemini API in 3.x
  (it has no request converter for it), but the API itself serves Veo at `models/{model}:predictLongRunning`.
  kinema sends that request through the SDK's own HTTP client (same key header, base URL, timeouts and error
  types) in the wire format the 2.x SDK used; the SDK then polls the operation (`operations.get`) and
  downloads the finished file (`files.download`). The Gemini API takes no seed and always generates audio.
- A Vertex AI key (express mode, `KINEMA_GOOGLE_VERTEXAI=true`). Plain `models.generate_videos` and
  `operations.get`; the video comes back inline in the finished operation.

A started operation is reported to the caller (GenerationRequest.on_provider_state) before any polling; a
later attempt of the same task passes it back (GenerationRequest.resume) and polls that operation instead of
submitting again, so Google never makes (and bills) the video twice. An operation Google no longer knows fails
the task.

google-genai is imported only when a run starts, and nothing here touches torch.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from PIL import Image, ImageOps

from kinema.engines.base import (
    CancelToken,
    EngineSpec,
    GeneratedClip,
    GenerationRequest,
    ProgressCallback,
    ProgressEvent,
)
from kinema.errors import (
    AppUnavailable,
    ProviderAuthFailed,
    ProviderBadOutput,
    ProviderError,
    ProviderInvalidArgument,
    ProviderOperationLost,
    ProviderQuotaExceeded,
    ProviderSafetyBlocked,
    ProviderTimeout,
    ProviderUnavailable,
)
from kinema.settings import Settings

if TYPE_CHECKING:
    from google.genai import types

log = logging.getLogger(__name__)

GOOGLE_RESOLUTIONS = {"720p": "720p", "1080p": "1080p", "4K": "4k"}
FIRST_FRAME_MAX_SIDE = 1920  # the first frame goes at the output's shape, at most 1080p (Veo's input size)
BACKOFF = 1.5
DOWNLOAD_ATTEMPTS = 3
MESSAGE_LIMIT = 400

# google.rpc.Code names for the numeric codes a failed operation carries.
RPC_CODES = {
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    11: "OUT_OF_RANGE",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    16: "UNAUTHENTICATED",
}
SAFETY_WORDS = ("safety", "responsible ai", "usage guideline", "sensitive", "prohibited", "celebrity")
INVALID_STATUSES = ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE", "NOT_FOUND")

T = TypeVar("T")


@dataclass(frozen=True)
class GoogleModel:
    """A Veo model in its Gemini API and Vertex AI names: a Veo app's engine options."""

    gemini_model: str  # the id on Google's Gemini API
    vertex_model: str  # the id on Vertex AI

    def model_id(self, app_id: str, settings: Settings) -> str:
        """The provider's model id for this server: settings.google_models overrides the default."""
        if app_id in settings.google_models:
            return settings.google_models[app_id]
        return self.vertex_model if settings.google_vertexai else self.gemini_model

    def describe(self, app_id: str, settings: Settings | None) -> dict[str, str]:
        """The provider part of an app's public description."""
        if settings is None:
            return {"name": "google"}
        api = "vertex" if settings.google_vertexai else "gemini"
        return {"name": "google", "api": api, "model": self.model_id(app_id, settings)}


def load_engine(
    app_id: str, spec: EngineSpec, model_dir: Path | None, settings: Settings, device: str | None
) -> VeoEngine:
    """The Veo family's loader: a client configuration, no weights."""
    if not isinstance(spec.options, GoogleModel):
        raise ValueError(f"{app_id}: a Veo app's engine options are a GoogleModel")
    return VeoEngine(spec.options.model_id(app_id, settings), VeoConfig.from_settings(settings))


class VeoEngine:
    """Veo behind the Engine protocol: Google makes the file; the worker brings it onto the contract."""

    frame_multiple = 1
    size_multiple = 1
    device = "remote"
    audio_sample_rate: int | None = None

    def __init__(self, model: str, config: VeoConfig) -> None:
        self.model, self.config = model, config

    def generate(
        self, request: GenerationRequest, progress: ProgressCallback, cancel: CancelToken
    ) -> GeneratedClip:
        """Submit, wait and download Google's video into request.download_to."""
        if request.download_to is None:
            raise ValueError("a provider's engine needs request.download_to")
        # Vertex AI takes a seed, so one is always reported; the Gemini API takes none.
        seed = request.seed if self.config.vertexai else None
        veo = VeoRequest(
            model=self.model,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            image=request.image,
            width=request.width,
            height=request.height,
            aspect_ratio=request.aspect_ratio,
            resolution=request.resolution,
            duration_seconds=round(request.duration),
            generate_audio=request.generate_audio,
            seed=seed,
        )
        resume = VeoOperation.from_state(request.resume) if request.resume is not None else None

        def started(operation: VeoOperation) -> None:
            request.on_provider_state(operation.to_state())

        with VeoClient(self.config) as client:
            result = client.generate(
                veo, request.download_to, progress, cancel, resume=resume, on_started=started
            )
        log.info("veo: operation %s delivered (%d polls)", result.operation, result.polls)
        return GeneratedClip(
            width=request.width,
            height=request.height,
            fps=request.frames.fps,
            frame_count=request.frames.frames,
            frames=None,
            audio=None,
            sample_rate=None,
            seed=seed,
            timings=result.timings,
            video_file=request.download_to,
        )


@dataclass(frozen=True)
class VeoConfig:
    """How to reach Google: the key, which API it is for, and the time limits."""

    api_key: str
    vertexai: bool
    base_url: str | None
    request_timeout_s: float
    download_timeout_s: float
    poll_initial_s: float
    poll_max_s: float
    deadline_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> VeoConfig:
        """The configuration in settings; AppUnavailable without a key."""
        if settings.google_api_key is None:
            raise AppUnavailable("the Veo apps need a Google API key: set KINEMA_GOOGLE_API_KEY")
        return cls(
            api_key=settings.google_api_key.get_secret_value(),
            vertexai=settings.google_vertexai,
            base_url=settings.google_base_url,
            request_timeout_s=settings.google_request_timeout_s,
            download_timeout_s=settings.google_download_timeout_s,
            poll_initial_s=settings.google_poll_initial_s,
            poll_max_s=settings.google_poll_max_s,
            deadline_s=settings.google_deadline_s,
        )

    @property
    def api(self) -> str:
        return "vertex" if self.vertexai else "gemini"


@dataclass(frozen=True)
class VeoRequest:
    """One video to ask Veo for, in kinema's terms (the client maps them to Google's parameters)."""

    model: str
    prompt: str
    negative_prompt: str | None
    image: Image.Image | None
    width: int  # the output size: the first frame is cropped to its shape
    height: int
    aspect_ratio: str
    resolution: str  # 720p, 1080p or 4K
    duration_seconds: int
    generate_audio: bool
    seed: int | None


@dataclass(frozen=True)
class VeoOperation:
    """A started Veo operation as a task keeps it: enough for another process to poll it later."""

    name: str  # Google's operation name
    api: str  # "gemini" or "vertex": only the API that started it can poll it
    model: str
    submitted_at: float  # wall-clock seconds (time.time()); the total deadline counts from here

    def to_state(self) -> dict[str, Any]:
        """The JSON a task store keeps (GenerationRequest.on_provider_state)."""
        return {
            "provider": "google",
            "api": self.api,
            "model": self.model,
            "operation": self.name,
            "submitted_at": self.submitted_at,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> VeoOperation:
        """The operation an earlier attempt saved; ProviderOperationLost if the state is not one of ours."""
        name, api, model = state.get("operation"), state.get("api"), state.get("model")
        submitted_at = state.get("submitted_at")
        if (
            state.get("provider") != "google"
            or not isinstance(name, str)
            or not name
            or api not in ("gemini", "vertex")
            or not isinstance(submitted_at, (int, float))
        ):
            raise ProviderOperationLost(
                "an earlier attempt of this task left provider state kinema cannot resume; "
                "not submitting it to Google again (that could bill a second video)"
            )
        return cls(name=name, api=str(api), model=str(model or ""), submitted_at=float(submitted_at))


@dataclass(frozen=True)
class VeoResult:
    """What Google produced: the operation that made it and how long each stage took."""

    operation: str
    api: str
    polls: int
    timings: dict[str, float]
    resumed: bool = False  # the operation was started by an earlier attempt, not submitted by this one


class VeoClient:
    """A google-genai client for one run; use it as a context manager so its connections close."""

    def __init__(self, config: VeoConfig) -> None:
        from google import genai
        from google.genai import types

        self.config = config
        options = types.HttpOptions(
            base_url=config.base_url,
            # The Gemini API serves Veo on v1beta; the SDK's own default for it is v1.
            api_version=None if config.vertexai else "v1beta",
            timeout=_milliseconds(config.request_timeout_s),
        )
        self._client = genai.Client(vertexai=config.vertexai, api_key=config.api_key, http_options=options)

    def __enter__(self) -> VeoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def generate(
        self,
        request: VeoRequest,
        destination: Path,
        progress: ProgressCallback,
        cancel: CancelToken,
        *,
        resume: VeoOperation | None = None,
        on_started: Callable[[VeoOperation], None] | None = None,
    ) -> VeoResult:
        """Ask Veo for the video (or, with resume, follow the operation an earlier attempt started), wait
        for it (backoff, deadline, cancel) and write Google's file.

        on_started gets the new operation right after the submit returns, before any polling.
        """
        begun = time.monotonic()
        if resume is None:
            deadline = begun + self.config.deadline_s
            progress(ProgressEvent("submit"))
            cancel.raise_if_cancelled()
            operation = self._call(lambda: self._submit(request), "send the request to Google")
            log.info("veo: %s started operation %s", request.model, operation.name)
            if on_started is not None and operation.name:
                on_started(VeoOperation(operation.name, self.config.api, request.model, time.time()))
        else:
            # The total deadline counts from the original submit; what passed while no process was
            # waiting (a crash, a restart) counts too.
            deadline = begun + resume.submitted_at + self.config.deadline_s - time.time()
            operation = self._resumed(resume)
            log.info("veo: resuming operation %s from an earlier attempt", resume.name)
        submitted = time.monotonic()
        progress(ProgressEvent("generate"))
        operation, polls = self._wait(operation, deadline, cancel, resumed=resume is not None)
        generated = time.monotonic()
        video = self._video_of(operation)
        cancel.raise_if_cancelled()
        progress(ProgressEvent("download"))
        self._save(video, destination, deadline)
        return VeoResult(
            operation=operation.name or "",
            api=self.config.api,
            polls=polls,
            resumed=resume is not None,
            timings={
                "submit": submitted - begun,
                "generate": generated - submitted,
                "download": time.monotonic() - generated,
            },
        )

    # Requests ------------------------------------------------------------------------------------

    def _submit(self, request: VeoRequest) -> types.GenerateVideosOperation:
        from google.genai import types

        image = first_frame_jpeg(request.image, request.width, request.height) if request.image else None
        if self.config.vertexai:
            config = types.GenerateVideosConfig(
                aspect_ratio=request.aspect_ratio,
                resolution=GOOGLE_RESOLUTIONS[request.resolution],
                duration_seconds=request.duration_seconds,
                generate_audio=request.generate_audio,
                negative_prompt=request.negative_prompt,
                seed=request.seed,
            )
            source = types.GenerateVideosSource(
                prompt=request.prompt,
                image=types.Image(image_bytes=image, mime_type="image/jpeg") if image else None,
            )
            return self._client.models.generate_videos(model=request.model, source=source, config=config)
        # The Gemini API: the request generate_videos would send there, through the SDK's own client.
        response = self._client._api_client.request(
            "post", f"models/{request.model}:predictLongRunning", gemini_request_body(request, image)
        )
        body = json.loads(response.body or "{}")
        operation: types.GenerateVideosOperation = types.GenerateVideosOperation.from_api_response(
            body, is_vertex_ai=False
        )
        return operation

    def _resumed(self, resume: VeoOperation) -> types.GenerateVideosOperation:
        """The operation an earlier attempt started, to poll; only the API that started it knows it."""
        from google.genai import types

        if resume.api != self.config.api:
            raise ProviderOperationLost(
                f"an earlier attempt of this task started Google operation {resume.name} through the "
                f"{resume.api} API, but this server now calls the {self.config.api} API, which cannot follow "
                "it; not submitting it again (that could bill a second video)"
            )
        operation: types.GenerateVideosOperation = types.GenerateVideosOperation.from_api_response(
            {"name": resume.name}, is_vertex_ai=self.config.vertexai
        )
        return operation

    def _poll_waits(self, resumed: bool) -> Iterator[float]:
        """The waits before each poll: a resumed operation is asked about at once, then growing waits."""
        if resumed:
            yield 0.0
        interval = self.config.poll_initial_s
        while True:
            yield interval
            interval = min(interval * BACKOFF, self.config.poll_max_s)

    def _wait(
        self,
        operation: types.GenerateVideosOperation,
        deadline: float,
        cancel: CancelToken,
        *,
        resumed: bool = False,
    ) -> tuple[types.GenerateVideosOperation, int]:
        """Poll until the operation is done: growing waits, transient errors retried, a total deadline.

        A resumed operation is polled at least once even past its deadline: Google may have finished it
        while no process was waiting.
        """
        polls = 0
        last_error: ProviderError | None = None
        waits = self._poll_waits(resumed)
        while not operation.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and not (resumed and polls == 0):
                detail = f"; the last poll failed: {last_error.message}" if last_error else ""
                raise ProviderTimeout(
                    f"Google did not finish within {self.config.deadline_s:g} s "
                    f"(operation {operation.name}); it may still finish and bill the video{detail}"
                )
            cancel.sleep(min(next(waits), max(0.0, remaining)))
            polls += 1
            try:
                operation = self._client.operations.get(operation)
                last_error = None
            except Exception as exc:
                gone = _not_found(exc) if resumed else None
                if gone is not None:
                    raise ProviderOperationLost(
                        f"Google no longer knows operation {operation.name}, which an earlier attempt of "
                        f"this task started ({_clean(gone, self.config.api_key)}): it expired or was "
                        "removed. kinema does not submit the task again, since that could bill a second "
                        "video; run it again for a new one"
                    ) from exc
                error, transient = self._translate(exc, "ask Google about the video")
                if not transient:
                    raise error from exc
                log.warning("veo: polling %s failed (%s); will retry", operation.name, error.message)
                last_error = error
        return operation, polls

    def _video_of(self, operation: types.GenerateVideosOperation) -> types.Video:
        if operation.error:
            raise operation_error(operation.error, self.config.api_key)
        response = operation.response or operation.result
        videos = response.generated_videos if response is not None else None
        if videos and videos[0].video is not None:
            return videos[0].video
        if response is not None and response.rai_media_filtered_count:
            reasons = "; ".join(response.rai_media_filtered_reasons or []) or "no reason given"
            raise ProviderSafetyBlocked(
                _clean(f"Google's safety filters blocked the generated video: {reasons}", self.config.api_key)
            )
        raise ProviderBadOutput("Google finished the operation without a video")

    def _save(self, video: types.Video, destination: Path, deadline: float) -> None:
        if video.video_bytes:
            destination.write_bytes(video.video_bytes)
            return
        if not video.uri:
            raise ProviderBadOutput("Google's answer names no video file")
        if self.config.vertexai:
            raise ProviderBadOutput(
                f"Google stored the video at {video.uri}, which kinema cannot read (it takes inline videos)"
            )
        from google.genai import types

        config = types.DownloadFileConfig(
            http_options=types.HttpOptions(timeout=_milliseconds(self.config.download_timeout_s))
        )
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            try:
                self._client.files.download(file=video, destination=str(destination), config=config)
                return
            except Exception as exc:
                error, transient = self._translate(exc, "download the video from Google")
                if not transient or attempt == DOWNLOAD_ATTEMPTS or time.monotonic() > deadline:
                    raise error from exc
                log.warning("veo: download attempt %d failed (%s); retrying", attempt, error.message)

    def _call(self, call: Callable[[], T], doing: str) -> T:
        try:
            return call()
        except Exception as exc:
            error, _ = self._translate(exc, doing)
            raise error from exc

    def _translate(self, exc: Exception, doing: str) -> tuple[ProviderError, bool]:
        """A clear kinema error for an SDK or network failure, and whether trying again may help."""
        from google.genai import errors

        timeouts, transport_errors = _network_errors()
        if isinstance(exc, errors.APIError):
            return http_error(exc.code, exc.status, exc.message, self.config.api_key)
        if isinstance(exc, timeouts):
            seconds = self.config.request_timeout_s
            return ProviderUnavailable(
                f"Google did not answer within {seconds:g} s (trying to {doing})"
            ), True
        if isinstance(exc, transport_errors):
            return ProviderUnavailable(f"could not reach Google to {doing}: {type(exc).__name__}"), True
        if isinstance(exc, (ValueError, KeyError, json.JSONDecodeError)):
            message = _clean(
                f"Google's answer could not be read (trying to {doing}): {exc}", self.config.api_key
            )
            return ProviderBadOutput(message), False
        raise exc


def _not_found(exc: Exception) -> str | None:
    """Google's message when it answered that what was asked about does not exist (404 / NOT_FOUND)."""
    from google.genai import errors

    if isinstance(exc, errors.APIError) and (exc.code == 404 or exc.status == "NOT_FOUND"):
        return exc.message or exc.status or "HTTP 404"
    return None


def _network_errors() -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    """Timeout and transport error classes of httpx and of httpx2, the fork the SDK uses when installed."""
    timeouts: list[type[Exception]] = []
    transport_errors: list[type[Exception]] = []
    for name in ("httpx", "httpx2"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        timeouts.append(module.TimeoutException)
        transport_errors.append(module.TransportError)
    return tuple(timeouts), tuple(transport_errors)


def http_error(
    code: int | None, status: str | None, message: str | None, secret: str
) -> tuple[ProviderError, bool]:
    """The error for an HTTP failure from Google, and whether trying again may help (5xx, 408, 429)."""
    status = status or ""
    text = _clean(message or status or f"HTTP {code}", secret)
    transient = code is None or code >= 500 or code in (408, 429)
    return _by_status(status, code, text), transient


def operation_error(error: dict[str, Any], secret: str) -> ProviderError:
    """The error for an operation that finished failed (a google.rpc.Status: numeric code and message)."""
    code = error.get("code")
    status = RPC_CODES.get(code, str(code)) if isinstance(code, int) else str(code or "")
    text = _clean(str(error.get("message") or status or "no reason given"), secret)
    if status in ("INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "UNKNOWN"):
        return ProviderUnavailable(f"Google failed to generate the video: {text}")
    return _by_status(status, None, text)


def _by_status(status: str, code: int | None, text: str) -> ProviderError:
    lowered = text.lower()
    if status in ("UNAUTHENTICATED", "PERMISSION_DENIED") or code in (401, 403) or "api key" in lowered:
        return ProviderAuthFailed(f"Google refused the API key: {text}")
    if status == "RESOURCE_EXHAUSTED" or code == 429:
        return ProviderQuotaExceeded(f"Google's quota for this key is used up: {text}")
    if any(word in lowered for word in SAFETY_WORDS):
        return ProviderSafetyBlocked(f"Google's safety filters blocked this request: {text}")
    if status in INVALID_STATUSES or code in (400, 404, 409, 412, 413):
        return ProviderInvalidArgument(f"Google refused the request: {text}")
    return ProviderUnavailable(f"Google failed: {text}")


def gemini_request_body(request: VeoRequest, image: bytes | None) -> dict[str, Any]:
    """The Gemini API's predictLongRunning body for Veo (the 2.x SDK's wire format: instances, parameters)."""
    import base64

    instance: dict[str, Any] = {"prompt": request.prompt}
    if image is not None:
        instance["image"] = {"bytesBase64Encoded": base64.b64encode(image).decode(), "mimeType": "image/jpeg"}
    parameters: dict[str, Any] = {
        "aspectRatio": request.aspect_ratio,
        "resolution": GOOGLE_RESOLUTIONS[request.resolution],
        "durationSeconds": request.duration_seconds,
    }
    if request.negative_prompt:
        parameters["negativePrompt"] = request.negative_prompt
    # No seed and no generateAudio: the Gemini API takes neither (the schema refuses a seed up front, and
    # audio it always makes is removed afterwards when not wanted).
    return {"instances": [instance], "parameters": parameters}


def first_frame_jpeg(image: Image.Image, width: int, height: int) -> bytes:
    """The reference image center-cropped to the output's shape (at most 1080p) as JPEG, as LTX-2 apps do."""
    scale = min(1.0, FIRST_FRAME_MAX_SIDE / max(width, height))
    size = (round(width * scale), round(height * scale))
    fitted = ImageOps.fit(image.convert("RGB"), size, method=Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    fitted.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _clean(text: str, secret: str) -> str:
    """One line, bounded, and never the key (Google's messages should not contain it; make sure)."""
    if secret:
        text = text.replace(secret, "[redacted]")
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))

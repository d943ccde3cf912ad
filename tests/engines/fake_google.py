"""A local fake of Google's Veo endpoints, speaking the wire format the google-genai SDK sends and reads.

It serves both APIs a key can be for, on a loopback port (point KINEMA_GOOGLE_BASE_URL at `url`):

- the Gemini API: `POST /v1beta/models/{model}:predictLongRunning` answers an operation name,
  `GET /v1beta/{operation name}` reports it (`response.generateVideoResponse.generatedSamples[].video.uri`),
  and `GET /v1beta/files/{id}:download?alt=media` redirects to the bytes, as Google's file service does;
- Vertex AI (express mode, API key): `POST /v1beta1/publishers/google/models/{model}:predictLongRunning`,
  then `POST /v1beta1/{model resource}:fetchPredictOperation` with the video inline (`bytesBase64Encoded`).

Requests are checked the way Google documents them (key in the `x-goog-api-key` header, 16:9 or 9:16, 4/6/8
seconds, 1080p and 4k only at 8, no seed or generateAudio on the Gemini API) and refused with Google's JSON
error body otherwise. `behaviour` holds per-test knobs: errors, safety filtering, slow or endless operations
and the kind of file to return (wrong size, another codec, no faststart, audio or not).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import av
import numpy as np
from PIL import Image

API_KEY = "AIzaSyFAKE-kinema-test-key-0123456789abc"
GEMINI_MODELS = ("veo-3.1-fast-generate-preview", "veo-3.1-generate-preview")
VERTEX_MODELS = ("veo-3.1-fast-generate-001", "veo-3.1-generate-001")
VERTEX_PROJECT = "projects/kinema-fake/locations/us-central1"
SIZES = {"720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}
GEMINI_PARAMETERS = {"aspectRatio", "resolution", "durationSeconds", "negativePrompt", "personGeneration",
                     "sampleCount", "enhancePrompt"}  # fmt: skip
VERTEX_PARAMETERS = GEMINI_PARAMETERS | {"seed", "generateAudio", "storageUri", "resizeMode", "fps"}


@dataclass(frozen=True)
class VideoSpec:
    """The file the fake hands back: size, length, codec, audio and atom order."""

    width: int
    height: int
    seconds: float
    audio: bool
    codec: str = "libx264"
    faststart: bool = True
    fps: int = 24


@dataclass
class Behaviour:
    """Per-test knobs; the defaults act like a healthy Google that finishes after two polls."""

    polls_before_done: int = 2
    submit_error: tuple[int, str, str] | None = None  # (HTTP status, google status, message)
    poll_errors: list[int] = field(default_factory=list)  # HTTP statuses for the next polls, then normal
    poll_delay_s: float = 0.0
    operation_error: dict[str, Any] | None = None  # a google.rpc.Status for a failed operation
    rai_reasons: list[str] | None = None  # finish with the video filtered out by safety
    never_done: bool = False
    video: VideoSpec | None = None  # override the file; None: what was asked (audio as the API does it)


@dataclass
class Operation:
    name: str
    api: str
    model: str
    body: dict[str, Any]
    polls: int = 0
    file_id: str = ""


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    at: float


class FakeGoogle:
    """The fake server; start() binds 127.0.0.1 on a free port, stop() shuts it down."""

    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.requests: list[Recorded] = []
        self.operations: dict[str, Operation] = {}
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.handle(self, "GET")

            def do_POST(self) -> None:
                fake.handle(self, "POST")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FakeGoogle:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.behaviour = Behaviour()
            self.requests.clear()
            self.operations.clear()

    # What the tests look at --------------------------------------------------------------------------

    def submits(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith(":predictLongRunning")]

    def polls(self) -> list[Recorded]:
        return [
            r for r in self.requests if "/operations/" in r.path or r.path.endswith(":fetchPredictOperation")
        ]

    # Dispatch ----------------------------------------------------------------------------------------

    def handle(self, http: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(http.path)
        length = int(http.headers.get("content-length") or 0)
        raw = http.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        with self.lock:
            self.requests.append(
                Recorded(method, parts.path, parts.query, dict(http.headers.items()), body, time.monotonic())
            )
        if parts.path.startswith("/storage/"):  # where the file service's redirect points; signed, no key
            self.send_video(http, parts.path.rsplit("/", 1)[1])
            return
        if "key=" in parts.query or http.headers.get("x-goog-api-key") != API_KEY:
            message = "API key not valid. Please pass a valid API key."
            self.send_error_json(http, 400, "INVALID_ARGUMENT", message, reason="API_KEY_INVALID")
            return
        routes = [
            ("POST", r"/v1beta/models/(?P<model>[^/:]+):predictLongRunning", self.gemini_submit),
            ("GET", r"/v1beta/(?P<name>models/[^/]+/operations/[^/]+)", self.gemini_poll),
            ("GET", r"/v1beta/files/(?P<file>[a-z0-9]+):download", self.gemini_download),
            ("POST", r"/v1beta1/publishers/google/models/(?P<model>[^/:]+):predictLongRunning",
             self.vertex_submit),
            ("POST", r"/v1beta1/(?P<resource>.+/models/[^/:]+):fetchPredictOperation", self.vertex_poll),
        ]  # fmt: skip
        for verb, pattern, handler in routes:
            match = re.fullmatch(pattern, parts.path)
            if verb == method and match:
                handler(http, body, **match.groupdict())
                return
        self.send_error_json(http, 404, "NOT_FOUND", f"no route {method} {parts.path}")

    def accept(
        self,
        http: BaseHTTPRequestHandler,
        body: Any,
        allowed: set[str],
        *,
        api: str,
        model: str,
        name: str,
    ) -> None:
        """Check a submitted request as Google does, then start the operation (or fail as scripted)."""
        problem = self.check_request(body, allowed, api=api)
        if problem is None and self.behaviour.submit_error is not None:
            code, status, message = self.behaviour.submit_error
            self.send_error_json(http, code, status, message)
            return
        if problem is not None:
            self.send_error_json(http, 400, "INVALID_ARGUMENT", problem)
            return
        self.operations[name] = Operation(name=name, api=api, model=model, body=body)
        self.send_json(http, 200, {"name": name})

    # The Gemini API ----------------------------------------------------------------------------------

    def gemini_submit(self, http: BaseHTTPRequestHandler, body: Any, model: str) -> None:
        if model not in GEMINI_MODELS:
            self.send_error_json(
                http, 404, "NOT_FOUND", f"models/{model} is not found for API version v1beta"
            )
            return
        name = f"models/{model}/operations/{uuid.uuid4().hex[:12]}"
        self.accept(http, body, GEMINI_PARAMETERS, api="gemini", model=model, name=name)

    def gemini_poll(self, http: BaseHTTPRequestHandler, body: Any, name: str) -> None:
        operation = self.operations.get(name)
        if operation is None:
            self.send_error_json(http, 404, "NOT_FOUND", f"Operation {name} not found")
            return
        if self.poll_interrupted(http, operation):
            return
        if not self.finished(operation):
            self.send_json(http, 200, {"name": name})  # Google leaves `done` out while running
            return
        answer: dict[str, Any] = {"name": name, "done": True}
        if self.behaviour.operation_error is not None:
            answer["error"] = self.behaviour.operation_error
        elif self.behaviour.rai_reasons is not None:
            answer["response"] = {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse",
                "generateVideoResponse": {
                    "raiMediaFilteredCount": 1,
                    "raiMediaFilteredReasons": self.behaviour.rai_reasons,
                },
            }
        else:
            operation.file_id = operation.file_id or uuid.uuid4().hex[:16]
            # The real URI points at Google; the SDK downloads it through its own base URL, so this works.
            uri = f"https://generativelanguage.googleapis.com/v1beta/files/{operation.file_id}:download?alt=media"
            answer["response"] = {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse",
                "generateVideoResponse": {"generatedSamples": [{"video": {"uri": uri}}]},
            }
        self.send_json(http, 200, answer)

    def gemini_download(self, http: BaseHTTPRequestHandler, body: Any, file: str) -> None:
        if not any(op.file_id == file for op in self.operations.values()):
            self.send_error_json(http, 404, "NOT_FOUND", f"File {file} not found")
            return
        http.send_response(302)
        http.send_header("Location", f"{self.url}/storage/{file}")
        http.send_header("Content-Length", "0")
        http.end_headers()

    def send_video(self, http: BaseHTTPRequestHandler, file: str) -> None:
        operation = next((op for op in self.operations.values() if op.file_id == file), None)
        if operation is None:
            self.send_error_json(http, 404, "NOT_FOUND", "no such object")
            return
        data = self.video_bytes(operation)
        http.send_response(200)
        http.send_header("Content-Type", "video/mp4")
        http.send_header("Content-Length", str(len(data)))
        http.end_headers()
        http.wfile.write(data)

    # Vertex AI (express mode) ------------------------------------------------------------------------

    def vertex_submit(self, http: BaseHTTPRequestHandler, body: Any, model: str) -> None:
        if model not in VERTEX_MODELS:
            self.send_error_json(
                http, 404, "NOT_FOUND", f"Publisher Model `publishers/google/models/{model}` was not found"
            )
            return
        name = f"{VERTEX_PROJECT}/publishers/google/models/{model}/operations/{uuid.uuid4()}"
        self.accept(http, body, VERTEX_PARAMETERS, api="vertex", model=model, name=name)

    def vertex_poll(self, http: BaseHTTPRequestHandler, body: Any, resource: str) -> None:
        name = (body or {}).get("operationName", "")
        operation = self.operations.get(name)
        if operation is None or not name.startswith(resource + "/operations/"):
            self.send_error_json(http, 404, "NOT_FOUND", f"Operation {name} not found")
            return
        if self.poll_interrupted(http, operation):
            return
        if not self.finished(operation):
            self.send_json(http, 200, {"name": name})
            return
        answer: dict[str, Any] = {"name": name, "done": True}
        kind = "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse"
        if self.behaviour.operation_error is not None:
            answer["error"] = self.behaviour.operation_error
        elif self.behaviour.rai_reasons is not None:
            answer["response"] = {
                "@type": kind,
                "raiMediaFilteredCount": 1,
                "raiMediaFilteredReasons": self.behaviour.rai_reasons,
            }
        else:
            encoded = base64.b64encode(self.video_bytes(operation)).decode()
            answer["response"] = {
                "@type": kind,
                "raiMediaFilteredCount": 0,
                "videos": [{"bytesBase64Encoded": encoded, "mimeType": "video/mp4"}],
            }
        self.send_json(http, 200, answer)

    # Shared behaviour --------------------------------------------------------------------------------

    def check_request(self, body: Any, allowed: set[str], *, api: str) -> str | None:
        """Google's documented limits for Veo 3.1; a message like Google's for the first one broken."""
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("instances"), list)
            or len(body["instances"]) != 1
        ):
            return "Invalid JSON payload: exactly one instance is required."
        instance, parameters = body["instances"][0], body.get("parameters") or {}
        if not isinstance(instance.get("prompt"), str) or not instance["prompt"]:
            return "A text prompt is required."
        if set(instance) - {"prompt", "image", "lastFrame", "referenceImages", "video"}:
            return f"Invalid JSON payload received. Unknown name in instances[0]: {sorted(set(instance))}"
        if "image" in instance:
            image = instance["image"]
            if set(image) != {"bytesBase64Encoded", "mimeType"}:
                return "image must carry bytesBase64Encoded and mimeType"
            Image.open(io.BytesIO(base64.b64decode(image["bytesBase64Encoded"]))).verify()
        unknown = set(parameters) - allowed
        if unknown:
            name = sorted(unknown)[0]
            return f"`{name}` isn't supported by this model. Please remove it or refer to the Gemini API documentation for supported usage."  # noqa: E501
        if parameters.get("aspectRatio", "16:9") not in ("16:9", "9:16"):
            return "Aspect ratio must be 16:9 or 9:16."
        resolution = parameters.get("resolution", "720p")
        if resolution not in SIZES:
            return f"Unsupported resolution: {resolution}."
        duration = int(parameters.get("durationSeconds", 8))
        if duration not in (4, 6, 8):
            return "The duration must be 4, 6 or 8 seconds."
        if resolution in ("1080p", "4k") and duration != 8:
            return f"{resolution} requires a duration of 8 seconds."
        if api == "vertex" and "generateAudio" not in parameters:
            return "generateAudio is required for Veo 3 models."
        return None

    def poll_interrupted(self, http: BaseHTTPRequestHandler, operation: Operation) -> bool:
        if self.behaviour.poll_delay_s:
            time.sleep(self.behaviour.poll_delay_s)
        with self.lock:
            operation.polls += 1
            status = self.behaviour.poll_errors.pop(0) if self.behaviour.poll_errors else None
        if status is not None:
            self.send_error_json(http, status, "UNAVAILABLE", "The service is currently unavailable.")
            return True
        return False

    def finished(self, operation: Operation) -> bool:
        return not self.behaviour.never_done and operation.polls >= self.behaviour.polls_before_done

    def video_bytes(self, operation: Operation) -> bytes:
        spec = self.behaviour.video
        if spec is None:
            parameters = operation.body.get("parameters") or {}
            width, height = SIZES[parameters.get("resolution", "720p")]
            if parameters.get("aspectRatio") == "9:16":
                width, height = height, width
            # The Gemini API always generates audio with Veo 3; Vertex AI does when asked.
            audio = operation.api == "gemini" or bool(parameters.get("generateAudio"))
            spec = VideoSpec(width, height, float(parameters.get("durationSeconds", 8)), audio)
        return make_mp4(spec)

    # Wire helpers ------------------------------------------------------------------------------------

    def send_json(self, http: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        http.send_response(status)
        http.send_header("Content-Type", "application/json; charset=UTF-8")
        http.send_header("Content-Length", str(len(data)))
        http.end_headers()
        http.wfile.write(data)

    def send_error_json(
        self, http: BaseHTTPRequestHandler, code: int, status: str, message: str, reason: str | None = None
    ) -> None:
        error: dict[str, Any] = {"code": code, "message": message, "status": status}
        if reason is not None:
            error["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": reason,
                    "domain": "googleapis.com",
                }
            ]
        self.send_json(http, code, {"error": error})


@lru_cache(maxsize=32)
def make_mp4(spec: VideoSpec) -> bytes:
    """A small real MP4 (moving gray levels, a sine tone) as described; cached, since encoding takes time."""
    fd, name = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        options = {"movflags": "+faststart"} if spec.faststart else {}
        with av.open(name, mode="w", format="mp4", options=options) as container:
            video = container.add_stream(spec.codec, rate=spec.fps)
            video.width, video.height, video.pix_fmt = spec.width, spec.height, "yuv420p"
            if spec.codec == "libx264":
                video.options = {"preset": "ultrafast", "crf": "30", "profile": "high",
                                 "x264-params": "cabac=1:8x8dct=1"}  # fmt: skip
            audio = container.add_stream("aac", rate=48000, layout="stereo") if spec.audio else None
            frames = round(spec.seconds * spec.fps)
            planes = np.full((spec.height * 3 // 2, spec.width), 128, dtype=np.uint8)
            for index in range(frames):
                planes[: spec.height] = 16 + (index * 7) % 200
                frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
                frame.pts = index
                container.mux(video.encode(frame))
            container.mux(video.encode(None))
            if audio is not None:
                rate, total = 48000, round(spec.seconds * 48000)
                tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(total) / rate)).astype(np.float32)
                stereo = np.stack([tone, tone])
                for start in range(0, total, 1024):
                    chunk = av.AudioFrame.from_ndarray(
                        np.ascontiguousarray(stereo[:, start : start + 1024]), format="fltp", layout="stereo"
                    )
                    chunk.sample_rate, chunk.pts = rate, start
                    container.mux(audio.encode(chunk))
                container.mux(audio.encode(None))
        with open(name, "rb") as handle:
            return handle.read()
    finally:
        os.unlink(name)

"""All configuration, read once from KINEMA_* environment variables and a .env file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """kinema's settings; every field is overridable as KINEMA_<FIELD> (nested: KINEMA_A__B)."""

    model_config = SettingsConfigDict(
        env_prefix="KINEMA_",
        env_file=".env",
        env_nested_delimiter="__",
        extra="ignore",
        populate_by_name=True,  # Settings(google_api_key=...) works for fields that also read other env names
    )

    data_dir: Path = Field(
        default=Path("kinema-data"),
        description="Where outputs, uploads and the tiny model live (relative to the working directory).",
    )

    # Models
    device: Literal["auto", "cuda", "cpu", "mps"] = Field(
        default="auto", description="Where models run: auto picks CUDA when present, else CPU."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="Weights/compute dtype: auto is bfloat16 on CUDA, float32 on CPU."
    )
    model_paths: dict[str, str] = Field(
        default_factory=dict,
        description="Per-app weights, a Hugging Face model id or a local directory, e.g. "
        '{"lightricks/ltx-2-fast": "/models/ltx2"}.',
    )
    hf_cache_dir: Path | None = Field(
        default=None,
        description="Hugging Face cache directory (default: the hub's own, e.g. ~/.cache/huggingface).",
    )
    allow_download: bool = Field(
        default=False,
        description="Let `app run` download missing weights from the Hugging Face Hub (with progress).",
    )
    offload: Literal["none", "model", "sequential"] = Field(
        default="none", description="CPU offload for GPUs too small to hold the whole model."
    )
    fp8: bool = Field(
        default=False, description="Store transformer weights in FP8 (CUDA with compute capability >= 8.9)."
    )
    compile: bool = Field(default=False, description="torch.compile the transformer blocks (CUDA only).")
    vae_tiling: bool = Field(
        default=True, description="Decode video in tiles above 1 megapixel to bound VAE memory."
    )
    max_memory_gb: float | None = Field(
        default=None, description="Cap on the memory kinema may assume the device has (for shared GPUs)."
    )
    warm_models: int = Field(default=1, ge=1, description="How many models a process keeps loaded.")

    # Encoding
    video_crf: int = Field(default=18, ge=0, le=51, description="x264 constant rate factor.")
    video_preset: str = Field(default="veryfast", description="x264 preset.")
    hardware_encoder: bool = Field(
        default=True, description="Use NVENC (h264_nvenc) when FFmpeg and the GPU offer it."
    )
    audio_sample_rate: int = Field(default=48000, description="AAC sample rate in the MP4.")
    audio_bitrate: int = Field(default=192_000, description="AAC bit rate (bits/s).")

    # Image input
    image_max_bytes: int = Field(default=20 * 1024 * 1024, description="Largest reference image accepted.")
    image_max_pixels: int = Field(default=40_000_000, description="Largest decoded image (width*height).")
    image_fetch_timeout_s: float = Field(
        default=15.0, description="Total time allowed to fetch an image URL."
    )
    image_allow_private_urls: bool = Field(
        default=False, description="Allow image URLs on loopback/private networks (for tests only)."
    )

    storage_backend: Literal["local", "s3"] = Field(
        default="local",
        validation_alias=AliasChoices("KINEMA_STORAGE", "KINEMA_STORAGE_BACKEND"),
        description="Where outputs and uploads are stored: a local directory, or an S3-compatible bucket "
        "(AWS S3, MinIO, R2; needs `pip install kinema[s3]`) that several servers and workers share.",
    )
    storage_dir: Path | None = Field(
        default=None, description="Local storage for outputs and uploads (default: <data_dir>/outputs)."
    )
    staging_dir: Path | None = Field(
        default=None,
        description="Local directory for files being written before S3 storage takes them (default: "
        "<data_dir>/staging). Local storage always stages in <storage_dir>/.staging, so storing is a rename.",
    )
    s3_bucket: str | None = Field(default=None, description="The bucket (required with KINEMA_STORAGE=s3).")
    s3_prefix: str = Field(
        default="", description='Key prefix inside the bucket, e.g. "kinema/" (several installs, one bucket).'
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="The S3 API endpoint of an S3-compatible store (MinIO, R2, ...); default: AWS's own. "
        "Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID, profiles, instance roles).",
    )
    s3_region: str | None = Field(
        default=None, description="The bucket's region (default: boto3's, e.g. AWS_REGION or the profile's)."
    )
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto",
        description="How URLs name the bucket: path (endpoint/bucket/key, MinIO's default), virtual "
        "(bucket.endpoint/key), or auto (boto3 decides).",
    )
    s3_multipart_threshold_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=5 * 1024 * 1024,
        description="Files at least this large are uploaded in parts (an interrupted upload is aborted, so "
        "no partial object is ever visible).",
    )
    s3_multipart_part_bytes: int = Field(
        default=16 * 1024 * 1024, ge=5 * 1024 * 1024, description="Size of each part of a multipart upload."
    )
    staging_grace_s: float = Field(
        default=3600.0,
        ge=0,
        description="At start, staging files (partial outputs) untouched for this long are removed as a "
        "crash's leftovers; files of this host's exited processes go at once.",
    )

    # Server (`kinema serve`)
    host: str = Field(default="127.0.0.1", description="Address `kinema serve` listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port `kinema serve` listens on.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the task store, e.g. postgresql+psycopg://user:pw@host/kinema "
        "(default: a SQLite file in the data directory).",
    )
    public_url: str | None = Field(
        default=None,
        description="Base URL clients reach this server at, for signed links (default: the request's own).",
    )
    admin_key: SecretStr | None = Field(
        default=None,
        description="Bootstrap admin API key (default: generated on first start and printed once).",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Secret for signing file URLs and hashing keys (default: generated into the data dir).",
    )
    run_wait_s: float = Field(
        default=60.0, ge=0, description="How long POST .../run waits for the result before answering 202."
    )
    signed_url_ttl_s: int = Field(default=3600, ge=1, description="Lifetime of signed file URLs (seconds).")
    upload_max_bytes: int = Field(default=20 * 1024 * 1024, description="Largest file POST /v1/files takes.")
    request_max_bytes: int = Field(
        default=32 * 1024 * 1024, description="Largest JSON request body (inline data: images included)."
    )
    workers: int = Field(
        default=1,
        ge=0,
        description="Worker threads `kinema serve` runs for local models (0: API only). Worker i runs on GPU "
        "i with its own warm models (on a machine without CUDA, on the CPU).",
    )
    gpus: Annotated[list[int], NoDecode] = Field(
        default_factory=list,
        description='GPU indices, one local worker each, e.g. "0,1" (overrides workers).',
    )
    task_max_attempts: int = Field(
        default=2, ge=1, description="Times a task is started before a crash mid-task marks it failed."
    )

    # The queue and its workers (`kinema worker`)
    queue: Literal["auto", "store", "procrastinate"] = Field(
        default="auto",
        description="How queued tasks reach workers: auto is procrastinate (PostgreSQL job rows, "
        "LISTEN/NOTIFY wake-ups) on PostgreSQL and the task table itself (in-process wake-ups) on SQLite. "
        "Every process on one database must use the same queue.",
    )
    lease_s: float = Field(
        default=30.0,
        gt=0,
        description="A running task whose worker has not heartbeated for this long is taken back: requeued "
        "for another worker, or failed as worker_lost after task_max_attempts.",
    )
    worker_grace_s: float = Field(
        default=60.0,
        ge=0,
        description="After SIGTERM, how long `kinema worker` lets its running task finish before it hands "
        "the task back to the queue.",
    )
    worker_apps: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description='Apps `kinema worker` serves, e.g. "kinema/tiny,lightricks/ltx-2-fast" (default: every '
        "app this machine can run).",
    )

    # Accounts, billing, limits, webhooks
    billing_enabled: bool = Field(
        default=False,
        description="Hold the most a run can cost at submit and refuse it (402) without the balance; "
        "off for a private install (usage is recorded either way).",
    )
    rate_limit: str | None = Field(
        default=None, description='Requests per API key, e.g. "120/minute" (429 with Retry-After beyond).'
    )
    max_running_per_account: int | None = Field(
        default=None, ge=1, description="Tasks one account may have running at once (others wait queued)."
    )
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=1, description="How long an Idempotency-Key lasts.")
    webhook_allow_private: bool = Field(
        default=False, description="Allow webhook URLs on loopback/private networks (tests, trusted LANs)."
    )
    webhook_retry_delays_s: list[float] = Field(
        default=[5, 300, 1800, 7200, 18000, 36000, 36000],
        description="Waits between webhook attempts (the default retries for about 27 hours).",
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="Time a webhook receiver has to answer.")
    webhook_poll_s: float = Field(
        default=0.5, gt=0, description="How often the sender looks for due webhooks."
    )

    # Remote apps (google/veo-3-1-fast, google/veo-3-1): the provider runs the model with your key
    remote_workers: int = Field(
        default=4,
        ge=0,
        description="Worker threads `kinema serve` runs for provider apps (no GPU; several wait at once).",
    )
    google_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("KINEMA_GOOGLE_API_KEY", "GOOGLE_API_KEY", "GEMINI_API_KEY"),
        description="Your Google API key for the Veo apps (also read from the SDK's GOOGLE_API_KEY or "
        "GEMINI_API_KEY); never logged or stored with tasks.",
    )
    google_vertexai: bool = Field(
        default=False,
        validation_alias=AliasChoices("KINEMA_GOOGLE_VERTEXAI", "GOOGLE_GENAI_USE_VERTEXAI"),
        description="The key is a Vertex AI (express mode) key: call Vertex AI instead of the Gemini API.",
    )
    google_base_url: str | None = Field(
        default=None, description="Send Google API calls here instead of Google's endpoint (a proxy, a fake)."
    )
    google_models: dict[str, str] = Field(
        default_factory=dict,
        description='Google model id per app, e.g. {"google/veo-3-1-fast": "veo-3.1-fast-generate-001"}.',
    )
    google_request_timeout_s: float = Field(
        default=60.0, gt=0, description="How long one HTTP call to Google may take (submit, poll)."
    )
    google_download_timeout_s: float = Field(
        default=300.0, gt=0, description="How long downloading a finished video from Google may take."
    )
    google_poll_initial_s: float = Field(
        default=5.0, gt=0, description="First wait before asking Google whether a video is ready."
    )
    google_poll_max_s: float = Field(
        default=20.0, gt=0, description="Longest wait between polls (the wait grows 1.5x per poll)."
    )
    google_deadline_s: float = Field(
        default=900.0, gt=0, description="Total time a Veo run may take before it fails as provider_timeout."
    )

    # Client (`kinema app run --remote`, `kinema task ...`, kinema.Client)
    api_url: str | None = Field(
        default=None, description="A kinema server to send CLI work to instead of running in-process."
    )
    api_key: SecretStr | None = Field(default=None, description="API key for api_url.")

    @property
    def database(self) -> str:
        """The task store's SQLAlchemy URL."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'kinema.db').resolve()}"

    @property
    def outputs_dir(self) -> Path:
        """Where outputs and uploads are stored."""
        return self.storage_dir or self.data_dir / "outputs"

    @property
    def s3_staging_dir(self) -> Path:
        """Where S3 storage stages files before uploading them."""
        return self.staging_dir or self.data_dir / "staging"

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpu_list(cls, value: Any) -> Any:
        """KINEMA_GPUS=0,1 (or a list): GPU indices, distinct."""
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list) and len(set(map(str, value))) != len(value):
            raise ValueError("each GPU may be listed once")
        return value

    @field_validator("worker_apps", mode="before")
    @classmethod
    def _app_list(cls, value: Any) -> Any:
        """KINEMA_WORKER_APPS=a/b,c/d (or a list)."""
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def uses_procrastinate(self) -> bool:
        """Whether queued tasks go through procrastinate's jobs (PostgreSQL) rather than the task table."""
        if self.queue == "auto":
            return self.database.startswith("postgresql")
        return self.queue == "procrastinate"

    @property
    def local_workers(self) -> int:
        """How many local-model workers run: one per listed GPU, else `workers`."""
        return len(self.gpus) if self.gpus else self.workers

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

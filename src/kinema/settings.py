"""All configuration, read once from KINEMA_* environment variables and a .env file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """kinema's settings; every field is overridable as KINEMA_<FIELD> (nested: KINEMA_A__B)."""

    model_config = SettingsConfigDict(
        env_prefix="KINEMA_", env_file=".env", env_nested_delimiter="__", extra="ignore"
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

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"


def get_settings() -> Settings:
    """A fresh Settings from the current environment."""
    return Settings()

"""Reading back what an MP4 really contains, so output metadata is never echoed from the input."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av


@dataclass(frozen=True)
class VideoInfo:
    """Facts read from a media file's streams."""

    width: int
    height: int
    fps: float
    frames: int
    duration: float
    video_codec: str
    profile: str | None
    pix_fmt: str | None
    has_audio: bool
    audio_codec: str | None
    audio_channels: int | None
    audio_sample_rate: int | None
    audio_duration: float | None
    size_bytes: int


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def probe_video(path: Path) -> VideoInfo:
    """Stream facts of an MP4 (or any container PyAV reads)."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        rate = video.average_rate or video.guessed_rate or Fraction(0)
        frames = video.frames
        if not frames:  # containers without a frame count: count packets
            frames = sum(1 for packet in container.demux(video) if packet.size)
        duration = _seconds(video.duration, video.time_base)
        if duration is None:
            duration = frames / float(rate) if rate else 0.0
        audio = container.streams.audio[0] if container.streams.audio else None
        return VideoInfo(
            width=video.codec_context.width,
            height=video.codec_context.height,
            fps=float(rate),
            frames=int(frames),
            duration=duration,
            video_codec=video.codec_context.name,
            profile=video.codec_context.profile,
            pix_fmt=video.codec_context.pix_fmt,
            has_audio=audio is not None,
            audio_codec=audio.codec_context.name if audio else None,
            audio_channels=audio.codec_context.channels if audio else None,
            audio_sample_rate=audio.codec_context.sample_rate if audio else None,
            audio_duration=_seconds(audio.duration, audio.time_base) if audio else None,
            size_bytes=path.stat().st_size,
        )

"""Writing MP4: H.264 (High, yuv420p, BT.709) video and AAC-LC stereo audio via PyAV, faststart."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

BT709 = 1  # AVCOL_PRI_BT709 / AVCOL_TRC_BT709 / AVCOL_SPC_BT709


@dataclass(frozen=True)
class EncodeOptions:
    """Encoder choices; defaults favour speed at visually lossless quality."""

    crf: int = 18
    preset: str = "veryfast"
    hardware: bool = False  # try NVENC first when True
    audio_sample_rate: int = 48000
    audio_bitrate: int = 192_000


def nvenc_available() -> bool:
    """Whether this FFmpeg build can open an NVENC H.264 encoder (needs an NVIDIA driver)."""
    if "h264_nvenc" not in av.codecs_available:
        return False
    try:
        ctx = av.CodecContext.create("h264_nvenc", "w")
        ctx.width, ctx.height, ctx.pix_fmt = 256, 256, "yuv420p"
        ctx.time_base = Fraction(1, 24)
        ctx.open()
    except Exception:  # no driver / no device: FFmpeg raises various errors
        return False
    return True


def _add_video_stream(
    container: av.container.OutputContainer, width: int, height: int, fps: int, options: EncodeOptions
) -> av.VideoStream:
    if options.hardware and nvenc_available():
        stream = container.add_stream("h264_nvenc", rate=fps)
        stream.options = {"preset": "p4", "rc": "vbr", "cq": str(options.crf + 1), "profile": "high"}
    else:
        stream = container.add_stream("libx264", rate=fps)
        # The contract is High profile: keep CABAC and 8x8 transforms even on presets that drop them.
        stream.options = {
            "crf": str(options.crf),
            "preset": options.preset,
            "profile": "high",
            "x264-params": "cabac=1:8x8dct=1",
        }
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    ctx = stream.codec_context
    ctx.color_primaries = ctx.color_trc = ctx.colorspace = BT709
    return stream


def encode_mp4(
    path: Path,
    frames: Iterable[np.ndarray],
    *,
    width: int,
    height: int,
    fps: int,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    options: EncodeOptions | None = None,
) -> int:
    """Encode uint8 RGB frame chunks (and optional float audio) into an MP4; returns frames written."""
    options = options or EncodeOptions()
    written = 0
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        video_stream = _add_video_stream(container, width, height, fps, options)
        audio_frames: list[av.AudioFrame] = []
        audio_stream = None
        if audio is not None:
            audio_stream = container.add_stream("aac", rate=options.audio_sample_rate, layout="stereo")
            audio_stream.bit_rate = options.audio_bitrate
            audio_frames = _resampled_audio(
                audio, sample_rate or options.audio_sample_rate, audio_stream.rate
            )
        audio_at = 0
        for chunk in frames:
            for rgb in chunk:
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame = frame.reformat(format="yuv420p", dst_colorspace="ITU709")
                frame.pts = written
                container.mux(video_stream.encode(frame))
                written += 1
                # Interleave: audio up to the video written so far, so players need not seek to the end.
                until = written / fps * options.audio_sample_rate
                while audio_at < len(audio_frames) and (audio_frames[audio_at].pts or 0) < until:
                    container.mux(audio_stream.encode(audio_frames[audio_at]))  # type: ignore[union-attr]
                    audio_at += 1
        container.mux(video_stream.encode(None))
        if audio_stream is not None:
            for audio_frame in audio_frames[audio_at:]:
                container.mux(audio_stream.encode(audio_frame))
            container.mux(audio_stream.encode(None))
    return written


def _resampled_audio(audio: np.ndarray, sample_rate: int, rate: int) -> list[av.AudioFrame]:
    """A (channels, n) float waveform as 1024-sample stereo frames at the AAC stream's rate."""
    planar = np.ascontiguousarray(_to_stereo(audio).astype(np.float32))
    source = av.AudioFrame.from_ndarray(planar, format="fltp", layout="stereo")
    source.sample_rate = sample_rate
    source.pts = 0
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate, frame_size=1024)
    frames = [*resampler.resample(source), *resampler.resample(None)]
    position = 0
    for frame in frames:
        frame.pts = position
        position += frame.samples
    return frames


def _to_stereo(audio: np.ndarray) -> np.ndarray:
    if audio.ndim == 1:
        audio = audio[None, :]
    if audio.shape[0] == 1:
        return np.repeat(audio, 2, axis=0)
    return audio[:2]

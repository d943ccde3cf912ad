"""Bringing someone else's MP4 onto kinema's output contract: keep it, remux it, or transcode it.

A provider's file is kept byte for byte when it already is the contract (H.264 High yuv420p at the exact
size, AAC stereo iff audio was asked for, moov atom first). A file that only carries an unwanted audio
track or lacks faststart is remuxed without re-encoding; anything else is decoded, fitted to the exact size
(scale to cover, center-crop), trimmed to the asked duration and encoded like every kinema output.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import numpy as np

from kinema.media.encode import EncodeOptions, encode_mp4
from kinema.media.probe import VideoInfo, probe_video

Conformed = Literal["kept", "remuxed", "transcoded"]


@dataclass(frozen=True)
class ContractTarget:
    """What the delivered file must be: exact size, duration (to one frame), and audio or not."""

    width: int
    height: int
    duration: float
    audio: bool


class UnusableVideo(ValueError):
    """The file cannot be brought onto the contract (unreadable, or no audio when audio was asked for)."""


def conform_mp4(source: Path, target: Path, want: ContractTarget, options: EncodeOptions) -> Conformed:
    """Write the contract's MP4 at target from source (which may be moved); says what it had to do."""
    try:
        info = probe_video(source)
    except (av.error.FFmpegError, IndexError) as exc:
        raise UnusableVideo(f"the video file cannot be read: {exc}") from exc
    if want.audio and not info.has_audio:
        raise UnusableVideo("the video has no audio track, but audio was asked for")
    if not _video_is_contract(info, want):
        transcode(source, target, want, info, options)
        return "transcoded"
    if want.audio and not (info.audio_codec == "aac" and info.audio_channels == 2):
        transcode(source, target, want, info, options)
        return "transcoded"
    if info.has_audio == want.audio and is_faststart(source):
        os.replace(source, target)
        return "kept"
    remux(source, target, keep_audio=want.audio)
    return "remuxed"


def _video_is_contract(info: VideoInfo, want: ContractTarget) -> bool:
    wanted_frames = round(want.duration * info.fps) if info.fps else 0
    return (
        info.video_codec == "h264"
        and info.profile == "High"
        and info.pix_fmt == "yuv420p"
        and (info.width, info.height) == (want.width, want.height)
        and info.frames <= wanted_frames + 1  # longer than asked: trim (shorter is delivered as it is)
    )


def is_faststart(path: Path) -> bool:
    """Whether the MP4's moov atom comes before its media data (players can start before the end)."""
    with open(path, "rb") as handle:
        while True:
            header = handle.read(8)
            if len(header) < 8:
                return False
            size, kind = struct.unpack(">I4s", header)
            if kind == b"moov":
                return True
            if kind == b"mdat":
                return False
            if size == 1:  # 64-bit size follows the header
                extended = handle.read(8)
                if len(extended) < 8:
                    return False
                skip = struct.unpack(">Q", extended)[0] - 16
            elif size == 0:  # the box runs to the end of the file
                return False
            else:
                skip = size - 8
            if skip < 0:
                return False
            handle.seek(skip, os.SEEK_CUR)


def remux(source: Path, target: Path, *, keep_audio: bool) -> None:
    """Copy the video (and audio, if kept) packets into a faststart MP4 without re-encoding."""
    with (
        av.open(str(source)) as reader,
        av.open(str(target), mode="w", format="mp4", options={"movflags": "+faststart"}) as writer,
    ):
        streams: list[av.stream.Stream] = [reader.streams.video[0]]
        if keep_audio and reader.streams.audio:
            streams.append(reader.streams.audio[0])
        outputs = {stream.index: writer.add_stream_from_template(stream) for stream in streams}
        for packet in reader.demux(streams):
            if packet.dts is None:  # the demuxer's end-of-stream marker
                continue
            packet.stream = outputs[packet.stream.index]
            writer.mux(packet)


def transcode(
    source: Path, target: Path, want: ContractTarget, info: VideoInfo, options: EncodeOptions
) -> None:
    """Decode, fit to the exact size, trim to the duration and encode as kinema encodes its own output."""
    fps = round(info.fps) or 24
    frames = min(info.frames, round(want.duration * fps))
    audio, sample_rate = (None, None)
    if want.audio:
        decoded, sample_rate = decoded_audio(source)
        audio = _fit_samples(decoded, round(frames / fps * sample_rate))
    try:
        encode_mp4(
            target,
            _fitted_frames(source, want.width, want.height, frames),
            width=want.width,
            height=want.height,
            fps=fps,
            audio=audio,
            sample_rate=sample_rate,
            options=options,
        )
    except av.error.FFmpegError as exc:
        raise UnusableVideo(f"the video file cannot be decoded: {exc}") from exc


def decoded_audio(source: Path) -> tuple[np.ndarray, int]:
    """The first audio track as float32 stereo (channels, samples) at its own sample rate."""
    with av.open(str(source)) as reader:
        stream = reader.streams.audio[0]
        rate = stream.codec_context.sample_rate or 48000
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate)
        chunks = [
            resampled.to_ndarray()
            for frame in reader.decode(stream)
            for resampled in resampler.resample(frame)
        ]
        chunks.extend(resampled.to_ndarray() for resampled in resampler.resample(None))
    if not chunks:
        return np.zeros((2, 0), dtype=np.float32), rate
    return np.concatenate(chunks, axis=1).astype(np.float32), rate


def _fit_samples(audio: np.ndarray, samples: int) -> np.ndarray:
    if audio.shape[1] >= samples:
        return np.ascontiguousarray(audio[:, :samples])
    return np.concatenate([audio, np.zeros((audio.shape[0], samples - audio.shape[1]), audio.dtype)], axis=1)


def _fitted_frames(source: Path, width: int, height: int, frames: int) -> Iterator[np.ndarray]:
    with av.open(str(source)) as reader:
        stream = reader.streams.video[0]
        stream.thread_type = "AUTO"
        for written, frame in enumerate(reader.decode(stream)):
            if written >= frames:
                break
            yield _cover_crop(frame, width, height)[None]


def _cover_crop(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    """The frame scaled to cover width x height, then center-cropped to exactly that, as uint8 RGB."""
    # Providers' HD output is BT.709, which is also what encode_mp4 writes.
    if (frame.width, frame.height) == (width, height):
        return frame.reformat(format="rgb24", src_colorspace="ITU709").to_ndarray()
    scale = max(width / frame.width, height / frame.height)
    scaled_w, scaled_h = max(width, round(frame.width * scale)), max(height, round(frame.height * scale))
    rgb = frame.reformat(
        width=scaled_w, height=scaled_h, format="rgb24", src_colorspace="ITU709", interpolation="BICUBIC"
    ).to_ndarray()
    top, left = (scaled_h - height) // 2, (scaled_w - width) // 2
    return np.ascontiguousarray(rgb[top : top + height, left : left + width])

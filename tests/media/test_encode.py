from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kinema.media.encode import EncodeOptions, encode_mp4, nvenc_available
from kinema.media.probe import probe_video
from tests.conftest import assert_mp4


def _frames(count: int, width: int, height: int, chunk: int = 8) -> list[np.ndarray]:
    gradient = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    frame = np.broadcast_to(gradient, (height, width, 3))
    return [np.stack([frame] * min(chunk, count - i)) for i in range(0, count, chunk)]


def test_video_only_mp4_is_h264_high_yuv420p_without_audio(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    written = encode_mp4(path, _frames(48, 320, 192), width=320, height=192, fps=24)
    assert written == 48
    assert_mp4(path, width=320, height=192, duration=2.0, fps=24, audio=False)


def test_audio_track_is_aac_stereo_of_the_same_duration(tmp_path: Path) -> None:
    path = tmp_path / "av.mp4"
    t = np.arange(24000 * 3) / 24000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    encode_mp4(
        path,
        _frames(72, 256, 256),
        width=256,
        height=256,
        fps=24,
        audio=np.stack([tone, tone]),
        sample_rate=24000,
        options=EncodeOptions(audio_sample_rate=48000),
    )
    assert_mp4(path, width=256, height=256, duration=3.0, fps=24, audio=True)
    info = probe_video(path)
    assert info.audio_sample_rate == 48000
    assert info.audio_duration == pytest.approx(3.0, abs=1 / 24)


def test_mono_audio_becomes_stereo(tmp_path: Path) -> None:
    path = tmp_path / "mono.mp4"
    encode_mp4(
        path,
        _frames(24, 128, 128),
        width=128,
        height=128,
        fps=24,
        audio=np.zeros((1, 24000), dtype=np.float32),
        sample_rate=24000,
    )
    assert probe_video(path).audio_channels == 2


def test_faststart_puts_moov_before_mdat(tmp_path: Path) -> None:
    path = tmp_path / "fs.mp4"
    encode_mp4(path, _frames(24, 128, 128), width=128, height=128, fps=24)
    head = path.read_bytes()
    assert head.index(b"moov") < head.index(b"mdat")


def test_probe_reads_what_was_written(tmp_path: Path) -> None:
    path = tmp_path / "p.mp4"
    encode_mp4(path, _frames(30, 160, 96), width=160, height=96, fps=30)
    info = probe_video(path)
    assert (info.width, info.height, info.frames, info.fps) == (160, 96, 30, 30.0)
    assert info.duration == pytest.approx(1.0)
    assert (info.video_codec, info.profile, info.pix_fmt, info.has_audio) == (
        "h264",
        "High",
        "yuv420p",
        False,
    )
    assert info.size_bytes == path.stat().st_size


def test_hardware_request_falls_back_to_x264_without_nvenc(tmp_path: Path) -> None:
    path = tmp_path / "hw.mp4"
    encode_mp4(
        path, _frames(8, 128, 128), width=128, height=128, fps=24, options=EncodeOptions(hardware=True)
    )
    assert probe_video(path).video_codec == "h264"
    if not nvenc_available():
        assert probe_video(path).frames == 8


@pytest.mark.parametrize("preset", ["ultrafast", "superfast", "medium"])
def test_every_x264_preset_still_gives_high_profile(tmp_path: Path, preset: str) -> None:
    path = tmp_path / "out.mp4"
    options = EncodeOptions(preset=preset)
    encode_mp4(path, _frames(12, 64, 48), width=64, height=48, fps=24, options=options)
    assert_mp4(path, width=64, height=48, duration=0.5, fps=24, audio=False)

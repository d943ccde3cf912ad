"""Bringing a provider's MP4 onto the contract: kept as is, remuxed, or transcoded, checked with ffprobe."""

from __future__ import annotations

import hashlib
from pathlib import Path

import av
import pytest

from kinema.media.conform import ContractTarget, UnusableVideo, conform_mp4, is_faststart
from kinema.media.encode import EncodeOptions
from tests.conftest import assert_mp4
from tests.engines.fake_google import VideoSpec, make_mp4

FAST = EncodeOptions(preset="ultrafast")
HD_4S = ContractTarget(width=1280, height=720, duration=4.0, audio=True)


def provider_file(tmp_path: Path, spec: VideoSpec) -> Path:
    path = tmp_path / "provider.mp4"
    path.write_bytes(make_mp4(spec))
    return path


def video_packets_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with av.open(str(path)) as container:
        for packet in container.demux(container.streams.video[0]):
            if packet.size:
                digest.update(bytes(packet))
    return digest.hexdigest()


def test_a_file_on_the_contract_is_kept_byte_for_byte(tmp_path: Path) -> None:
    source = provider_file(tmp_path, VideoSpec(1280, 720, 4, audio=True))
    original = source.read_bytes()
    target = tmp_path / "out.mp4"
    assert conform_mp4(source, target, HD_4S, FAST) == "kept"
    assert target.read_bytes() == original
    assert_mp4(target, width=1280, height=720, duration=4.0, fps=24, audio=True)


def test_an_unwanted_audio_track_is_dropped_without_reencoding(tmp_path: Path) -> None:
    source = provider_file(tmp_path, VideoSpec(1280, 720, 4, audio=True))
    before = video_packets_digest(source)
    target = tmp_path / "out.mp4"
    want = ContractTarget(width=1280, height=720, duration=4.0, audio=False)
    assert conform_mp4(source, target, want, FAST) == "remuxed"
    assert_mp4(target, width=1280, height=720, duration=4.0, fps=24, audio=False)
    assert video_packets_digest(target) == before and is_faststart(target)


def test_a_file_without_faststart_is_remuxed_to_faststart(tmp_path: Path) -> None:
    source = provider_file(tmp_path, VideoSpec(1280, 720, 4, audio=True, faststart=False))
    assert not is_faststart(source)
    target = tmp_path / "out.mp4"
    assert conform_mp4(source, target, HD_4S, FAST) == "remuxed"
    assert is_faststart(target)
    assert_mp4(target, width=1280, height=720, duration=4.0, fps=24, audio=True)


def test_another_codec_size_and_length_is_transcoded_to_the_contract(tmp_path: Path) -> None:
    # MPEG-4 Part 2, smaller and not exactly 16:9, 1.5 s where 1 was asked, no faststart (kept small: speed).
    source = provider_file(tmp_path, VideoSpec(480, 272, 1.5, audio=True, codec="mpeg4", faststart=False))
    target = tmp_path / "out.mp4"
    want = ContractTarget(width=640, height=360, duration=1.0, audio=True)
    assert conform_mp4(source, target, want, FAST) == "transcoded"
    assert_mp4(target, width=640, height=360, duration=1.0, fps=24, audio=True)
    assert is_faststart(target)


def test_asking_for_audio_from_a_silent_file_is_refused(tmp_path: Path) -> None:
    source = provider_file(tmp_path, VideoSpec(1280, 720, 4, audio=False))
    with pytest.raises(UnusableVideo, match="no audio track"):
        conform_mp4(source, tmp_path / "out.mp4", HD_4S, FAST)


def test_a_file_that_is_not_a_video_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "provider.mp4"
    source.write_bytes(b"<html>not a video</html>")
    with pytest.raises(UnusableVideo, match="cannot be read"):
        conform_mp4(source, tmp_path / "out.mp4", HD_4S, FAST)

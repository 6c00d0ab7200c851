"""Audio type sniffing from bytes and the cheap duration probes."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.api.probe import UndecodableAudio, probe_duration
from app.api.sniff import sniff_head, sniff_path
from tests.api_support import adts_bytes, audio_bytes, m4a_bytes


def _write(tmp_path: Path, data: bytes, name: str = "clip.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("fmt", "expected"), [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg"), ("MP3", "mp3")]
)
def test_sniffs_real_files_and_probes_their_duration(
    tmp_path: Path, fmt: str, expected: str
) -> None:
    # The name says .txt: only the bytes count.
    path = _write(tmp_path, audio_bytes(fmt, seconds=1.5), "song.txt")
    assert sniff_path(path) == expected
    assert probe_duration(path, sniff_path(path) or "wav") == pytest.approx(1.5, abs=0.08)


def test_id3_tagged_mp3_is_sniffed_past_its_tag(tmp_path: Path) -> None:
    body = audio_bytes("MP3", seconds=1.0)
    tag_body = b"\x00" * 300  # padding inside the tag
    size = len(tag_body)
    syncsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    path = _write(tmp_path, b"ID3\x04\x00\x00" + syncsafe + tag_body + body)
    assert sniff_path(path) == "mp3"
    assert probe_duration(path, "mp3") == pytest.approx(1.0, abs=0.1)


def test_m4a_duration_comes_from_mvhd(tmp_path: Path) -> None:
    path = _write(tmp_path, m4a_bytes(12.5))
    assert sniff_path(path) == "mp4"
    assert probe_duration(path, "mp4") == pytest.approx(12.5)


def test_mp4_without_an_audio_track_is_undecodable(tmp_path: Path) -> None:
    path = _write(tmp_path, m4a_bytes(3, audio_track=False))
    with pytest.raises(UndecodableAudio, match="no audio track"):
        probe_duration(path, "mp4")


def test_adts_aac_duration_counts_frames(tmp_path: Path) -> None:
    path = _write(tmp_path, adts_bytes(431))
    assert sniff_path(path) == "aac"
    assert probe_duration(path, "aac") == pytest.approx(431 * 1024 / 44100)


@pytest.mark.parametrize(
    "head",
    [
        b"%PDF-1.7 not audio at all",
        b"\x89PNG\r\n\x1a\n" + bytes(20),
        b"RIFF\x00\x00\x00\x00AVI LIST",
        b"\xff\xff\xff\xff" + bytes(8),  # sync bits but reserved fields
        b"",
    ],
)
def test_non_audio_is_not_sniffed(head: bytes) -> None:
    assert sniff_head(head) is None


def test_audio_header_with_garbage_is_undecodable(tmp_path: Path) -> None:
    path = _write(tmp_path, b"fLaC" + bytes(range(256)) * 4)
    assert sniff_path(path) == "flac"
    with pytest.raises(UndecodableAudio, match="cannot be decoded"):
        probe_duration(path, "flac")


def test_truncated_mp4_is_undecodable(tmp_path: Path) -> None:
    path = _write(tmp_path, m4a_bytes(5)[:40])
    with pytest.raises(UndecodableAudio):
        probe_duration(path, "mp4")

"""The one audio probe (`app.audio_probe`): type from the bytes, duration from the headers, and
the one list of accepted formats, on real files of every accepted format and on broken ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from audio_fixtures import write_adts, write_clip, write_m4a

from app.audio_probe import (
    ACCEPTED,
    FORMATS,
    UndecodableAudio,
    UnsupportedAudio,
    format_for_extension,
    probe,
)
from tests.api_support import adts_bytes, audio_bytes, m4a_bytes


def _write(tmp_path: Path, data: bytes, name: str = "clip.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _unnamed(path: Path) -> Path:
    """The same bytes under a name that tells nothing: only the content may count."""
    return path.rename(path.with_name("upload.txt"))


@pytest.mark.parametrize(
    ("fmt", "expected", "samplerate", "tolerance"),
    [
        ("wav", "wav", 44100, 1e-4),
        ("flac", "flac", 44100, 1e-4),
        ("mp3", "mp3", 44100, 1e-3),
        ("ogg", "ogg", 44100, 1e-3),
        ("opus", "opus", 48000, 1e-3),
        ("aiff", "aiff", 44100, 1e-4),
        ("m4a", "m4a", 44100, 2048 / 44100),  # AAC priming and padding: up to two frames
        ("aac", "aac", 44100, 0.1),  # ADTS has no index: mutagen estimates past its first frames
    ],
)
def test_every_accepted_format_is_known_by_its_bytes_with_its_duration(
    tmp_path: Path, fmt: str, expected: str, samplerate: int, tolerance: float
) -> None:
    path = tmp_path / f"clip.{fmt}"
    if fmt == "m4a":
        write_m4a(path, 2.5)
    elif fmt == "aac":
        write_adts(path, 2.5)
    else:
        write_clip(path, 2.5, samplerate=samplerate)
    found = probe(_unnamed(path))
    assert found.format.name == expected
    assert found.duration_s == pytest.approx(2.5, abs=tolerance)
    assert found.channels == 2


def test_id3_tagged_mp3_is_known_past_its_tag(tmp_path: Path) -> None:
    body = audio_bytes("MP3", seconds=1.0)
    tag_body = b"\x00" * 300  # padding inside the tag
    size = len(tag_body)
    syncsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    found = probe(_write(tmp_path, b"ID3\x04\x00\x00" + syncsafe + tag_body + body))
    assert found.format.name == "mp3"
    assert found.duration_s == pytest.approx(1.0, abs=0.1)


def test_m4a_duration_comes_from_its_headers(tmp_path: Path) -> None:
    found = probe(_write(tmp_path, m4a_bytes(12.5)))  # headers only: no audio to decode
    assert found.format.name == "m4a"
    assert found.duration_s == pytest.approx(12.5)


def test_adts_aac_is_known_without_magic_bytes(tmp_path: Path) -> None:
    found = probe(_write(tmp_path, adts_bytes(431)))
    assert found.format.name == "aac"
    assert found.duration_s == pytest.approx(431 * 1024 / 44100, abs=0.05)


def test_mp4_without_an_audio_track_is_undecodable(tmp_path: Path) -> None:
    with pytest.raises(UndecodableAudio, match="no audio track"):
        probe(_write(tmp_path, m4a_bytes(3, audio_track=False)))


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.7 not audio at all",
        b"\x89PNG\r\n\x1a\n" + bytes(200),
        b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(200),
        b"\xff\xff\xff\xff" + bytes(200),  # sync bits but reserved fields
        b"these are notes, not audio\n" * 50,
    ],
)
def test_non_audio_is_unsupported_and_the_message_lists_what_is(
    tmp_path: Path, data: bytes
) -> None:
    path = _write(tmp_path, data, "song.mp3")  # the name says mp3: only the bytes count
    with pytest.raises(UnsupportedAudio) as info:
        probe(path)
    assert ACCEPTED in str(info.value) and "AIFF" in ACCEPTED
    assert str(tmp_path) not in str(info.value)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"fLaC" + bytes(range(256)) * 4, "cannot be decoded"),
        (m4a_bytes(5)[:40], "cannot be decoded"),
        (audio_bytes("MP3")[:30], "cannot be decoded"),
        (b"", "empty"),
        (audio_bytes()[:20] + b"\x00\x00" + audio_bytes()[22:], "no audio encoding"),
    ],
    ids=["flac-garbage", "truncated-mp4", "truncated-mp3", "empty", "wav-format-tag-0"],
)
def test_broken_audio_is_undecodable_without_a_path(
    tmp_path: Path, data: bytes, match: str
) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(UndecodableAudio, match=match) as info:
        probe(path)
    assert str(tmp_path) not in str(info.value)


def test_the_format_list_is_one_consistent_table() -> None:
    names = [f.name for f in FORMATS]
    extensions = [ext for f in FORMATS for ext in f.extensions]
    assert len(set(names)) == len(names) and len(set(extensions)) == len(extensions)
    assert {"wav", "flac", "mp3", "ogg", "opus", "m4a", "aac", "aiff"} == set(names)
    for fmt in FORMATS:
        assert fmt.mime_types and all(m.startswith("audio/") for m in fmt.mime_types)
        assert fmt.decoders and fmt.readers
        assert all(format_for_extension(f"Song.{ext.upper()}") is fmt for ext in fmt.extensions)
    assert format_for_extension("notes.txt") is None

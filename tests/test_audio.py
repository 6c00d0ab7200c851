"""Decoding every format we can produce, the input errors users see, and every output format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from audio_fixtures import (
    tone,
    write_adts,
    write_clip,
    write_corrupt,
    write_m4a,
    write_mp3_that_starts_at_320k,
    write_not_audio,
    write_silent_wav,
    write_vbr_mp3_without_xing,
)

from app.audio_probe import probe
from app.errors import PermanentJobError
from app.params import JobParams
from worker.audio import decode, iter_decode, probe_duration
from worker.encode import encode

SR = 44100


@pytest.mark.parametrize(
    ("suffix", "samplerate"),
    [
        ("wav", 44100),
        ("flac", 44100),
        ("mp3", 44100),
        ("ogg", 44100),
        ("opus", 48000),
        ("aiff", 44100),
    ],
)
def test_decode_each_format_to_model_rate_and_channels(
    tmp_path: Path, suffix: str, samplerate: int
) -> None:
    clip = write_clip(tmp_path / f"clip.{suffix}", 2.0, samplerate=samplerate)
    assert probe_duration(clip) == pytest.approx(2.0, abs=1 / samplerate)

    wav = decode(clip, samplerate=SR, channels=2)
    assert wav.dtype == torch.float32
    assert wav.shape == (2, 2 * SR)  # mp3 gapless and opus pre-skip are trimmed exactly
    mono = decode(clip, samplerate=SR, channels=1)
    assert mono.shape == (1, 2 * SR)
    if suffix in ("wav", "flac", "aiff"):  # lossless: the samples come back (16-bit quantised)
        assert np.abs(wav.numpy() - tone(2.0)).max() < 1e-4
    else:  # lossy: the signal is still there
        assert float(wav.std()) == pytest.approx(float(tone(2.0).std()), rel=0.1)


def test_decode_m4a_aac_without_an_ffmpeg_binary(tmp_path: Path) -> None:
    clip = write_m4a(tmp_path / "phone-memo.m4a", 2.0)
    assert probe_duration(clip) == pytest.approx(2.0, abs=2048 / SR)
    wav = decode(clip, samplerate=SR, channels=2)
    assert abs(wav.shape[-1] - 2 * SR) <= 2048  # AAC priming / padding, at most 2 frames
    assert float(wav.std()) == pytest.approx(float(tone(2.0).std()), rel=0.1)
    streamed = list(iter_decode(clip, samplerate=SR, channels=2, block_frames=10_000))
    assert torch.equal(torch.cat(streamed, dim=-1), wav)
    half = decode(clip, samplerate=SR, channels=2, start=0.5, duration=1.0)
    assert half.shape == (2, SR)


def test_decode_adts_aac(tmp_path: Path) -> None:
    clip = write_adts(tmp_path / "radio.aac", 2.0)
    wav = decode(clip, samplerate=SR, channels=2)
    assert abs(wav.shape[-1] - 2 * SR) <= 2048
    assert float(wav.std()) == pytest.approx(float(tone(2.0).std()), rel=0.1)


def test_a_vbr_mp3_without_a_xing_header_is_decoded_to_its_end(tmp_path: Path) -> None:
    """Its header can only estimate the length (4.2 s here): libsndfile stopped there and the
    stems lost the last 3 s; the whole song is separated."""
    clip = write_vbr_mp3_without_xing(tmp_path / "rip.mp3", 7.25)
    wav = decode(clip, samplerate=SR, channels=2)
    assert wav.shape[-1] / SR == pytest.approx(7.25, abs=0.1)
    streamed = list(iter_decode(clip, samplerate=SR, channels=2, block_frames=50_000))
    assert torch.equal(torch.cat(streamed, dim=-1), wav)


def test_the_duration_limit_holds_for_what_is_decoded(tmp_path: Path) -> None:
    """A header that underestimates the length does not let a longer song past the limit."""
    clip = write_mp3_that_starts_at_320k(tmp_path / "joined.mp3", 8.0)
    assert probe(clip).duration_s < 2 and probe_duration(clip) < 4  # what the headers say
    for run in (
        lambda: decode(clip, samplerate=SR, channels=2, max_seconds=5),
        lambda: list(iter_decode(clip, samplerate=SR, channels=2, max_seconds=5)),
    ):
        with pytest.raises(PermanentJobError) as info:
            run()
        assert info.value.kind == "too_long"
        assert "longer than its header says" in str(info.value)
        assert "STEMFLEET_MAX_DURATION" in str(info.value)


def test_streamed_decode_equals_whole_decode_with_resampling(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip48k.flac", 3.0, samplerate=48000)
    whole = decode(clip, samplerate=SR, channels=2)
    blocks = list(iter_decode(clip, samplerate=SR, channels=2, block_frames=10_000))
    assert len(blocks) > 5
    assert torch.equal(torch.cat(blocks, dim=-1), whole)


def test_decode_a_span_for_previews(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip.wav", 3.0)
    part = decode(clip, samplerate=SR, channels=2, start=1.0, duration=1.5)
    assert part.shape == (2, round(1.5 * SR))
    assert np.abs(part.numpy() - tone(3.0)[:, SR : SR + part.shape[-1]]).max() < 1e-4
    # the duration limit applies to what is decoded: a 1 s preview of a 3 s file passes
    assert decode(clip, samplerate=SR, channels=2, duration=1.0, max_seconds=2).shape[-1] == SR


def _write_text(path: Path) -> Path:
    path.write_text("these are notes, not audio\n" * 50)
    return path


def _error(path: Path, **kwargs: object) -> PermanentJobError:
    with pytest.raises(PermanentJobError) as info:
        decode(path, samplerate=SR, channels=2, **kwargs)  # type: ignore[arg-type]
    return info.value


@pytest.mark.parametrize(
    "make",
    [
        lambda d: write_corrupt(d / "corrupt.flac"),
        lambda d: write_not_audio(d / "picture.png"),
        lambda d: write_not_audio(d / "picture.mp3"),
        lambda d: _write_text(d / "notes.txt"),
    ],
    ids=["corrupt", "png", "png-named-mp3", "text"],
)
def test_undecodable_inputs_name_the_accepted_formats(tmp_path: Path, make: object) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    error = _error(path)
    assert error.kind == "undecodable"
    assert path.name in str(error)
    assert "Accepted formats: WAV, FLAC, MP3" in str(error)
    with pytest.raises(PermanentJobError, match="Accepted formats"):
        probe_duration(path)


def test_empty_inputs(tmp_path: Path) -> None:
    zero_bytes = tmp_path / "empty.mp3"
    zero_bytes.write_bytes(b"")
    error = _error(zero_bytes)
    assert error.kind == "empty"
    assert "0 bytes" in str(error)

    error = _error(write_silent_wav(tmp_path / "silent.wav"))
    assert error.kind == "empty"
    assert "no audio" in str(error)


def test_too_long_says_the_limit_the_duration_and_the_setting(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "long.flac", 3.0)
    error = _error(clip, max_seconds=2.0)
    assert error.kind == "too_long"
    message = str(error)
    assert "3.0 s" in message
    assert "2 s" in message
    assert "STEMFLEET_MAX_DURATION" in message


@pytest.mark.parametrize(
    ("fmt", "sample_format", "bitrate"),
    [
        ("wav", "int16", None),
        ("wav", "int24", None),
        ("wav", "float32", None),
        ("flac", "int16", None),
        ("flac", "int24", None),
        ("mp3", "int16", 128),
        ("opus", "int16", 96),
    ],
)
def test_encode_reads_back_with_rate_channels_and_duration(
    tmp_path: Path, fmt: str, sample_format: str, bitrate: int | None
) -> None:
    seconds = 2.0
    wav = torch.from_numpy(tone(seconds))
    params = JobParams(format=fmt, sample_format=sample_format, bitrate=bitrate)  # type: ignore[arg-type]
    path = tmp_path / f"stem.{fmt}"
    encode(wav, SR, path, params)

    info = sf.info(str(path))
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    expected_rate = 48000 if fmt == "opus" else SR  # opus runs at 48 kHz only
    assert rate == info.samplerate == expected_rate
    assert data.shape[1] == info.channels == 2
    # libsndfile writes mp3's gapless tag and honours opus' pre-skip: no delay to trim
    assert abs(data.shape[0] - seconds * expected_rate) <= 1
    if fmt in ("wav", "flac"):
        assert np.abs(data.T - tone(seconds)).max() < 1e-4
    else:
        kbps = path.stat().st_size * 8 / seconds / 1000
        assert kbps == pytest.approx(bitrate, rel=0.2)
        assert float(data.std()) == pytest.approx(float(tone(seconds).std()), rel=0.15)


def test_float32_wav_keeps_values_and_integer_formats_clamp(tmp_path: Path) -> None:
    loud = torch.full((2, 1000), 1.5)
    encode(loud, SR, tmp_path / "float.wav", JobParams(sample_format="float32"))
    encode(loud, SR, tmp_path / "int.wav", JobParams(sample_format="int16"))
    assert sf.read(str(tmp_path / "float.wav"))[0].max() == pytest.approx(1.5)
    assert sf.read(str(tmp_path / "int.wav"))[0].max() == pytest.approx(1.0, abs=1e-4)
    assert sf.read(str(tmp_path / "int.wav"))[0].min() >= 0.99  # no wrap-around


def test_nan_inf_and_too_short_inputs_say_what_is_wrong(tmp_path: Path) -> None:
    data = np.full((SR, 2), 0.1, dtype=np.float32)
    data[SR // 2, 1] = np.nan
    sf.write(str(tmp_path / "nan.wav"), data, SR, subtype="FLOAT")
    for decoded in (
        lambda: decode(tmp_path / "nan.wav", samplerate=SR, channels=2),
        lambda: list(iter_decode(tmp_path / "nan.wav", samplerate=SR, channels=2)),
    ):
        with pytest.raises(PermanentJobError, match="not numbers") as info:
            decoded()
        assert info.value.kind == "not_finite"
        assert "0.500 s" in str(info.value)

    sf.write(str(tmp_path / "one.wav"), np.zeros((1, 2), dtype=np.float32), SR, subtype="FLOAT")
    error = _error(tmp_path / "one.wav")
    assert error.kind == "too_short"
    assert "at least 0.1 s" in str(error)

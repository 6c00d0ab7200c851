"""An input file to stem files: formats, stem choices, previews, streaming, cancellation."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_fixtures import one_torch_thread, write_clip, write_corrupt

from app.errors import PermanentJobError
from app.params import JobParams
from app.settings import load_settings
from worker.engine import JobCancelled
from worker.pipeline import FileJob, SeparationResult, separate_file, separate_files
from worker.separation import Separator

pytestmark = pytest.mark.slow

SOURCES = ["drums", "bass", "other", "vocals"]
FLOAT_WAV = JobParams(format="wav", sample_format="float32", shifts=0)

_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


@pytest.fixture(scope="module")
def separator() -> Separator:
    return Separator(load_settings(model="demucs_unittest", device="cpu", batch_size=4))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("in") / "song.flac", 2.5)


def _read(path: Path) -> np.ndarray:
    return sf.read(str(path), dtype="float32", always_2d=True)[0]


def _only_stems_left(out_dir: Path, names: list[str], ext: str) -> None:
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"{n}.{ext}" for n in names)


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus"])
def test_four_stems_per_format_with_the_input_duration(
    separator: Separator, clip: Path, tmp_path: Path, fmt: str
) -> None:
    result = separate_file(separator, clip, tmp_path / "out", JobParams(format=fmt, shifts=0))

    rate = 48000 if fmt == "opus" else 44100
    assert list(result.stems) == SOURCES
    assert result.duration_s == pytest.approx(2.5)
    assert (result.samplerate, result.channels) == (rate, 2)
    assert set(result.timings) == {"decode", "separate", "encode"}
    for path in result.stems.values():
        info = sf.info(str(path))
        assert (info.samplerate, info.channels) == (rate, 2)
        assert abs(_read(path).shape[0] - 2.5 * rate) <= 1
    _only_stems_left(tmp_path / "out", SOURCES, fmt)


def test_stems_subset_and_two_stems(separator: Separator, clip: Path, tmp_path: Path) -> None:
    everything = separate_file(separator, clip, tmp_path / "all", FLOAT_WAV)
    subset = separate_file(
        separator,
        clip,
        tmp_path / "subset",
        FLOAT_WAV.model_copy(update={"stems": ["vocals", "bass"]}),
    )
    two = separate_file(
        separator, clip, tmp_path / "two", FLOAT_WAV.model_copy(update={"two_stems": "vocals"})
    )

    assert list(subset.stems) == ["vocals", "bass"]
    _only_stems_left(tmp_path / "subset", ["vocals", "bass"], "wav")
    np.testing.assert_array_equal(_read(subset.stems["bass"]), _read(everything.stems["bass"]))

    assert list(two.stems) == ["vocals", "no_vocals"]
    np.testing.assert_array_equal(_read(two.stems["vocals"]), _read(everything.stems["vocals"]))
    others = sum(_read(everything.stems[s]) for s in ("drums", "bass", "other"))
    np.testing.assert_allclose(_read(two.stems["no_vocals"]), others, atol=1e-6)


def test_preview_separates_only_the_first_seconds(
    separator: Separator, clip: Path, tmp_path: Path
) -> None:
    result = separate_file(
        separator, clip, tmp_path / "out", FLOAT_WAV, preview_seconds=1.0, max_seconds=2.0
    )
    assert result.duration_s == pytest.approx(1.0)
    assert _read(result.stems["vocals"]).shape == (44100, 2)


def test_streamed_long_input_equals_in_memory(separator: Separator, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "song48k.wav", 3.0, samplerate=48000)  # resampled on the way
    params = JobParams(format="wav", sample_format="float32", shifts=1, segment=1.0)
    random.seed(3)
    whole = separate_file(separator, clip, tmp_path / "memory", params)
    random.seed(3)
    streamed = separate_file(separator, clip, tmp_path / "streamed", params, stream_over_seconds=1)

    assert streamed.duration_s == whole.duration_s == pytest.approx(3.0)
    for source in SOURCES:
        np.testing.assert_allclose(
            _read(streamed.stems[source]), _read(whole.stems[source]), atol=1e-5
        )
    _only_stems_left(tmp_path / "streamed", SOURCES, "wav")  # the temporary mix is gone


@pytest.mark.parametrize("stream_over", [600.0, 1.0], ids=["in-memory", "streamed"])
def test_cancel_stops_and_leaves_no_stems(
    separator: Separator, clip: Path, tmp_path: Path, stream_over: float
) -> None:
    calls: list[int] = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > 1

    params = JobParams(shifts=0, segment=0.6)
    with pytest.raises(JobCancelled):
        separate_file(
            separator,
            clip,
            tmp_path / "out",
            params,
            should_stop=should_stop,
            stream_over_seconds=stream_over,
        )
    assert list((tmp_path / "out").iterdir()) == []


def test_bad_inputs_fail_before_any_work(separator: Separator, tmp_path: Path) -> None:
    with pytest.raises(PermanentJobError) as info:
        separate_file(separator, write_corrupt(tmp_path / "bad.flac"), tmp_path / "out", FLOAT_WAV)
    assert info.value.kind == "undecodable"

    clip = write_clip(tmp_path / "long.wav", 3.0)
    with pytest.raises(PermanentJobError) as info:
        separate_file(separator, clip, tmp_path / "out", FLOAT_WAV, max_seconds=2.0)
    assert info.value.kind == "too_long"

    with pytest.raises(PermanentJobError) as info:
        separate_file(
            separator, clip, tmp_path / "out", FLOAT_WAV.model_copy(update={"stems": ["piano"]})
        )
    assert info.value.kind == "invalid_params"


def test_separate_files_together_equals_one_by_one_and_isolates_a_bad_input(
    separator: Separator, tmp_path: Path
) -> None:
    params = JobParams(format="wav", sample_format="float32", shifts=0, segment=0.8)
    first = write_clip(tmp_path / "first.flac", 2.5)
    second = write_clip(tmp_path / "second.wav", 1.7, samplerate=48000)
    corrupt = write_corrupt(tmp_path / "bad.flac")
    progress: list[float] = []
    jobs = [
        FileJob(first, tmp_path / "a", params, progress=progress.append),
        FileJob(corrupt, tmp_path / "b", params),
        FileJob(second, tmp_path / "c", params, preview_seconds=1.0),
    ]

    results = separate_files(separator, jobs)

    bad = results[1]
    assert isinstance(bad, PermanentJobError) and bad.kind == "undecodable"
    assert progress[-1] == 1.0
    for result, job, seconds in ((results[0], jobs[0], 2.5), (results[2], jobs[2], 1.0)):
        assert isinstance(result, SeparationResult)
        assert result.duration_s == pytest.approx(seconds)
        assert result.timings["shared_with"] == 1.0
        alone = separate_file(
            separator,
            job.input_path,
            tmp_path / f"alone-{job.out_dir.name}",
            params,
            preview_seconds=job.preview_seconds,
            stream_over_seconds=0,
        )
        for source in SOURCES:
            np.testing.assert_allclose(
                _read(result.stems[source]), _read(alone.stems[source]), atol=1e-5
            )
        _only_stems_left(job.out_dir, SOURCES, "wav")  # the temporary mixes are gone
    assert not (tmp_path / "b").exists() or list((tmp_path / "b").iterdir()) == []

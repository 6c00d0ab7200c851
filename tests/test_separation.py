"""The separator equals Demucs' own apply_model, batches, cancels, and loads models by name."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from audio_fixtures import (
    one_torch_thread,
    small_htdemucs_kwargs,
    tone,
    write_random_htdemucs_repo,
    write_tiny_models,
)
from demucs.apply import apply_model

from app.clock import FakeClock
from app.errors import PermanentJobError
from app.params import JobParams
from app.settings import load_settings
from worker.engine import JobCancelled, Stream, normalisation, tensor_reader
from worker.models import MODEL_FAILURE_TTL, ModelUnavailable
from worker.separation import Separator

pytestmark = pytest.mark.slow

_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


@pytest.fixture(scope="module")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder: `tiny_htdemucs` (one random HTDemucs) and `tiny_bag` (two, weighted)."""
    return write_tiny_models(tmp_path_factory.mktemp("models"))


def _separator(model: str, repo: Path | None = None, batch_size: int = 3) -> Separator:
    # the segment arithmetic of worker/engine.py, run by PyTorch itself: the engines' own
    # numbers (auto is onnx on CPU for HTDemucs) are tests/test_engines.py's
    return Separator(
        load_settings(
            model=model, model_repo=repo, device="cpu", batch_size=batch_size, engine="eager"
        )
    )


@pytest.fixture(scope="module")
def unittest_separator() -> Separator:
    return _separator("demucs_unittest")


def _apply_model_reference(
    separator: Separator,
    wav: torch.Tensor,
    params: JobParams,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[torch.Tensor, Callable[[int, int], int]]:
    """Demucs' own path (demucs.api.Separator.separate_tensor's arithmetic); also returns a
    randint that replays apply_model's shift offsets in order."""
    drawn: list[int] = []
    real_randint = random.randint

    def record(a: int, b: int) -> int:
        value = real_randint(a, b)
        drawn.append(value)
        return value

    monkeypatch.setattr(random, "randint", record)
    mean, std = normalisation(wav)
    out = apply_model(
        separator.loaded.model,
        ((wav - mean) / std)[None],
        shifts=params.shifts,
        split=True,
        overlap=params.overlap,
        segment=params.segment,
    )
    replay = iter(drawn)
    return out[0] * std + mean, lambda a, b: next(replay)


@pytest.mark.parametrize(
    ("model", "seconds", "params"),
    [
        ("demucs_unittest", 2.1, JobParams(shifts=0, segment=0.8)),
        ("demucs_unittest", 2.1, JobParams(shifts=1, segment=0.8, overlap=0.4)),
        ("tiny_htdemucs", 3.3, JobParams(shifts=0)),
        ("tiny_htdemucs", 3.3, JobParams(shifts=1)),
        ("tiny_bag", 2.3, JobParams(shifts=1, segment=1.5, overlap=0.5)),
    ],
    ids=["unittest-shifts0", "unittest-shifts1", "htdemucs-shifts0", "htdemucs-shifts1", "bag"],
)
def test_equals_demucs_apply_model(
    model: str,
    seconds: float,
    params: JobParams,
    model_repo: Path,
    unittest_separator: Separator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    separator = unittest_separator if model == "demucs_unittest" else _separator(model, model_repo)
    wav = torch.from_numpy(tone(seconds))
    reference, replay = _apply_model_reference(separator, wav, params, monkeypatch)
    monkeypatch.setattr(random, "randint", replay)

    stems = separator.separate(wav, params)

    assert list(stems) == separator.sources == ["drums", "bass", "other", "vocals"]
    for index, source in enumerate(separator.sources):
        assert stems[source].shape == wav.shape
        assert (stems[source] - reference[index]).abs().max().item() <= 1e-5, source


def test_progress_after_each_batch_and_cancel_between_batches(
    unittest_separator: Separator,
) -> None:
    wav = torch.from_numpy(tone(2.0))
    params = JobParams(shifts=0, segment=0.6, overlap=0.0)  # 4 segments, batches of <= 3
    seen: list[float] = []
    unittest_separator.separate(wav, params, progress=seen.append)
    assert seen == sorted(seen)
    assert 0 < seen[0] < 1
    assert seen[-1] == 1.0

    checks: list[int] = []

    def stop_after_first_batch() -> bool:
        checks.append(1)
        return len(checks) > 1

    with pytest.raises(JobCancelled):
        unittest_separator.separate(wav, params, should_stop=stop_after_first_batch)
    assert len(checks) == 2


def _batch_sizes(separator: Separator) -> list[int]:
    """Records the batch size of every forward pass of the separator's model (a torch hook)."""
    sizes: list[int] = []
    separator.loaded.members[0].register_forward_hook(
        lambda _module, args, _out: sizes.append(int(args[0].shape[0]))
    )
    return sizes


def _stream(
    wav: torch.Tensor, params: JobParams, **kwargs: object
) -> tuple[Stream, list[torch.Tensor]]:
    """A Stream over an in-memory mix, and the list its output blocks land in."""
    blocks: list[torch.Tensor] = []
    mean, std = normalisation(wav)
    stream = Stream(wav.shape[-1], tensor_reader(wav), mean, std, params, blocks.append)
    for name, value in kwargs.items():
        setattr(stream, name, value)
    return stream, blocks


def test_inputs_run_together_share_forward_passes_and_equal_their_runs_alone() -> None:
    separator = _separator("demucs_unittest", batch_size=8)
    sizes = _batch_sizes(separator)
    params = JobParams(shifts=0, segment=0.8, overlap=0.25)
    wavs = [torch.from_numpy(tone(seconds, seed=i)) for i, seconds in enumerate((3.0, 2.1, 3.0))]

    alone = [separator.separate(wav, params) for wav in wavs]
    passes_alone = len(sizes)
    sizes.clear()
    runs = [_stream(wav, params) for wav in wavs]
    results = separator.run_together(separator.loaded, [stream for stream, _ in runs])

    assert [r.error for r in results] == [None, None, None]
    # 5 + 4 + 5 segments; each input alone needs 2 passes (its last, shorter segment runs
    # on its own); together the full-length segments of all three fill one pass of 8 and
    # the equal-length tails of the 3 s inputs share another
    assert sum(sizes) == 14
    assert len(sizes) < passes_alone == 6
    assert max(sizes) == 8
    assert all(r.forward_s > 0 for r in results)
    for (_, blocks), stems in zip(runs, alone, strict=True):
        together = torch.cat(blocks, dim=-1)
        for index, source in enumerate(separator.sources):
            assert together.shape[1:] == stems[source].shape
            assert (together[index] - stems[source]).abs().max().item() <= 1e-5


def test_an_input_cancelled_in_a_shared_run_stops_alone() -> None:
    separator = _separator("demucs_unittest", batch_size=2)
    params = JobParams(shifts=0, segment=0.6, overlap=0.0)
    wav = torch.from_numpy(tone(2.0))
    checks: list[int] = []

    def stop_at_second_check() -> bool:
        checks.append(1)
        return len(checks) >= 2

    kept, kept_blocks = _stream(wav, params)
    cancelled, _ = _stream(wav, params, should_stop=stop_at_second_check)
    results = separator.run_together(separator.loaded, [kept, cancelled])

    assert results[0].error is None
    assert torch.cat(kept_blocks, dim=-1).shape[-1] == wav.shape[-1]
    assert isinstance(results[1].error, JobCancelled)
    assert len(checks) == 2


def test_a_job_may_ask_for_another_model_which_stays_cached(model_repo: Path) -> None:
    separator = _separator("demucs_unittest", model_repo)
    wav = torch.from_numpy(tone(2.5))
    first = separator.model_for("tiny_htdemucs")
    stems = separator.separate(wav, JobParams(model="tiny_htdemucs", shifts=0))
    assert stems["vocals"].shape == wav.shape
    assert separator.model_for("tiny_htdemucs") is first
    assert separator.model_for(None) is separator.loaded
    assert separator.model_name == "demucs_unittest"


def test_unknown_model_in_a_local_folder_lists_what_is_there(model_repo: Path) -> None:
    separator = _separator("demucs_unittest", model_repo)
    with pytest.raises(PermanentJobError) as info:
        separator.model_for("htdemucs_ft")
    assert info.value.kind == "invalid_params"
    assert "tiny_htdemucs" in str(info.value)
    assert "STEMFLEET_MODEL_REPO" in str(info.value)


def test_a_model_that_cannot_be_downloaded_says_how_to_use_a_local_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an air-gapped machine: the hub refuses at once, Demucs' legacy URL has nobody listening
    import demucs.pretrained
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(demucs.pretrained, "ROOT_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelUnavailable) as info:
        _separator("htdemucs")
    assert "STEMFLEET_MODEL_REPO" in str(info.value)
    assert not info.value.retryable  # the worker's problem: the job fails at once, with why
    assert "127.0.0.1" not in str(info.value) and str(tmp_path) not in str(info.value)


def test_a_model_that_failed_to_load_is_not_tried_again_for_a_while(tmp_path: Path) -> None:
    """Each job naming a model the worker cannot load fails at once, without another load
    attempt, until MODEL_FAILURE_TTL has passed on the worker's clock."""
    repo, _ = write_random_htdemucs_repo(tmp_path / "models", name="tiny_htdemucs")
    clock = FakeClock()
    separator = Separator(
        load_settings(model="tiny_htdemucs", model_repo=repo, device="cpu", engine="eager"),
        clock=clock,
    )
    with pytest.raises(PermanentJobError, match="unknown model 'later'") as first:
        separator.model_for("later")
    assert str(repo) not in str(first.value)  # the folder's path stays on the worker

    write_random_htdemucs_repo(repo, name="later")  # the operator adds it
    clock.advance(MODEL_FAILURE_TTL - 1)
    with pytest.raises(PermanentJobError, match="unknown model 'later'"):
        separator.model_for("later")  # remembered: not looked for again

    clock.advance(1)
    assert separator.model_for("later").name == "later"


def test_params_the_model_cannot_honour(model_repo: Path) -> None:
    separator = _separator("tiny_htdemucs", model_repo)
    wav = torch.from_numpy(tone(1.0))
    with pytest.raises(PermanentJobError, match="no stem 'guitar'") as info:
        separator.separate(wav, JobParams(stems=["guitar"]))
    assert info.value.kind == "invalid_params"
    limit = float(small_htdemucs_kwargs()["segment"])
    with pytest.raises(PermanentJobError, match="segment 5 s is longer") as info:
        separator.separate(wav, JobParams(segment=5.0))
    assert info.value.kind == "invalid_params"
    assert f"{limit:.2f} s" in str(info.value)


def test_bf16_on_cpu_stays_close_to_fp32(model_repo: Path) -> None:
    wav = torch.from_numpy(tone(2.0))
    params = JobParams(shifts=0)
    exact = _separator("tiny_htdemucs", model_repo).separate(wav, params)
    reduced = Separator(
        load_settings(model="tiny_htdemucs", model_repo=model_repo, device="cpu", precision="bf16")
    ).separate(wav, params)
    for source in exact:
        assert reduced[source].dtype == torch.float32
        # bf16 autocast: measured relative L2 error 0.3-0.8 %, max abs difference ~2e-4
        error = (reduced[source] - exact[source]).norm() / exact[source].norm()
        assert error.item() < 0.02
        assert (reduced[source] - exact[source]).abs().max().item() < 1e-3

"""The ONNX Runtime engine: HTDemucs' network exported between the STFT and the iSTFT, the same
numbers as the model, a cache that survives a restart, and clear refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from audio_fixtures import (
    one_torch_thread,
    small_htdemucs_kwargs,
    tone,
    write_random_htdemucs_repo,
)
from demucs.apply import BagOfModels, apply_model
from demucs.htdemucs import HTDemucs
from demucs.pretrained import get_model

from app.params import JobParams
from app.settings import load_settings
from worker.engine import normalisation
from worker.engines import onnx_runtime
from worker.engines.htdemucs_split import Unsupported
from worker.separation import Separator

pytestmark = pytest.mark.slow

_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


def _htdemucs(seed: int) -> HTDemucs:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return HTDemucs(**small_htdemucs_kwargs()).eval()


@pytest.fixture(scope="module")
def model() -> HTDemucs:
    return _htdemucs(0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine-cache")


@pytest.fixture(scope="module")
def forward(model: HTDemucs, cache: Path) -> onnx_runtime.Forward:
    return onnx_runtime.prepare(model, device="cpu", precision="fp32", cache_dir=cache)


def _events(capsys: pytest.CaptureFixture[str]) -> list[str]:
    lines = capsys.readouterr().err.splitlines()
    return [json.loads(line)["event"] for line in lines if line.startswith("{")]


def _files(cache: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (cache / "onnx").iterdir()}


def test_a_batch_equals_the_model(model: HTDemucs, forward: onnx_runtime.Forward) -> None:
    # a short last segment (padded to the training length inside, as HTDemucs does), batch 3
    mix = torch.randn(3, 2, 80_000, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = model(mix)
        out = forward(mix)
    assert out.shape == expected.shape == (3, 4, 2, 80_000)
    assert out.dtype == torch.float32
    # measured: 3.5e-6
    assert (out - expected).abs().max().item() <= 1e-4


def test_a_restarted_worker_loads_the_cached_model_without_exporting(
    model: HTDemucs,
    cache: Path,
    forward: onnx_runtime.Forward,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = _files(cache)
    assert sorted(name.split(".", 1)[1] for name in before) == ["onnx", "opt.onnx"]
    capsys.readouterr()

    again = onnx_runtime.prepare(model, device="cpu", precision="fp32", cache_dir=cache)

    assert _events(capsys) == ["onnx_model_cached"]
    assert _files(cache) == before  # nothing exported or optimised again
    mix = torch.randn(1, 2, 88_200, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        assert (again(mix) - forward(mix)).abs().max().item() == 0.0


def test_other_weights_are_exported_again(
    cache: Path, forward: onnx_runtime.Forward, capsys: pytest.CaptureFixture[str]
) -> None:
    before = set(_files(cache))
    capsys.readouterr()
    other = _htdemucs(1)
    onnx_runtime.prepare(other, device="cpu", precision="fp32", cache_dir=cache)
    assert _events(capsys) == ["onnx_model_exported"]
    assert len(set(_files(cache)) - before) == 2


def test_the_cache_key_tells_apart_settings_that_no_module_shows() -> None:
    model = _htdemucs(0)
    other = HTDemucs(**small_htdemucs_kwargs(), t_max_period=5000.0).eval()
    other.load_state_dict(model.state_dict())
    assert repr(other) == repr(model)
    assert onnx_runtime.weights_signature(other) != onnx_runtime.weights_signature(model)
    assert onnx_runtime.weights_signature(_htdemucs(0)) == onnx_runtime.weights_signature(model)


def test_sessions_run_a_batch_concurrently_with_the_same_numbers(
    model: HTDemucs, cache: Path, forward: onnx_runtime.Forward
) -> None:
    torch.set_num_threads(2)  # one session per thread at most
    try:
        two = onnx_runtime.prepare(
            model, device="cpu", precision="fp32", cache_dir=cache, sessions=2
        )
    finally:
        torch.set_num_threads(1)
    assert len(two.__self__.networks[88_200]) == 2
    mix = torch.randn(3, 2, 88_200, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        assert (two(mix) - forward(mix)).abs().max().item() <= 1e-5


def test_without_a_cache_folder_it_still_runs(model: HTDemucs) -> None:
    forward = onnx_runtime.prepare(model, device="cpu", precision="fp32", cache_dir=None)
    mix = torch.randn(1, 2, 88_200, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        assert (forward(mix) - model(mix)).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"device": "cpu", "precision": "bf16"}, "fp32 only"),
        ({"device": "cuda", "precision": "fp32"}, "onnxruntime-gpu"),
        ({"device": "mps", "precision": "fp32"}, "does not run on mps"),
    ],
    ids=["bf16", "cuda-without-the-cuda-build", "mps"],
)
def test_what_it_cannot_run_is_refused_with_the_setting_to_change(
    model: HTDemucs, cache: Path, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(Unsupported, match=message) as info:
        onnx_runtime.prepare(model, cache_dir=cache, **settings)
    assert "STEMFLEET_ENGINE" in str(info.value)


def test_other_architectures_are_refused_and_not_supported(model: HTDemucs) -> None:
    hdemucs = get_model("demucs_unittest")  # an HDemucs
    with pytest.raises(Unsupported, match="HTDemucs models only, not HDemucs") as info:
        onnx_runtime.prepare(hdemucs, device="cpu", precision="fp32", cache_dir=None)
    assert "STEMFLEET_ENGINE" in str(info.value)
    assert not onnx_runtime.supports(hdemucs)
    assert not onnx_runtime.supports(BagOfModels([model, hdemucs]))
    assert onnx_runtime.supports(BagOfModels([model, _htdemucs(2)]))
    assert onnx_runtime.supports(model)


def test_cpu_lanes_share_the_sessions_and_equal_apply_model(tmp_path: Path, cache: Path) -> None:
    """The worker's CPU lanes call the forward from two threads at once, one segment each."""
    repo, name = write_random_htdemucs_repo(tmp_path / "models")
    settings = load_settings(
        model=name,
        model_repo=repo,
        device="cpu",
        engine="onnx",
        cpu_lanes=2,
        compile_cache=cache,
    )
    separator = Separator(settings)
    assert separator.engine == "onnx" and separator.lanes == 2
    wav = torch.from_numpy(tone(4.3))
    mean, std = normalisation(wav)
    params = JobParams(shifts=0)
    reference = apply_model(separator.loaded.model, ((wav - mean) / std)[None], shifts=0)
    reference = reference[0] * std + mean

    stems = separator.separate(wav, params)

    out = torch.stack([stems[source] for source in separator.sources])
    assert (out - reference).abs().max().item() <= 1e-4

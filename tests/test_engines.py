"""Every engine (worker/engines) gives Demucs' own `apply_model` numbers: fp32, max abs
difference <= 1e-4 per engine (TOLERANCE below), for HTDemucs, a weighted bag (as
htdemucs_ft), `--two-stems` and HDemucs (which eager runs and the engines that run HTDemucs'
network on their own refuse by name). Also the setting itself: `auto`, and the errors of an
unknown or unavailable engine.

The models are tiny random-weight ones; the compiled engine shares one Inductor cache for the
session: its first case compiles the tiny HTDemucs' network (about a minute on 2 cores), the
others reuse it.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
import torch
from audio_fixtures import one_torch_thread, tone, write_tiny_models
from demucs.apply import apply_model

from app.errors import ConfigError
from app.params import JobParams
from app.settings import load_settings
from worker.engine import normalisation
from worker.engines import REGISTRY, EngineUnavailable, prepare
from worker.engines.choice import AUTO, choose, resolve
from worker.pipeline import output_plan
from worker.separation import Separator

pytestmark = pytest.mark.slow

_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)

# max abs difference to apply_model, fp32, per engine (the same bound is stated in the README)
TOLERANCE = {"eager": 1e-4, "compiled": 1e-4, "onnx": 1e-4}
# compiled: the first case compiles (about a minute on 2 quiet cores, longer on a loaded machine)
ENGINES = [
    pytest.param(kind, marks=pytest.mark.timeout(900)) if kind == "compiled" else kind
    for kind in REGISTRY
]


@pytest.fixture(scope="module")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_models(tmp_path_factory.mktemp("engine-models"))


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compile-cache")


def _separator(engine: str, model: str, repo: Path | None, cache: Path) -> Separator:
    settings = load_settings(
        model=model,
        model_repo=repo,
        device="cpu",
        batch_size=2,
        engine=engine,
        compile_cache=cache,
    )
    return Separator(settings)


def _reference(separator: Separator, wav: torch.Tensor, params: JobParams) -> torch.Tensor:
    """Demucs' own path: apply_model on the normalised mix, denormalised ([S, C, T])."""
    mean, std = normalisation(wav)
    out = apply_model(
        separator.loaded.model,
        ((wav - mean) / std)[None],
        shifts=params.shifts,
        split=True,
        overlap=params.overlap,
        segment=params.segment,
    )
    return out[0] * std + mean


# the engines that run HTDemucs' network on their own (worker/engines/htdemucs_split.py)
SPLIT_ENGINES = ("onnx", "compiled")
CASES = {
    "htdemucs": ("tiny_htdemucs", 3.3, JobParams(shifts=0)),
    "bag": ("tiny_bag", 2.3, JobParams(shifts=0, segment=1.5, overlap=0.5)),
    "two-stems": ("tiny_htdemucs", 2.7, JobParams(shifts=0, two_stems="vocals")),
    "hdemucs": ("demucs_unittest", 2.1, JobParams(shifts=0, segment=0.8)),
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", list(CASES))
def test_engine_equals_demucs_apply_model(
    engine: str, case: str, model_repo: Path, compile_cache: Path
) -> None:
    model, seconds, params = CASES[case]
    repo = None if model == "demucs_unittest" else model_repo
    if engine in SPLIT_ENGINES and model == "demucs_unittest":  # HTDemucs only: a refusal
        with pytest.raises(
            EngineUnavailable, match=f"the {engine} engine runs HTDemucs models only, not HDemucs"
        ):
            _separator(engine, model, repo, compile_cache)
        return
    separator = _separator(engine, model, repo, compile_cache)
    assert separator.engine == engine
    wav = torch.from_numpy(tone(seconds))
    random.seed(0)
    reference = _reference(separator, wav, params)

    stems = separator.separate(wav, params)

    out = torch.stack([stems[source] for source in separator.sources])
    for name, indices in output_plan(separator.sources, params):
        got, want = out[indices].sum(0), reference[indices].sum(0)
        assert got.shape == wav.shape
        difference = (got - want).abs().max().item()
        assert difference <= TOLERANCE[engine], (engine, name, difference)


def _lanes_separator(repo: Path, engine: str, cache: Path | None = None) -> Separator:
    """The tiny HTDemucs on 2 threads in 2 CPU lanes (onnx's lanes: test_engine_onnx)."""
    settings = load_settings(
        model="tiny_htdemucs",
        model_repo=repo,
        device="cpu",
        cpu_lanes=2,
        threads=2,
        engine=engine,
        compile_cache=cache,
    )
    return Separator(settings)


def test_cpu_lanes_run_one_segment_per_thread_and_equal_apply_model(model_repo: Path) -> None:
    separator = _lanes_separator(model_repo, "eager")  # PyTorch's forward, which hooks see
    assert separator.lanes == 2
    assert separator.batch_size_for(separator.loaded, 88200) == 2  # a pass: one per lane
    seen: list[tuple[str, int, int]] = []
    separator.loaded.members[0].register_forward_hook(
        lambda _m, args, _out: seen.append(
            (threading.current_thread().name, torch.get_num_threads(), args[0].shape[0])
        )
    )
    wav = torch.from_numpy(tone(4.3))
    params = JobParams(shifts=0)
    reference = _reference(separator, wav, params)
    seen.clear()

    stems = separator.separate(wav, params)

    out = torch.stack([stems[source] for source in separator.sources])
    assert (out - reference).abs().max().item() <= 1e-5
    assert len(seen) == 3  # segments of 2 s every 1.5 s over 4.3 s
    for thread, threads, batch in seen:
        assert thread.startswith("segment-lane") and threads == 1 and batch == 1


@pytest.mark.timeout(900)
def test_compiled_lanes_run_the_graph_compiled_at_start(
    model_repo: Path, compile_cache: Path
) -> None:
    """A CPU lane runs on one intra-op thread and Dynamo guards the thread count, so the worker
    prepares the compiled engine under one thread: the first job compiles nothing again (a
    compile costs minutes on CPU) and equals apply_model."""
    from torch._dynamo.utils import counters

    separator = _lanes_separator(model_repo, "compiled", compile_cache)
    assert separator.lanes == 2
    wav = torch.from_numpy(tone(4.3))
    params = JobParams(shifts=0)
    reference = _reference(separator, wav, params)
    graphs = counters["stats"]["unique_graphs"]

    stems = separator.separate(wav, params)

    assert counters["stats"]["unique_graphs"] == graphs  # Dynamo traced nothing new
    out = torch.stack([stems[source] for source in separator.sources])
    assert (out - reference).abs().max().item() <= TOLERANCE["compiled"]


def test_cpu_lanes_leave_the_callers_thread_count_as_they_found_it(model_repo: Path) -> None:
    """torch.set_num_threads(1) in a lane also lowers the process-wide count that a thread
    which has not run a parallel op yet reads (the worker's model stage is such a thread): the
    lanes put it back, so decoding, encoding and a later one-lane model keep their threads."""
    separator = _lanes_separator(model_repo, "eager")  # PyTorch's forward, which hooks see
    after: list[int] = []

    def stage() -> None:
        separator.separate(torch.from_numpy(tone(4.3)), JobParams(shifts=0))
        after.append(torch.get_num_threads())

    thread = threading.Thread(target=stage)
    thread.start()
    thread.join()
    assert after == [2]


def test_auto_picks_the_measured_engine_of_the_device() -> None:
    assert resolve("auto", "cpu") == AUTO["cpu"] == "onnx"
    assert resolve("auto", "cuda") == AUTO["cuda"]
    assert resolve("eager", "cpu") == "eager"
    assert set(AUTO.values()) <= set(REGISTRY)


def test_auto_runs_onnx_on_cpu_only_where_it_runs_the_whole_model_in_fp32(
    model_repo: Path, tmp_path: Path
) -> None:
    """HTDemucs and a bag of them in fp32 get the CPU's engine; bf16, and a model the export
    does not support (demucs_unittest is not an HTDemucs), run eager instead of failing; an
    engine asked for by name is not second-guessed."""
    from demucs.pretrained import get_model

    htdemucs = get_model("tiny_htdemucs", repo=model_repo)
    bag = get_model("tiny_bag", repo=model_repo)
    unittest = get_model("demucs_unittest")
    assert choose("auto", "cpu", "fp32", htdemucs) == "onnx"
    assert choose("auto", "cpu", "fp32", bag) == "onnx"
    assert choose("auto", "cpu", "bf16", htdemucs) == "eager"
    assert choose("auto", "cpu", "fp32", unittest) == "eager"
    assert choose("auto", "cuda", "fp32", htdemucs) == AUTO["cuda"]
    assert choose("onnx", "cpu", "fp32", unittest) == "onnx"
    settings = load_settings(
        model="tiny_htdemucs", model_repo=model_repo, device="cpu", compile_cache=tmp_path
    )
    assert settings.engine == "auto"  # the default
    assert Separator(settings).engine == "onnx"


def test_an_unknown_engine_is_a_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STEMFLEET_ENGINE", "turbo")
    with pytest.raises(ConfigError, match="STEMFLEET_ENGINE"):
        load_settings()
    with pytest.raises(EngineUnavailable, match="STEMFLEET_ENGINE='turbo'"):
        resolve("turbo", "cpu")


def test_an_engine_that_cannot_run_here_is_a_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    member = torch.nn.Identity()
    with pytest.raises(EngineUnavailable, match="STEMFLEET_ENGINE=compiled runs on cpu and cuda"):
        prepare("compiled", member, device="mps", precision="fp32", cache_dir=None)
    # an engine whose module (or a dependency of it) is not installed on this worker
    monkeypatch.setitem(REGISTRY, "absent", "worker.engines.not_installed")
    with pytest.raises(EngineUnavailable, match="STEMFLEET_ENGINE=absent is not available"):
        prepare("absent", member, device="cpu", precision="fp32", cache_dir=None)

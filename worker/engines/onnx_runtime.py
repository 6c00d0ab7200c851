"""The ONNX Runtime engine: HTDemucs' network exported to ONNX, its STFT / iSTFT kept in PyTorch.

`prepare(model, device=..., precision=..., cache_dir=...)` returns a `Forward` with the model's
own contract (a batch of mix segments [B, C, T] float32 -> [B, S, C, T]); inside, a segment goes
through `htdemucs_split.front` (PyTorch), the exported `HTDemucsNetwork` (ONNX Runtime) and
`htdemucs_split.back` (PyTorch).

- Export: the TorchScript exporter (`torch.onnx.export(dynamo=False)`, opset 17), a dynamic
  batch and a fixed segment length (HTDemucs pads every segment to its training length). It
  needs the `onnx` package; the dynamo exporter works too but also needs onnxscript and took
  5x longer (bench/results/onnx_engine.md).
- Cache: `<cache_dir>/onnx/<key>.onnx`, the key hashing the model's weights and architecture
  with the export settings, and beside it ONNX Runtime's optimised model for this CPU / provider,
  so a restarted worker neither exports nor optimises again. Files are written under a
  temporary name and renamed: two workers sharing the folder never read half a file.
- Sessions: CPU or CUDA execution provider by `device`; on CPU `SESSIONS` sessions (at most one
  per torch thread) of `threads // SESSIONS` intra-op threads each run the items of a batch
  concurrently (ONNX Runtime releases the GIL), chosen by measurement
  (bench/results/onnx_engine.md). The worker's CPU lanes (worker.passes) call the forward from
  several threads at once, one segment each: those calls share the first session, each run on
  its caller's thread (one intra-op thread). With STEMFLEET_CPU_LANES=1 and the CPU's batch of
  one, a segment therefore runs on one intra-op thread.
- fp32 only: any other precision raises `Unsupported`, as does a model `htdemucs_split.check`
  refuses (HDemucs, Demucs v2).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from app.log import get_logger
from worker.engines import Forward
from worker.engines.htdemucs_split import (
    HTDemucsNetwork,
    Unsupported,
    back,
    check,
    front,
    input_length,
)

OPSET = 17
EXPORTER = "torchscript"
# CPU sessions that run a batch's items concurrently, at most one per torch thread (measured at
# batch 2 on 2 threads: two sessions of one thread 1.19x one session of two; at the CPU's
# default batch of 1 only one runs)
SESSIONS = 2
OPTIMIZATION = "extended"  # ONNX Runtime graph optimisation level (measured)
SPIN = True  # intra-op threads spin between kernels (ONNX Runtime's default; measured)
_LEVELS: dict[str, Callable[[Any], Any]] = {
    "basic": lambda ort: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": lambda ort: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": lambda ort: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def available() -> bool:
    """Whether ONNX Runtime and the ONNX exporter's dependency are installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def supports(model: Any) -> bool:
    """Whether `prepare` can run `model` (a member, or every member of a bag)."""
    members = getattr(model, "models", None) or [model]
    try:
        for member in members:
            check(member, "onnx")
    except Unsupported:
        return False
    return True


def prepare(
    model: Any, *, device: str, precision: str, cache_dir: Path | None, sessions: int = SESSIONS
) -> Forward:
    """A forward pass of `model` (one HTDemucs) on ONNX Runtime; raises `Unsupported` where
    the engine cannot run it. Exports (or loads from `cache_dir`) the training length's
    network at once; another input length (a model without use_train_segment) on first use."""
    check(model, "onnx")
    if precision != "fp32":
        raise Unsupported(
            f"the onnx engine runs fp32 only, not {precision}: set STEMFLEET_ENGINE=eager "
            "or compiled for reduced precision"
        )
    if not available():
        raise Unsupported(
            "the onnx engine needs the onnxruntime and onnx packages (the worker extra): "
            "set STEMFLEET_ENGINE=eager"
        )
    runner = _Runner(model, device, cache_dir, sessions)
    runner.network(input_length(model, int(model.segment * model.samplerate)))
    return runner.forward


def weights_signature(model: torch.nn.Module) -> str:
    """sha256 of the model's architecture (its repr and Demucs' recorded init arguments, which
    hold settings no module shows, such as the positional embedding's period) and every tensor
    of its state dict."""
    digest = hashlib.sha256(repr(model).encode())
    digest.update(repr(getattr(model, "_init_args_kwargs", None)).encode())
    for name, tensor in model.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def export(model: Any, length: int) -> bytes:
    """The ONNX bytes of `HTDemucsNetwork(model)` for segments of `length` frames, any batch."""
    network = HTDemucsNetwork(model).eval()
    device = next(model.parameters()).device
    mix = torch.zeros(1, model.audio_channels, length, device=device)
    with torch.no_grad():
        _, mag, padded = front(model, mix)
    batch = {0: "batch"}
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        path = Path(folder) / "network.onnx"
        warnings.simplefilter("ignore")  # the TorchScript exporter's tracer warnings
        torch.onnx.export(
            network,
            (mag, padded),
            path,
            input_names=["mag", "mix"],
            output_names=["x", "xt"],
            dynamic_axes={"mag": batch, "mix": batch, "x": batch, "xt": batch},
            opset_version=OPSET,
            dynamo=False,
        )
        return path.read_bytes()


class _Runner:
    """The sessions of one model on one device, one per input length, made on first use."""

    def __init__(self, model: Any, device: str, cache_dir: Path | None, sessions: int) -> None:
        self.model = model
        self.device = device
        self.cache_dir = cache_dir / "onnx" if cache_dir is not None else None
        self.sessions = max(1, min(sessions, torch.get_num_threads())) if device == "cpu" else 1
        self.lock = threading.Lock()
        self.networks: dict[int, list[Any]] = {}
        self.pool = ThreadPoolExecutor(self.sessions) if self.sessions > 1 else None
        self._signature: str | None = None

    def key(self, length: int) -> str:
        if self._signature is None:
            self._signature = weights_signature(self.model)
        settings = f"{EXPORTER}-opset{OPSET}-len{length}-torch{torch.__version__}"
        return hashlib.sha256(f"{self._signature}-{settings}".encode()).hexdigest()[:24]

    def network(self, length: int) -> list[Any]:
        with self.lock:
            if length not in self.networks:
                self.networks[length] = self._load(length)
            return self.networks[length]

    def _load(self, length: int) -> list[Any]:
        import onnxruntime as ort

        providers = _providers(self.device, ort.get_available_providers())
        variant = f"{OPTIMIZATION}-{providers[0][0]}-{ort.__version__}-{_cpu_capability()}"
        source, optimized = self._source(length, hashlib.sha256(variant.encode()).hexdigest()[:12])
        threads = max(1, torch.get_num_threads() // self.sessions)
        made = []
        for index in range(self.sessions):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            if not SPIN:
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.log_severity_level = 3  # not the warning that an optimised graph is
            # hardware specific: its cache key holds the CPU's vector width
            options.graph_optimization_level = (
                ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # optimised when it was cached
                if isinstance(source, Path) and source.name.endswith(".opt.onnx")
                else _LEVELS[OPTIMIZATION](ort)
            )
            partial = None
            if optimized is not None and index == 0:
                partial = optimized.with_name(f".{optimized.name}.{os.getpid()}.tmp")
                options.optimized_model_filepath = str(partial)
            where = str(source) if isinstance(source, Path) else source
            made.append(ort.InferenceSession(where, options, providers=providers))
            if optimized is not None and partial is not None:
                os.replace(partial, optimized)
        return made

    def _source(self, length: int, variant: str) -> tuple[bytes | Path, Path | None]:
        """What to load (ONNX bytes, the cached export, or the cached optimised model) and
        where to save ONNX Runtime's optimised model (None: it is cached, or no cache)."""
        if self.cache_dir is None:
            return export(self.model, length), None
        log = get_logger()
        key = self.key(length)
        path = self.cache_dir / f"{key}.onnx"
        optimized = self.cache_dir / f"{key}-{variant}.opt.onnx"
        if optimized.exists():
            log.info("onnx_model_cached", length=length, key=key)
            return optimized, None
        if not path.exists():
            _write_atomic(path, export(self.model, length))
            log.info("onnx_model_exported", length=length, key=key)
        return path, optimized

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        length = mix.shape[-1]
        sessions = self.network(input_length(self.model, length))
        if self.pool is None or mix.shape[0] == 1:
            return self._run(sessions[0], mix)
        parts = mix.tensor_split(min(len(sessions), mix.shape[0]))
        outputs = self.pool.map(self._run, sessions, parts)
        return torch.cat(list(outputs))

    def _run(self, session: Any, mix: torch.Tensor) -> torch.Tensor:
        model = self.model
        with torch.no_grad():
            z, mag, padded = front(model, mix)
            if self.device == "cpu":
                x, xt = session.run(None, {"mag": _numpy(mag), "mix": _numpy(padded)})
                x, xt = torch.from_numpy(x), torch.from_numpy(xt)
            else:
                x, xt = _run_on_device(session, model, mag, padded)
            return back(model, z, x, xt, mix.shape[-1])


def _numpy(tensor: torch.Tensor) -> Any:
    return tensor.detach().float().contiguous().numpy()


def _run_on_device(
    session: Any, model: Any, mag: torch.Tensor, mix: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One CUDA run with the inputs and outputs bound in place (no host copies)."""
    import numpy as np

    mag, mix = mag.float().contiguous(), mix.float().contiguous()
    batch, sources = mag.shape[0], len(model.sources)
    x = mag.new_empty(batch, sources, *mag.shape[1:])
    xt = mix.new_empty(batch, sources, *mix.shape[1:])
    binding = session.io_binding()
    index = mag.device.index or 0
    for name, tensor in (("mag", mag), ("mix", mix)):
        binding.bind_input(name, "cuda", index, np.float32, list(tensor.shape), tensor.data_ptr())
    for name, tensor in (("x", x), ("xt", xt)):
        binding.bind_output(name, "cuda", index, np.float32, list(tensor.shape), tensor.data_ptr())
    torch.cuda.current_stream(mag.device).synchronize()  # the STFT has written the inputs
    session.run_with_iobinding(binding)
    binding.synchronize_outputs()
    return x, xt


def _providers(device: str, available: list[str]) -> list[tuple[str, dict[str, Any]]]:
    if device == "cpu":
        return [("CPUExecutionProvider", {})]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise Unsupported(
                "the onnx engine on cuda needs ONNX Runtime's CUDA build (onnxruntime-gpu): "
                "set STEMFLEET_ENGINE=eager or compiled"
            )
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": index}), ("CPUExecutionProvider", {})]
    raise Unsupported(f"the onnx engine does not run on {device}: set STEMFLEET_ENGINE=eager")


def _cpu_capability() -> str:
    """The vector width ONNX Runtime's optimised CPU graphs depend on (AVX2, AVX512...)."""
    return str(torch.backends.cpu.get_cpu_capability())


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        f.write(data)
    os.replace(f.name, path)

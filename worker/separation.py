"""The `Separator` facade: the configured Demucs model kept warm on its device, a few models
loaded on demand, the batch size, and separation of in-memory mixes and streams.

Loading models is `worker.models`; one input's segment-by-segment arithmetic, equal to Demucs'
own `apply_model`, is `worker.engine`; the forward passes several inputs share are
`worker.passes`.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any

import torch

from app.clock import Clock, SystemClock
from app.errors import PermanentJobError
from app.log import get_logger
from app.params import JobParams
from app.settings import Settings
from worker.engine import ProgressFn, StopFn, Stream, StreamResult, normalisation, tensor_reader
from worker.engines.choice import cpu_lanes, resolve
from worker.models import LoadedModel, ModelFailures, RunOptions, load_onto, pick_device
from worker.passes import PassPlan, run_streams

# On CPU a batch of several segments is slower than one at a time (bench/results/separation.md:
# htdemucs forward passes took 36-79 % longer at batch 4 on 2 cores): cores are already busy
# within one segment, and bigger activations miss the caches. Batching pays on accelerators.
# Several segments at once, one per core in lanes of one thread each (worker.passes), measured
# faster than one segment on all cores (bench/results/engines.md): a CPU pass holds one
# segment per lane.
CPU_BATCH_SIZE = 1
MAX_AUTO_BATCH = 32
MAX_AUTO_GROUP = 8  # jobs separated together by default where a pass holds several segments
CACHED_MODELS = 2  # models loaded on demand, besides the configured one


class Separator:
    """The configured Demucs model, loaded once and kept warm, plus a few on-demand models."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.failures = ModelFailures(clock or SystemClock())
        if settings.threads > 0:
            torch.set_num_threads(settings.threads)
        self.device = pick_device(settings.device)
        self.precision = settings.precision
        if self.precision == "fp16" and self.device == "cpu":
            get_logger().warning(
                "precision_unsupported", precision="fp16", device="cpu", using="fp32"
            )
            self.precision = "fp32"
        resolve(settings.engine, self.device)  # an unknown engine fails before any load
        self.lanes = cpu_lanes(settings.cpu_lanes) if self.device == "cpu" else 1
        self.run_options = RunOptions(
            self.device,
            self.precision,
            engine=settings.engine,
            cache_dir=settings.compile_cache_dir,
            call_threads=1 if self.lanes > 1 else None,  # a lane runs on one thread
        )
        self.model_name = settings.model
        self._cache: OrderedDict[str, LoadedModel] = OrderedDict()
        self._batch_sizes: dict[tuple[str, int], int] = {}
        self.loaded = self._load(settings.model)
        self.samplerate = self.loaded.samplerate
        self.audio_channels = self.loaded.audio_channels
        self.sources = list(self.loaded.sources)
        self.engine = self.loaded.engine  # the configured model's, `auto` resolved for it

    # --- models ----------------------------------------------------------------------------
    def _load(self, name: str) -> LoadedModel:
        return load_onto(name, self.settings.model_repo, self.run_options)

    def model_for(self, name: str | None) -> LoadedModel:
        """The model a job asks for (None: the configured one), loading it if needed. Up to
        CACHED_MODELS other models stay loaded, least recently used dropped first. A model that
        could not be loaded raises the same error again, without trying, for a while (see
        worker/models.py)."""
        if name is None or name == self.model_name:
            return self.loaded
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        self.failures.check(name)
        try:
            loaded = self._load(name)
        except PermanentJobError as exc:
            self.failures.remember(name, exc)
            raise
        self._cache[name] = loaded
        while len(self._cache) > CACHED_MODELS:
            self._cache.popitem(last=False)
            if self.device == "cuda":
                torch.cuda.empty_cache()
        return loaded

    def check_params(self, loaded: LoadedModel, params: JobParams) -> None:
        """Params that the model cannot honour -> PermanentJobError("invalid_params")."""
        wanted = list(params.stems or []) + ([params.two_stems] if params.two_stems else [])
        missing = [stem for stem in wanted if stem not in loaded.sources]
        if missing:
            raise PermanentJobError(
                f"model {loaded.name!r} has no stem {', '.join(map(repr, missing))}: it "
                f"separates {loaded.sources} (htdemucs_6s adds guitar and piano)",
                kind="invalid_params",
            )
        limit = loaded.max_segment()
        if params.segment is not None and params.segment > limit:
            raise PermanentJobError(
                f"segment {params.segment:g} s is longer than model {loaded.name!r} allows "
                f"({limit:.2f} s): give a segment of at most {limit:.2f} s or leave it unset",
                kind="invalid_params",
            )

    # --- batch size ------------------------------------------------------------------------
    def batch_size_for(self, loaded: LoadedModel, segment_frames: int) -> int:
        if self.settings.batch_size > 0:
            return self.settings.batch_size
        if self.device != "cuda":
            return CPU_BATCH_SIZE * self.lanes
        key = (loaded.name, segment_frames)
        if key not in self._batch_sizes:
            self._batch_sizes[key] = self._measure_batch_size(loaded, segment_frames)
        return self._batch_sizes[key]

    def auto_group_size(self) -> int:
        """How many queued jobs to separate together when STEMFLEET_GROUP_JOBS is 0: as many
        as a pass holds (on CPU one per lane), up to MAX_AUTO_GROUP, so short clips fill large
        accelerator batches and every CPU lane."""
        segment = int(float(self.loaded.members[0].segment) * self.loaded.samplerate)
        return max(1, min(MAX_AUTO_GROUP, self.batch_size_for(self.loaded, segment)))

    def _measure_batch_size(self, loaded: LoadedModel, segment_frames: int) -> int:
        """Run one segment, see how much memory it took, fill 70% of what is free."""
        forward = loaded.forwards[0]
        probe = torch.zeros(1, loaded.audio_channels, segment_frames, device=self.device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        autocast: contextlib.AbstractContextManager[Any] = (
            torch.autocast("cuda", dtype=dtype) if dtype else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            forward(probe)
        per_item = max(1, torch.cuda.max_memory_allocated() - before)
        free, _ = torch.cuda.mem_get_info()
        size = int(max(1, min(MAX_AUTO_BATCH, 0.7 * free // per_item)))
        get_logger().info(
            "batch_size_chosen", model=loaded.name, batch_size=size, per_item=per_item
        )
        return size

    # --- separation ------------------------------------------------------------------------
    def separate(
        self,
        wav: torch.Tensor,
        params: JobParams,
        *,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> dict[str, torch.Tensor]:
        """Separate a float32 [C, T] mix at the model's rate into {source: [C, T]}."""
        loaded = self.model_for(params.model)
        if wav.dim() != 2 or wav.shape[0] != loaded.audio_channels:
            raise ValueError(
                f"expected a [{loaded.audio_channels}, T] mix, got shape {tuple(wav.shape)}"
            )
        mean, std = normalisation(wav)
        out = torch.empty(len(loaded.sources), wav.shape[0], wav.shape[-1])
        position = 0

        def collect(block: torch.Tensor) -> None:
            nonlocal position
            out[..., position : position + block.shape[-1]] = block
            position += block.shape[-1]

        self.run(
            loaded,
            Stream(
                wav.shape[-1], tensor_reader(wav), mean, std, params, collect, progress, should_stop
            ),
        )
        return dict(zip(loaded.sources, out, strict=True))

    def run(self, loaded: LoadedModel, stream: Stream) -> float:
        """Stream one separation: the mix comes from `stream.read_mix`, the finished output goes
        to `stream.sink` in order ([S, C, n] blocks adding up to `stream.length`). Returns the
        seconds spent in forward passes; raises what stopped it (JobCancelled, ...)."""
        (result,) = self.run_together(loaded, [stream])
        if result.error is not None:
            raise result.error
        return result.forward_s

    def run_together(self, loaded: LoadedModel, streams: list[Stream]) -> list[StreamResult]:
        """Several separations with the same model, sharing forward passes where their
        segments line up (see `worker.passes`). Each stream ends on its own: its result holds
        the error that stopped it, if any, and the others go on. Params the model cannot honour
        and a failing forward pass raise for all."""
        for stream in streams:
            self.check_params(loaded, stream.params)
        longest = max(s.params.segment or float(loaded.members[0].segment) for s in streams)
        batch_size = self.batch_size_for(loaded, int(longest * loaded.samplerate))
        plan = PassPlan(self.device, self.precision, batch_size, self.lanes)
        return run_streams(loaded, streams, plan)

"""Benchmark 2: separation throughput of the stemfleet worker, side by side with the Demucs
command line (one process per clip, the way a user runs it) and with Demucs' `apply_model` called
in a loop in one process (model loaded once), on the same clips, model, weights, machine and
threads (issue 8).

Run from the repository root after ./scripts/install.sh:

    .venv/bin/python bench/bench_separation.py                 # 10 clips of 30 s, CPU
    .venv/bin/python bench/bench_separation.py --quick         # 2 clips of 5 s: a smoke check
    .venv/bin/python bench/bench_separation.py --device cuda --precision bf16

- Model: htdemucs with random weights (scripts/fetch_model.py --random-weights: the published
  architecture and FLOPs; the real weights cannot be downloaded everywhere), saved once to a
  local Demucs model folder that all three variants load.
- Clips: synthetic songs from scripts/sample_clip.py, 44.1 kHz stereo wav int16.
- Demucs' defaults everywhere: shifts=1, overlap=0.25, the model's 7.8 s segment; output: four
  wav int16 stems per clip.
- stemfleet: a throwaway Postgres (app.pgserver via bench/_common.py), migrations, local storage
  in a temporary folder, one `Worker` looping; inputs are uploaded first (as users do). Measured
  twice: (1) "batch": all jobs enqueued back to back, wall time from the first enqueue to the
  moment the last job is seen succeeded (the queue's NOTIFY wakes the benchmark); (2) one job
  per clip, enqueue -> succeeded, in rounds with the two Demucs variants below.
- Demucs CLI: `python -m demucs.separate -n htdemucs --repo DIR -o OUT -d DEVICE clip.wav`, a
  fresh process per clip.
- Rounds: each clip goes through stemfleet, the CLI and the apply_model loop, the order
  rotating from clip to clip, so other work on a shared machine slows all three alike; each
  one's wall time is the sum over its clips. The headline ratios come from the rounds.
- apply_model loop: load the model once, then per clip decode (sphn, as the CLI) + normalise +
  `apply_model` + save each stem (`demucs.audio.save_audio`, as the CLI); on an accelerator it
  runs under the same autocast precision as stemfleet, the CLI always in fp32 (it has no
  precision option).
- Threads: --threads for torch in this process, OMP_NUM_THREADS / MKL_NUM_THREADS for the CLI
  processes, STEMFLEET_THREADS for the worker.
- Forward passes are timed with forward hooks on the model (bench/_separation_common.py).

Prints a markdown table and writes bench/results/separation.md (--quick writes no results file
unless --results is given).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from app.params import parse_params
from app.settings import load_settings
from bench._common import load_average, markdown_table, now_utc
from bench._separation_common import (
    MODEL_NAME,
    ROOT,
    STEMS,
    ForwardTimer,
    JobsRun,
    WorkerBench,
    audio_seconds,
    check_device,
    check_stem_files,
    children_cpu_s,
    fmt,
    frames_of,
    machine_facts,
    members,
    prepare_model,
    quiet_logs,
    say,
    use_threads,
    write_clips,
)
from worker.separation import Separator

RESULTS = ROOT / "bench" / "results" / "separation.md"
TARGET_CPU = 1.5
TARGET_GPU = 2.0


@dataclass
class Variant:
    name: str
    wall_s: float
    cpu_s: float
    audio_s: float
    load_before: str
    load_after: str
    forward_s: float | None = None
    forward_calls: int | None = None
    forward_items: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.audio_s / self.wall_s


# --- stemfleet -----------------------------------------------------------------------------------
STAGES = ("queue_wait", "download", "decode", "separate", "encode", "upload")


def stemfleet_extra(bench: WorkerBench, jobs_runs: list[JobsRun]) -> dict[str, Any]:
    assert bench.separator is not None
    loaded = bench.separator.loaded
    segment = int(float(loaded.members[0].segment) * loaded.samplerate)
    return {
        "model_load_s": bench.model_load_s,
        "worker_start_s": bench.worker_start_s,
        "batch_size": bench.separator.batch_size_for(loaded, segment),
        "group_size": bench.worker.group_size if bench.worker else 1,
        "stages": {name: sum(r.stage_sum(name) for r in jobs_runs) for name in STAGES},
        "postgres": bench.postgres,
    }


def check_jobs(bench: WorkerBench, run: JobsRun, clips: list[Path]) -> None:
    for job, clip in zip(run.jobs, clips, strict=True):
        check_stem_files(bench.stem_files(job), frames_of(clip), f"stemfleet job {job.id}")


def run_batch(bench: WorkerBench, clips: list[Path]) -> Variant:
    """All clips' jobs enqueued back to back; first enqueue -> last job succeeded."""
    keys = bench.upload(clips)
    say(f"stemfleet: {len(keys)} jobs enqueued at once")
    run = bench.run_jobs(keys, timeout=max(3600.0, 20 * audio_seconds(clips)))
    check_jobs(bench, run, clips)
    return Variant(
        "stemfleet worker, all jobs queued at once (first enqueue → last succeeded)",
        run.wall_s,
        run.cpu_s,
        audio_seconds(clips),
        run.load_before,
        run.load_after,
        run.forward_s,
        run.forward_calls,
        run.forward_items,
        {**stemfleet_extra(bench, [run]), "db_span_s": run.db_span_s},
    )


@dataclass
class Tally:
    """Per-clip wall and CPU seconds of one variant, and the load around its clips."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    per_clip_s: list[float] = field(default_factory=list)
    load_before: str = ""
    load_after: str = ""

    def add(self, wall: float, cpu: float, load_before: str) -> None:
        self.load_before = self.load_before or load_before
        self.wall_s += wall
        self.cpu_s += cpu
        self.per_clip_s.append(wall)
        self.load_after = load_average()


class StemfleetRunner:
    """One job per clip through the queue (enqueue -> succeeded), the worker kept warm."""

    def __init__(self, bench: WorkerBench) -> None:
        self.bench = bench
        self.tally = Tally()
        self.runs: list[JobsRun] = []

    def run(self, clip: Path) -> None:
        keys = self.bench.upload([clip])
        run = self.bench.run_jobs(keys)
        check_jobs(self.bench, run, [clip])
        self.tally.add(run.wall_s, run.cpu_s, run.load_before)
        self.runs.append(run)

    def variant(self, clips: list[Path]) -> Variant:
        t = self.tally
        return Variant(
            "stemfleet worker, one job per clip (enqueue → succeeded)",
            t.wall_s,
            t.cpu_s,
            audio_seconds(clips),
            t.load_before,
            t.load_after,
            sum(r.forward_s for r in self.runs),
            sum(r.forward_calls for r in self.runs),
            sum(r.forward_items for r in self.runs),
            {**stemfleet_extra(self.bench, self.runs), "per_clip_s": t.per_clip_s},
        )


# --- the Demucs command line and apply_model, clip by clip, interleaved ------------------------
def cli_startup_s() -> float:
    """Interpreter start + `import demucs.separate` (torch included): paid by every CLI run."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import demucs.separate"], check=True)
    return time.perf_counter() - started


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager[Any]:
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=dtype)


class CliRunner:
    """`python -m demucs.separate` in a fresh process per clip, as a user runs it."""

    def __init__(self, args: argparse.Namespace, workdir: Path, repo: Path) -> None:
        self.args, self.out, self.repo = args, workdir / "cli", repo
        self.startup_s = cli_startup_s()
        self.tally = Tally()

    def run(self, clip: Path) -> None:
        command = [
            sys.executable, "-m", "demucs.separate", "-n", MODEL_NAME, "--repo", str(self.repo),
            "-o", str(self.out), "-d", self.args.device, str(clip),
        ]  # fmt: skip
        load = load_average()
        cpu0, started = children_cpu_s(), time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"demucs.separate failed on {clip.name}:\n{done.stderr[-3000:]}")
        self.tally.add(wall, children_cpu_s() - cpu0, load)
        folder = self.out / MODEL_NAME / clip.stem
        check_stem_files(
            {stem: folder / f"{stem}.wav" for stem in STEMS},
            frames_of(clip),
            f"Demucs CLI on {clip.name}",
        )

    def variant(self, clips: list[Path]) -> Variant:
        t = self.tally
        return Variant(
            "Demucs CLI (one process per clip)",
            t.wall_s,
            t.cpu_s,
            audio_seconds(clips),
            t.load_before,
            t.load_after,
            extra={"startup_s": self.startup_s, "per_clip_s": t.per_clip_s},
        )


class ApplyRunner:
    """Demucs' `apply_model` in this process, the model loaded once: per clip the CLI's own
    decode (sphn + convert_audio), normalisation, apply_model and save_audio."""

    def __init__(self, args: argparse.Namespace, workdir: Path, repo: Path) -> None:
        from demucs.pretrained import get_model

        self.args, self.out = args, workdir / "apply"
        started = time.perf_counter()
        self.model = get_model(MODEL_NAME, repo=repo)
        self.model.to(args.device)
        self.model.eval()
        self.load_s = time.perf_counter() - started
        self.timer = ForwardTimer(members(self.model), args.device)
        self.tally = Tally()

    def run(self, clip: Path) -> None:
        import sphn
        from demucs.apply import apply_model
        from demucs.audio import convert_audio, save_audio

        model = self.model
        load = load_average()
        cpu0, started = time.process_time(), time.perf_counter()
        data, rate = sphn.read(str(clip))
        wav = convert_audio(
            torch.from_numpy(data), int(rate), model.samplerate, model.audio_channels
        )
        ref = wav.mean(0)
        mean, std = ref.mean(), ref.std() + 1e-8
        with autocast(self.args.device, self.args.precision):
            sources = apply_model(
                model, ((wav - mean) / std)[None], shifts=1, split=True, overlap=0.25,
                device=self.args.device,
            )  # fmt: skip
        sources = sources.float().cpu() * std + mean
        folder = self.out / clip.stem
        folder.mkdir(parents=True, exist_ok=True)
        for name, source in zip(model.sources, sources[0], strict=True):
            save_audio(source, folder / f"{name}.wav", samplerate=model.samplerate)
        self.tally.add(time.perf_counter() - started, time.process_time() - cpu0, load)
        check_stem_files(
            {stem: folder / f"{stem}.wav" for stem in STEMS},
            frames_of(clip),
            f"apply_model loop on {clip.name}",
        )

    def variant(self, clips: list[Path]) -> Variant:
        t = self.tally
        self.timer.close()
        return Variant(
            "Demucs apply_model loop (one process, model loaded once)",
            t.wall_s,
            t.cpu_s,
            audio_seconds(clips),
            t.load_before,
            t.load_after,
            self.timer.seconds,
            self.timer.calls,
            self.timer.items,
            extra={"model_load_s": self.load_s},
        )


def run_interleaved(
    args: argparse.Namespace,
    workdir: Path,
    repo: Path,
    clips: list[Path],
    bench: WorkerBench | None,
) -> dict[str, Variant]:
    """stemfleet (one job per clip), the CLI and the apply_model loop clip by clip, rotating
    which goes first, so that whatever else runs on the machine slows all of them alike."""
    runners: dict[str, StemfleetRunner | CliRunner | ApplyRunner] = {}
    if "stemfleet" in args.variants:
        assert bench is not None
        runners["stemfleet"] = StemfleetRunner(bench)
    if "cli" in args.variants:
        runners["cli"] = CliRunner(args, workdir, repo)
    if "apply" in args.variants:
        runners["apply"] = ApplyRunner(args, workdir, repo)
    say(f"{', '.join(runners)}: {len(clips)} clips, interleaved")
    order = list(runners.values())
    for index, clip in enumerate(clips):
        turn = index % len(order)
        for runner in order[turn:] + order[:turn]:
            runner.run(clip)
        say(f"clip {index + 1}/{len(clips)} done")
    return {key: runner.variant(clips) for key, runner in runners.items()}


# --- batch size on one clip --------------------------------------------------------------------
def batch_compare(
    args: argparse.Namespace, repo: Path, clip: Path, sizes: list[int]
) -> list[dict[str, Any]]:
    from worker.audio import decode

    rows = []
    for size in sizes:
        settings = load_settings(
            model=MODEL_NAME,
            model_repo=repo,
            device=args.device,
            precision=args.precision,
            threads=args.threads,
            batch_size=size,
        )
        separator = Separator(settings)
        loaded = separator.loaded
        chosen = separator.batch_size_for(loaded, int(float(loaded.members[0].segment) * 44100))
        wav = decode(clip, samplerate=loaded.samplerate, channels=loaded.audio_channels)
        timer = ForwardTimer(loaded.members, separator.device)
        load = load_average()
        started = time.perf_counter()
        separator.separate(wav, parse_params({}))
        wall = time.perf_counter() - started
        timer.close()
        say(f"batch {chosen}: {wall:.1f} s ({timer.calls} passes)")
        rows.append(
            {
                "batch": chosen,
                "wall_s": wall,
                "forward_s": timer.seconds,
                "calls": timer.calls,
                "items": timer.items,
                "load": load,
            }
        )
        del separator, loaded
    return rows


# --- report --------------------------------------------------------------------------------------
def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def cpu_use(variant: Variant, threads: int) -> float:
    """The share of its threads' time a variant got, relative to what it could use: the CLI's
    start-up (interpreter and imports) runs on one thread."""
    use = variant.cpu_s / (variant.wall_s * threads)
    startup = variant.extra.get("startup_s", 0.0) * len(variant.extra.get("per_clip_s", []))
    most = 1 - startup * (threads - 1) / (threads * variant.wall_s)
    return use / most


def results_table(variants: list[Variant], ours: Variant | None, threads: int) -> str:
    rows = []
    for v in variants:
        forward = (
            f"{fmt(v.forward_s)} ({v.forward_calls} passes, {v.forward_items} segments)"
            if v.forward_s is not None
            else "not timed (other process)"
        )
        rows.append(
            [
                v.name,
                fmt(v.wall_s),
                f"**{v.rate:.3f}**",
                "-" if ours is None else f"**{ratio(v.wall_s, ours.wall_s)}**",
                f"{fmt(v.cpu_s)} ({v.cpu_s / v.audio_s:.2f} per audio s)",
                "-" if ours is None else ratio(v.cpu_s, ours.cpu_s),
                f"{100 * cpu_use(v, threads):.0f}%",
                forward,
                f"{v.load_before.split(' / ')[0]} → {v.load_after.split(' / ')[0]}",
            ]
        )
    header = [
        "variant",
        "wall s",
        "audio s / wall s",
        "stemfleet speed-up: its wall / stemfleet's",
        "CPU s",
        "its CPU s / stemfleet's",
        "CPU use (of the thread time it could use)",
        "model forward s",
        "load avg (1 min) before → after",
    ]
    return markdown_table(header, rows)


def verdict(value: float, target: float) -> str:
    return "met" if value >= target else f"missed by {target / value:.2f}x"


def analysis(
    args: argparse.Namespace, variants: dict[str, Variant], batches: list[dict[str, Any]]
) -> str:
    ours = variants.get("stemfleet")
    cli, loop, batch = variants.get("cli"), variants.get("apply"), variants.get("batch")
    lines: list[str] = []
    target = TARGET_GPU if args.device == "cuda" else TARGET_CPU
    if ours and cli:
        speedup = cli.wall_s / ours.wall_s
        lines.append(
            f"- **Target {target:g}x the Demucs CLI on {args.device}: {speedup:.2f}x "
            f"(interleaved, wall time), {verdict(speedup, target)}.** By CPU seconds: "
            f"{cli.cpu_s / ours.cpu_s:.2f}x."
        )
    if batch and cli:
        speedup = cli.wall_s / batch.wall_s
        lines.append(
            f"- All jobs queued at once (the issue's setting: first enqueue → last succeeded, "
            f"run before the interleaved rounds): {speedup:.2f}x the CLI's wall, "
            f"{verdict(speedup, target)}; by CPU seconds {cli.cpu_s / batch.cpu_s:.2f}x. "
            "It ran at another time than the CLI, so contention can differ (compare the CPU "
            "use column)."
        )
    if cli:
        startup = cli.extra["startup_s"]
        load_s = loop.extra["model_load_s"] if loop else 0.0
        per_run = startup + load_s
        clips = len(cli.extra["per_clip_s"])
        lines.append(
            f"- Start-up the CLI pays per clip: interpreter + imports {startup:.1f} s (measured "
            f"alone) + model load {load_s:.1f} s (measured in the apply_model loop) = "
            f"{per_run:.1f} s, x{clips} clips = {per_run * clips:.0f} s of its {cli.wall_s:.0f} s "
            f"wall ({100 * per_run * clips / cli.wall_s:.0f}%)."
        )
    for variant in (ours, batch):
        if variant is None:
            continue
        stages = variant.extra["stages"]
        forward = variant.forward_s or 0.0
        lines.append(
            f"- {variant.name}, summed over its jobs (the job rows' `timings`): queue wait "
            f"{stages['queue_wait']:.1f} s, download {stages['download']:.2f} s, decode "
            f"{stages['decode']:.2f} s, separate {stages['separate']:.1f} s (forward passes "
            f"{forward:.1f} s; segment windows, blending and accumulation "
            f"{stages['separate'] - forward:.1f} s), encode {stages['encode']:.2f} s, upload "
            f"{stages['upload']:.2f} s."
        )
    if batch:
        lines.append(
            "- With all jobs queued, the next job's download and the last job's upload overlap "
            "the model (prefetch, upload-behind); decode and encode run on the model's thread; "
            "queue wait there is jobs waiting their turn. Database clock cross-check (first "
            f"created_at → last finished_at): {batch.extra['db_span_s']:.1f} s."
        )
    some = ours or batch
    if some:
        lines.append(
            f"- One-time worker start-up, not in any wall time: model load "
            f"{some.extra['model_load_s']:.1f} s, register + heartbeats + LISTEN "
            f"{some.extra['worker_start_s']:.2f} s. Batch size: {some.extra['batch_size']}; jobs "
            f"separated together when several are queued: {some.extra.get('group_size', 1)}."
        )
    if ours and loop and ours.forward_s and loop.forward_s:
        lines.append(
            f"- Forward passes: stemfleet {ours.forward_s:.1f} s in {ours.forward_calls} passes "
            f"vs the apply_model loop's {loop.forward_s:.1f} s in {loop.forward_calls} passes "
            f"(batch 1): {100 * (ours.forward_s / loop.forward_s - 1):+.0f}%. Outside the "
            f"forward passes: stemfleet {ours.wall_s - ours.forward_s:.1f} s, apply_model loop "
            f"{loop.wall_s - loop.forward_s:.1f} s."
        )
        if cli:
            lines.append(
                f"- Ceiling: a runner whose forward passes take as long as Demucs' own "
                f"({loop.forward_s:.0f} s here) is at most {cli.wall_s / loop.forward_s:.2f}x "
                f"the CLI even with zero start-up and zero I/O: on {args.device} the model's "
                f"arithmetic is {100 * loop.forward_s / cli.wall_s:.0f}% of the CLI's wall "
                "time. Only faster forward passes (bigger batches on an accelerator, reduced "
                "precision) move the ratio past that."
            )
    if batches:
        base = batches[0]
        parts = [
            f"batch {b['batch']}: {b['forward_s']:.1f} s forward "
            f"({100 * (b['forward_s'] / base['forward_s'] - 1):+.0f}% vs batch {base['batch']})"
            for b in batches
        ]
        lines.append("- Batch size on one clip: " + "; ".join(parts) + ".")
        slower = [b for b in batches[1:] if b["forward_s"] > 1.05 * base["forward_s"]]
        if args.device == "cpu" and base["batch"] == 1 and slower:
            lines.append(
                "- On this CPU a batch of several segments is slower than one segment at a "
                "time for the same arithmetic (bigger activations: more memory traffic and "
                "page faults, less cache reuse); batching pays on accelerators. The worker's "
                "CPU default is `CPU_BATCH_SIZE` in worker/separation.py."
            )
    low = [v.name for v in variants.values() if cpu_use(v, args.threads) < 0.85]
    if args.device == "cpu" and low:
        lines.append(
            f"- Contention: {'; '.join(low)} got less than 85% of the thread time it could "
            "use (the CLI's single-threaded start-up discounted): other processes shared the "
            "cores, so its wall time is inflated; CPU seconds compare better."
        )
    return "\n".join(lines)


def batch_table(batches: list[dict[str, Any]]) -> str:
    rows = [
        [
            b["batch"],
            fmt(b["wall_s"]),
            fmt(b["forward_s"]),
            f"{b['calls']} / {b['items']}",
            b["load"].split(" / ")[0],
        ]
        for b in batches
    ]
    header = ["batch size", "wall s", "forward s", "passes / segments", "load avg (1 min)"]
    return markdown_table(header, rows)


def report(
    args: argparse.Namespace,
    facts: dict[str, str],
    variants: dict[str, Variant],
    batches: list[dict[str, Any]],
    load_start: str,
    load_end: str,
    runtime_s: float,
    command: str,
) -> str:
    facts = {
        **facts,
        "load average (1/5/15 min) at start": load_start,
        "load average at end": load_end,
    }
    ours = variants.get("stemfleet") or variants.get("batch")
    if ours:
        facts["postgres"] = ours.extra["postgres"]
    settings = [
        f"- Clips: {args.clips} x {args.seconds:g} s synthetic songs (scripts/sample_clip.py), "
        "44.1 kHz stereo wav int16, one per job / CLI run / loop turn.",
        "- Model: htdemucs, random weights (scripts/fetch_model.py --random-weights: the "
        "published architecture, 41.47 M parameters, the same layers and FLOPs as the real "
        "weights), one local model folder loaded by every variant.",
        "- Demucs defaults for all: shifts=1, overlap=0.25, segment 7.8 s (the model's); four "
        "stems written as wav int16.",
        f"- Device {args.device}, precision {args.precision} (stemfleet and the apply_model "
        "loop; the CLI has no precision option and runs fp32), "
        f"{args.threads} thread(s) for every variant.",
        "- stemfleet worker batch size: "
        + (
            f"{args.batch_size} (STEMFLEET_BATCH_SIZE)"
            if args.batch_size
            else "the worker's default (STEMFLEET_BATCH_SIZE=0)"
        ),
    ]
    parts = [
        "# Benchmark 2: separation throughput, stemfleet vs the Demucs command line",
        "",
        f"Run {now_utc()} with `{command}` (whole run: {runtime_s / 60:.1f} min).",
        "",
        "## Machine",
        "",
        markdown_table(["", ""], list(facts.items())),
        "",
        "## Settings",
        "",
        *settings,
        "",
        "## Results",
        "",
        results_table(list(variants.values()), ours, args.threads),
        "",
        analysis(args, variants, batches),
        "",
    ]
    if batches:
        parts += [
            "## Batch size (stemfleet's separator on one clip, in process)",
            "",
            batch_table(batches),
            "",
        ]
    parts += [
        "## How it was measured",
        "",
        "- stemfleet: a throwaway Postgres (app.pgserver.LocalPostgres, normal durability) "
        "migrated with app.migrate, local storage in a temporary folder, one `worker.loop.Worker` "
        "looping on a thread of the benchmark process (model loaded and worker registered "
        "before any clock starts: a worker is a long-lived process). Inputs are put in storage "
        "first (a user's upload); a clock starts before `Queue.enqueue` and stops when the "
        "job's row is seen `succeeded` (the benchmark LISTENs to the job events). Every job's "
        "four stems are read back and checked (int16, stereo, the input's length).",
        "- Two stemfleet measurements: *all jobs queued at once* (every clip enqueued back to "
        "back, first enqueue → last succeeded: the issue's setting, where prefetch and "
        "upload-behind overlap consecutive jobs), run first; then *one job per clip*, enqueued "
        "when the previous one has succeeded, in rounds with the two Demucs variants.",
        "- Rounds: for each clip, stemfleet, the CLI and the apply_model loop each process it, "
        "the order rotating from clip to clip, so that other work on a shared machine slows "
        "all three alike; their wall time is the sum of their clips' times.",
        "- Demucs CLI: `python -m demucs.separate -n htdemucs --repo DIR -o OUT -d DEVICE "
        "clip.wav`, a fresh process per clip, OMP_NUM_THREADS / MKL_NUM_THREADS set to the "
        "thread count; CPU time from the children's rusage.",
        "- apply_model loop: in the benchmark process, the model loaded once (not in the wall "
        "time); per clip sphn decode + `demucs.audio.convert_audio` + normalise + "
        "`demucs.apply.apply_model(shifts=1, split=True, overlap=0.25)` + "
        "`demucs.audio.save_audio` per stem, as the CLI does.",
        "- Model forward time: forward pre/post hooks on the model's members "
        "(synchronised on CUDA); CPU time: the process' (all threads), over the same window.",
        "- The machine is shared with other jobs: the load average around each variant and the "
        "share of the thread time it got (CPU use) are in the table.",
    ]
    return "\n".join(parts) + "\n"


# --- main ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    import os

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each clip")
    parser.add_argument("--quick", action="store_true", help="2 clips of 5 s: a smoke check")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument(
        "--batch-size", type=int, default=0, help="stemfleet's; 0: the worker's default"
    )
    parser.add_argument(
        "--group-jobs",
        type=int,
        default=0,
        help="stemfleet's STEMFLEET_GROUP_JOBS (jobs separated together in the all-queued run); "
        "0: the worker's default (1 on CPU, up to 8 on an accelerator)",
    )
    parser.add_argument(
        "--batch-compare",
        default=None,
        help="batch sizes to time on the first clip (0: the worker's default); '' to skip "
        "(default: 1,4; skipped with --quick, whose clips are one segment long)",
    )
    parser.add_argument(
        "--variants",
        default="batch,stemfleet,cli,apply",
        help="comma-separated subset of batch (stemfleet, all jobs queued at once), stemfleet "
        "(one job per clip, interleaved with the others), cli, apply",
    )
    parser.add_argument("--results", type=Path, default=None, help=f"default: {RESULTS}")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.clips, args.seconds = 2, 5.0
    if args.results is None and not args.quick:
        args.results = RESULTS
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = set(args.variants) - {"batch", "stemfleet", "cli", "apply"}
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}")
    if args.batch_compare is None:
        args.batch_compare = "" if args.quick else "1,4"
    args.batch_sizes = [int(x) for x in args.batch_compare.split(",") if x.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_device(args.device, args.precision)
    quiet_logs()
    use_threads(args.threads)
    command = " ".join(["bench/bench_separation.py", *(argv or sys.argv[1:])])
    started = time.perf_counter()
    load_start = load_average()
    facts = machine_facts(args.threads, args.device)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="stemfleet-bench-separation-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        say(f"work folder {workdir}; load average {load_start}")
        repo = prepare_model(workdir / "models")
        clips = write_clips(workdir / "clips", args.clips, args.seconds)
        say(f"{len(clips)} clips of {args.seconds:g} s written; model folder {repo}")
        variants: dict[str, Variant] = {}
        with contextlib.ExitStack() as stack:
            bench = None
            if {"batch", "stemfleet"} & set(args.variants):
                say(f"starting Postgres and a stemfleet worker ({args.device}, {args.precision})")
                bench = stack.enter_context(
                    WorkerBench(
                        workdir / "stemfleet",
                        repo,
                        threads=args.threads,
                        device=args.device,
                        precision=args.precision,
                        batch_size=args.batch_size,
                        group_jobs=args.group_jobs,
                    )
                )
            batch = run_batch(bench, clips) if bench and "batch" in args.variants else None
            if {"stemfleet", "cli", "apply"} & set(args.variants):
                variants.update(run_interleaved(args, workdir, repo, clips, bench))
            if batch is not None:
                variants["batch"] = batch
        for variant in variants.values():
            say(f"{variant.name}: {variant.wall_s:.1f} s, CPU {variant.cpu_s:.1f} s")
        say("raw figures: " + json.dumps({k: asdict(v) for k, v in variants.items()}))
        batches = batch_compare(args, repo, clips[0], args.batch_sizes) if args.batch_sizes else []
        text = report(
            args,
            facts,
            variants,
            batches,
            load_start,
            load_average(),
            time.perf_counter() - started,
            f".venv/bin/python {command}".strip(),
        )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(text)
    if args.results is not None:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(text)
        say(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

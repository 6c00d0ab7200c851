"""Benchmark 2: separation throughput side by side in one run: the stemfleet worker with each
engine (STEMFLEET_ENGINE), the Demucs command line given all clips in one invocation (how a user
runs `demucs *.wav`) and once per clip, and Demucs' `apply_model` in a loop; the same clips, the
same weights (one local model folder), the same threads, in rotating order (issue 16).

Run from the repository root after `make install`:

    .venv/bin/python bench/bench_separation.py                       # 10 x 30 s, htdemucs, CPU
    .venv/bin/python bench/bench_separation.py --quick               # 2 x 3 s, tiny model: a check
    .venv/bin/python bench/bench_separation.py --device cuda --engines eager,compiled

Reports audio seconds per wall second and per CPU second of every row, and its ratio to the CLI
given all clips (the rows are described in bench/_separation_rows.py, the report in
bench/_separation_report.py). Prints a markdown table and writes bench/results/separation.md
(`--quick` writes no results file unless `--results` is given).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import bench_postgres, load_average, publish
from bench._separation_common import (
    ROOT,
    add_run_arguments,
    audio_seconds,
    prepare_model,
    say,
    set_up_run,
    write_clips,
)
from bench._separation_report import RowResult, report
from bench._separation_rows import (
    ApplyRow,
    CliAllRow,
    CliPerClipRow,
    Options,
    Row,
    WorkerRow,
)

RESULTS = ROOT / "bench" / "results" / "separation.md"
OTHER_ROWS = ("cli-all", "cli-each", "apply")


def known_engines() -> list[str] | None:
    """The engines this checkout's worker knows (its Settings' `engine` field), or None when
    it has no engine setting yet (then only the eager path exists)."""
    from typing import get_args

    from app.settings import Settings

    field = Settings.model_fields.get("engine")
    if field is None:
        return None
    return [str(v) for v in get_args(field.annotation)] or None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each clip")
    parser.add_argument("--model", default="htdemucs", help="htdemucs or htdemucs_tiny")
    parser.add_argument(
        "--quick", action="store_true", help="2 clips of 3 s, htdemucs_tiny, one round: a check"
    )
    parser.add_argument(
        "--engines", default="eager", help="comma-separated STEMFLEET_ENGINE values"
    )
    parser.add_argument(
        "--rows",
        default=",".join(OTHER_ROWS),
        help="comma-separated subset of cli-all, cli-each, apply (besides the engines)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="passes over all rows")
    parser.add_argument("--group-jobs", type=int, default=0, help="stemfleet's; 0: default")
    add_run_arguments(parser, RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.clips, args.seconds, args.model, args.rounds = 2, 3.0, "htdemucs_tiny", 1
    if args.results is None and not args.quick:
        args.results = RESULTS
    args.engines = [e for e in args.engines.split(",") if e]
    args.rows = [r for r in args.rows.split(",") if r]
    if unknown := set(args.rows) - set(OTHER_ROWS):
        parser.error(f"unknown rows {sorted(unknown)}")
    engines = known_engines()
    if engines is None and set(args.engines) - {"eager"}:
        parser.error("this checkout has no STEMFLEET_ENGINE setting: only --engines eager")
    if engines is not None and (unknown := set(args.engines) - set(engines)):
        parser.error(f"unknown engines {sorted(unknown)}: the worker knows {engines}")
    return args


def make_rows(args: argparse.Namespace, options: Options, admin_url: str | None) -> list[Row]:
    rows: list[Row] = []
    if args.engines:
        assert admin_url is not None
        rows += [WorkerRow(options, engine, admin_url) for engine in args.engines]
    makers = {"cli-all": CliAllRow, "cli-each": CliPerClipRow, "apply": ApplyRow}
    rows += [makers[key](options) for key in args.rows]
    return rows


def run_rounds(
    rows: list[Row], clips: list[Path], rounds: int
) -> tuple[list[RowResult], list[list[str]]]:
    audio = audio_seconds(clips)
    results = {row.key: RowResult(row.key, row.name, audio) for row in rows}
    orders = []
    for index in range(rounds):
        turn = index % len(rows)
        order = rows[turn:] + rows[:turn]
        orders.append([row.key for row in order])
        for row in order:
            say(f"round {index + 1}/{rounds}: {row.name}")
            figures = row.run(clips, index)
            results[row.key].rounds.append(figures)
            say(f"  {figures.wall_s:.1f} s wall, {figures.cpu_s:.1f} s CPU {figures.extra}")
    return [results[row.key] for row in rows], orders


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    facts = set_up_run(args.threads, args.device, args.precision)
    facts["load average at start"] = load_average()
    given = argv if argv is not None else sys.argv[1:]
    command = " ".join(["bench/bench_separation.py", *given])
    started = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="stemfleet-bench-separation-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        repo = prepare_model(workdir / "models", args.model)
        clips = write_clips(workdir / "clips", args.clips, args.seconds)
        say(f"{len(clips)} clips of {args.seconds:g} s; model {args.model} in {repo}")
        options = Options(
            args.model, repo, args.device, args.precision, args.threads, workdir / "out",
            args.batch_size, args.group_jobs,
        )  # fmt: skip
        with ExitStack() as stack:
            admin_url = None
            if args.engines:
                pg = stack.enter_context(bench_postgres())
                admin_url, facts["postgres"] = pg.admin_url, pg.source
            rows = make_rows(args, options, admin_url)
            for row in rows:
                stack.callback(row.close)
            results, orders = run_rounds(rows, clips, args.rounds)
        facts["load average at end"] = load_average()
        say("raw: " + json.dumps({r.key: [vars(x) for x in r.rounds] for r in results}))
        text = report(
            args, facts, results, orders, time.perf_counter() - started,
            f".venv/bin/python {command}".strip(),
        )  # fmt: skip
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    publish(text, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

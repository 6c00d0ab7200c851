"""`stemfleet worker` and `python -m worker`: run the worker loop until stopped or idle.

Exit status 0 on every orderly end (SIGINT/SIGTERM, idle exit, drained by the scaler), so a
machine whose restart policy is `no` stops for good; 1 when it cannot start (database, model);
3 when it is a GPU worker without a usable GPU (worker/gpu_check.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from app.cli_args import add_command
from app.errors import StemfleetError
from app.settings import Settings, load_settings, parse_duration


@dataclass(frozen=True)
class Option:
    """A `stemfleet worker` option: add_argument's `keywords`; when given, it overrides the
    Settings field `setting` (and so that STEMFLEET_ variable)."""

    flag: str
    setting: str | None
    keywords: dict[str, Any]

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


OPTIONS = (
    Option(
        "--once",
        None,
        {
            "action": "store_true",
            "help": "process one turn (at most one job; a group of up to STEMFLEET_GROUP_JOBS "
            "on an accelerator), then exit (for cron/tests)",
        },
    ),
    Option("--model", "model", {"help": "Demucs model name (default: STEMFLEET_MODEL)"}),
    Option(
        "--model-repo",
        "model_repo",
        {"help": "local folder of Demucs weights (default: STEMFLEET_MODEL_REPO)"},
    ),
    Option(
        "--device",
        "device",
        {
            "choices": ["auto", "cuda", "mps", "cpu"],
            "help": "where the model runs (default: STEMFLEET_DEVICE, auto-detected)",
        },
    ),
    Option(
        "--machine-id",
        "machine_id",
        {
            "help": "id registered in `workers` "
            "(default: FLY_MACHINE_ID, RUNPOD_POD_ID or host name)",
        },
    ),
    Option(
        "--idle-exit",
        "worker_idle_exit",
        {
            "type": parse_duration,
            "metavar": "DURATION",
            "help": "exit 0 after this long without work, 0 = never "
            "(default: STEMFLEET_WORKER_IDLE_EXIT)",
        },
    ),
    Option(
        "--shutdown-grace",
        "shutdown_grace",
        {
            "type": parse_duration,
            "metavar": "DURATION",
            "help": "on SIGTERM, finish the running job if it ends within this; else release it",
        },
    ),
    Option(
        "--no-prefetch",
        None,
        {
            "action": "store_true",
            "help": "do not claim/download the next job while the model runs the current one",
        },
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for option in OPTIONS:
        parser.add_argument(option.flag, **option.keywords)


def register(subparsers: Any) -> None:
    parser = add_command(
        subparsers,
        "worker",
        __doc__,
        "run a worker: claim queued jobs and separate them with Demucs",
    )
    add_arguments(parser)
    parser.set_defaults(handler=run_worker)


def settings_for(args: argparse.Namespace) -> Settings:
    overrides = {option.setting: getattr(args, option.dest) for option in OPTIONS if option.setting}
    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


def run_worker(args: argparse.Namespace) -> int:
    from app.log import configure
    from worker.gpu_check import refuse_without_gpu
    from worker.loop import Worker
    from worker.runtime import SignalRelay

    settings = settings_for(args)
    configure(settings.log_level, settings.log_json)
    if refused := refuse_without_gpu(settings):
        return refused  # a GPU worker without a usable GPU: the reason is on its workers row
    worker = Worker(settings, prefetch=not args.no_prefetch)

    def on_signal(signum: int) -> None:
        worker.log.info("signal_received", signal=signal.Signals(signum).name)
        worker.request_stop()

    # Once the relay is gone the worker is exiting in order (drained, idle, stopped): a SIGTERM
    # that arrives then (the scaler stopping a drained worker that is already on its way out)
    # must not turn exit 0 into death by signal. The relay restores these on its way out.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with SignalRelay(on_signal):
        try:
            worker.start()
        except psycopg.OperationalError as exc:
            print(f"stemfleet worker: cannot reach the database: {exc}", file=sys.stderr)
            return 1
        if args.once:
            try:
                worker.run_once()
            finally:
                worker.close()
        else:
            worker.run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_worker(args)
    except StemfleetError as exc:
        print(f"stemfleet worker: error: {exc}", file=sys.stderr)
        return 2

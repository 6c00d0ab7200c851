"""`stemfleet separate FILE...`: stems for each file into OUT/<file stem>/<stem>.<ext>.

Through the queue (a configured API, the running `stemfleet up`, or an embedded system started
for this command), or with `--local` in this process, through the worker's own pipeline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.cli_args import add_command
from app.commands.batch import Batch, Item, ItemResult, output_folders
from app.commands.common import (
    MODEL_HINT,
    add_api_arguments,
    command_settings,
    open_target,
    with_model_hint,
)
from app.commands.progress import ProgressBoard
from app.errors import ConfigError, JobError
from app.params import KNOWN_STEMS, JobParams, parse_params
from app.settings import Settings

DEFAULT_OUT = Path("stems")


def add_params_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("separation")
    group.add_argument(
        "--model",
        help="Demucs model, e.g. htdemucs, htdemucs_ft, htdemucs_6s (default: STEMFLEET_MODEL, "
        "htdemucs); demucs_unittest is a tiny untrained model to try the pipeline offline",
    )
    group.add_argument(
        "--stems",
        type=_stem_list,
        metavar="S,S",
        help=f"only these stems, comma-separated (from {', '.join(KNOWN_STEMS)})",
    )
    group.add_argument(
        "--two-stems", metavar="S", help="this stem and no_<S> (everything else summed)"
    )
    group.add_argument("--format", choices=["wav", "flac", "mp3", "opus"], default="wav")
    group.add_argument("--bitrate", type=int, metavar="KBPS", help="mp3 (32-320) / opus (6-510)")
    group.add_argument(
        "--shifts",
        type=int,
        metavar="N",
        help="random time shifts averaged: better quality, N times slower (default 1; 0 makes "
        "the output exactly reproducible)",
    )


def _stem_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def params_from(args: argparse.Namespace) -> JobParams:
    raw: dict[str, Any] = {
        "model": args.model,
        "stems": args.stems,
        "two_stems": args.two_stems,
        "format": args.format,
        "bitrate": args.bitrate,
        "shifts": args.shifts,
    }
    return parse_params({k: v for k, v in raw.items() if v is not None})


def register(sub: Any) -> None:
    parser = add_command(
        sub, "separate", __doc__, "split audio files into stems (vocals, drums, bass, other)"
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="audio files")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help="stems go to DIR/<file stem>/<stem>.<ext> (default: ./stems)",
    )
    parser.add_argument(
        "--preview", action="store_true", help="only a short excerpt (STEMFLEET_PREVIEW_SECONDS)"
    )
    parser.add_argument(
        "--local",
        action="store_true",
        help="no server, no queue: run Demucs in this process (needs the worker extra: torch)",
    )
    add_params_arguments(parser)
    add_api_arguments(parser)
    parser.set_defaults(handler=run)


def unreadable(path: Path) -> str | None:
    """Why `path` cannot be sent, or None."""
    if not path.exists():
        return f"no such file: {path}"
    if not path.is_file():
        return f"not a file: {path}"
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror} (check its permissions)"
    return None


def report(results: list[ItemResult], out: Path) -> int:
    """The summary after the progress lines: every failure with its reason; exit code."""
    failed = [r for r in results if not r.ok]
    done = len(results) - len(failed)
    print(f"{done} of {len(results)} file(s) separated into {out}")
    for result in failed:
        print(f"failed: {result.item.path}: {result.reason}", file=sys.stderr)
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    settings = command_settings()
    params = params_from(args)
    kind = "preview" if args.preview else "separate"
    folders = output_folders(args.files, args.out)
    items = [
        Item(name=path.name if path.name else str(path), path=path, dest=folder)
        for path, folder in zip(args.files, folders, strict=True)
    ]
    items = _unique_names(items)
    rejected = {item.name: unreadable(item.path) for item in items}
    results = {
        item.name: ItemResult(item, False, reason)
        for item in items
        if (reason := rejected[item.name]) is not None
    }
    todo = [item for item in items if item.name not in results]
    board = ProgressBoard([item.name for item in items])
    for name, result in results.items():
        board.update(name, "failed", note=result.reason)
    if todo:
        order = Order(settings, todo, params, kind, board)
        finished = separate_locally(order) if args.local else _separate_queued(args, order)
        results.update({r.item.name: r for r in finished})
    board.close()
    return report([results[item.name] for item in items], args.out)


def _unique_names(items: list[Item]) -> list[Item]:
    """Progress lines are keyed by name: the same file name twice gets its path instead."""
    names = [item.name for item in items]
    return [
        Item(str(item.path), item.path, item.dest) if names.count(item.name) > 1 else item
        for item in items
    ]


@dataclass(frozen=True)
class Order:
    """The readable files a `stemfleet separate` still has to do, and how: through the queue
    (`_separate_queued`) or in this process (`separate_locally`)."""

    settings: Settings
    items: list[Item]
    params: JobParams
    kind: str  # "separate" or "preview"
    board: ProgressBoard


def _separate_queued(args: argparse.Namespace, order: Order) -> list[ItemResult]:
    params = order.params
    with open_target(args, order.settings, start=True, worker_model=params.model) as target:
        system = target.system

        def health() -> str | None:
            problem = system.worker_failure() if system is not None else None
            return with_model_hint(problem) if problem else None

        batch = Batch(
            target.client,
            target.complete(params),
            order.board,
            kind=order.kind,
            health=health if system else None,
        )
        return batch.run(order.items)


def separate_locally(order: Order) -> list[ItemResult]:
    """One file after the other in this process, through worker.pipeline.separate_file: the
    very code a worker runs for a job, minus the queue and the storage."""
    try:
        # The one sanctioned import of `worker` from `app`, and lazy on purpose: `app` installs
        # and imports without torch (the API image has none), and `--local` is the single path
        # that runs the worker's pipeline in the CLI's own process instead of through the queue.
        from worker.pipeline import separate_file
        from worker.separation import Separator
    except ImportError as exc:
        raise ConfigError(
            f"--local runs Demucs in this process and needs the worker extra, which is not "
            f"installed (missing module {exc.name!r}): `pip install 'stemfleet[worker]'` (or "
            "./scripts/install.sh), or drop --local to use a server"
        ) from None

    settings, params = order.settings, order.params
    if params.model and params.model != settings.model:
        settings = settings.model_copy(update={"model": params.model})
    for item in order.items:
        order.board.update(item.name, "loading model")
    try:
        separator = Separator(settings)
    except JobError as exc:
        hint = f" {MODEL_HINT}" if exc.kind == "model_unavailable" else ""
        return [ItemResult(item, False, f"{exc}{hint}") for item in order.items]
    preview = settings.preview_seconds if order.kind == "preview" else None
    results = []
    for item in order.items:
        order.board.update(item.name, "running", 0.0)

        def progress(fraction: float, name: str = item.name) -> None:
            order.board.update(name, "running", fraction)

        with tempfile.TemporaryDirectory(prefix="stemfleet-local-") as tmp:
            try:
                result = separate_file(
                    separator,
                    item.path,
                    Path(tmp),
                    params,
                    preview_seconds=preview,
                    max_seconds=settings.max_duration,
                    progress=progress,
                    should_stop=lambda: False,
                )
            except JobError as exc:
                results.append(ItemResult(item, False, str(exc)))
                order.board.update(item.name, "failed", note=str(exc))
                continue
            item.dest.mkdir(parents=True, exist_ok=True)
            stems = {}
            for stem, path in result.stems.items():
                target = item.dest / f"{stem}{path.suffix}"
                shutil.move(os.fspath(path), target)
                stems[stem] = target
        order.board.update(item.name, "done", 1.0, note=f"{len(stems)} stems in {item.dest}")
        results.append(ItemResult(item, True, stems=stems))
    return results

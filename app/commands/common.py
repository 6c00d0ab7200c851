"""What the client commands share: which API to talk to, and how a job reads on one line.

The API is, in order: `--api` / STEMFLEET_API_URL (with `--token` / STEMFLEET_API_TOKEN); else the
running `stemfleet up` of this data folder (its URL and token are in `<data_dir>/embedded.json`);
else, for commands that need one, an embedded system started for the duration of the command.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from app.client import ApiClient, JobDict
from app.embedded import EmbeddedSystem, read_state
from app.errors import ConfigError
from app.log import configure
from app.params import JobParams
from app.settings import Settings, get_settings, reveal


def add_api_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument(
        "--api",
        metavar="URL",
        help="a stemfleet API (default: STEMFLEET_API_URL, else the running `stemfleet up`, "
        "else an embedded system started for this command)",
    )
    group.add_argument("--token", help="bearer token for --api (default: STEMFLEET_API_TOKEN)")


@dataclass
class Target:
    client: ApiClient
    where: str
    database_url: str | None  # known when the system runs on this machine
    system: EmbeddedSystem | None = None
    default_model: str | None = None  # known when the system runs on this machine

    def complete(self, params: JobParams) -> JobParams:
        """Name the model a local system's workers run when the job names none, so the API's
        deduplication (by content and params) never hands back stems of another model."""
        if params.model is None and self.default_model:
            return params.model_copy(update={"model": self.default_model})
        return params


def quiet_logs(settings: Settings) -> None:
    """These commands print their own lines: logs (ours, httpx's, migrations') only from WARNING
    on, unless STEMFLEET_LOG_LEVEL asks for more."""
    if "STEMFLEET_LOG_LEVEL" in os.environ:
        return
    configure("WARNING", settings.log_json)
    logging.getLogger().setLevel(logging.WARNING)


def command_settings() -> Settings:
    settings = get_settings()
    quiet_logs(settings)
    return settings


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end the command like Ctrl-C does, so the embedded children it started
    are stopped too (their default action would kill only us and orphan them). SIGINT is set
    explicitly as well: a shell starts background jobs with SIGINT ignored."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError):  # not the main thread
            previous[signum] = signal.signal(signum, interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def open_target(
    args: argparse.Namespace,
    settings: Settings,
    *,
    start: bool,
    with_scaler: bool = True,
    worker_model: str | None = None,
) -> Iterator[Target]:
    """The API to use (see the module doc). `start`: bring up an embedded system when no server
    is configured or running; otherwise that is an error naming the fix."""
    url = getattr(args, "api", None) or settings.api_url
    if url:
        token = getattr(args, "token", None) or reveal(settings.api_token)
        with ApiClient(url, token) as client:
            yield Target(client, url, None)
        return
    state = read_state(settings)
    if state is not None:
        with ApiClient(state.api_url, state.token) as client:
            where = f"stemfleet up at {state.api_url}"
            yield Target(client, where, state.database_url, default_model=state.model or None)
        return
    if not start:
        raise ConfigError(
            f"no stemfleet server: none configured and no `stemfleet up` running for "
            f"{settings.data_dir}. Start one with `stemfleet up`, or give --api URL and --token "
            "(STEMFLEET_API_URL / STEMFLEET_API_TOKEN)"
        )
    log = settings.data_dir / "logs" / "embedded.log"
    with terminate_as_interrupt():
        parts = "Postgres, API, scaler with local workers" if with_scaler else "Postgres, API"
        say(f"starting the embedded system ({parts})...")
        system = EmbeddedSystem(
            settings,
            port=0,
            output=log,
            with_scaler=with_scaler,
            worker_model=worker_model,
            warm_worker=with_scaler,
            say=say,
        )
        with system, ApiClient(system.api_url, system.token) as client:
            yield Target(client, "embedded system", system.database_url, system, system.model)


# --- how a job reads --------------------------------------------------------------------------


def local_time(value: Any) -> str:
    if not value:
        return "-"
    moment = datetime.fromisoformat(str(value))
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def job_state(job: JobDict) -> str:
    status = str(job["status"])
    if status == "running":
        return f"running {float(job.get('progress') or 0):.0%}"
    if status == "queued" and job.get("queue_position"):
        return f"queued (#{job['queue_position']})"
    return status


def input_name(job: JobDict) -> str:
    return Path(str(job.get("input_key") or "")).name or "-"


def describe_job(job: JobDict) -> list[str]:
    """`stemfleet status`: the job, field by field."""
    params = job.get("params") or {}
    lines = [
        f"job       {job['id']}",
        f"status    {job_state(job)}",
        f"kind      {job['kind']}",
        f"input     {input_name(job)}"
        + (f" ({float(job['duration_s']):.1f} s)" if job.get("duration_s") else ""),
        "params    " + (", ".join(f"{k}={v}" for k, v in sorted(params.items())) or "defaults"),
        f"created   {local_time(job.get('created_at'))}",
        f"started   {local_time(job.get('started_at'))}",
        f"finished  {local_time(job.get('finished_at'))}",
        f"attempts  {job.get('attempts', 0)}/{job.get('max_attempts', 0)}",
    ]
    if job.get("error"):
        lines.append(f"error     {job['error']} [{job.get('error_kind') or 'error'}]")
    for name, stem in sorted((job.get("stems") or {}).items()):
        lines.append(f"stem      {name}: {stem['key']}")
    return lines


MODEL_HINT = (
    "To try the pipeline without downloading weights, use --model demucs_unittest (an untrained "
    "test model: its stems are not meaningful)."
)


def with_model_hint(reason: str) -> str:
    """A model that could not be fetched: add how to try the pipeline anyway."""
    lowered = reason.lower()
    if "model" in lowered and ("download" in lowered or "could not load" in lowered):
        return f"{reason} {MODEL_HINT}"
    return reason


def reason_of(job: JobDict) -> str:
    """Why a job did not succeed, with the fix where the cause is known."""
    if job["status"] == "cancelled":
        return str(job.get("error") or "cancelled")
    reason = str(job.get("error") or "failed without a message")
    return f"{reason} {MODEL_HINT}" if job.get("error_kind") == "model_unavailable" else reason

"""`stemfleet up`: the whole system on this machine, in the foreground until Ctrl-C.

Postgres (from the machine's binaries, reused across runs), migrations, local storage, the API
in dev-auth mode, and the scaler starting local workers on demand. Ctrl-C (or SIGTERM) stops
them all; nothing is left running.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from app.api.webhooks import webhook_secret_path
from app.cli_args import add_command, duration
from app.commands.common import command_settings, terminate_as_interrupt
from app.embedded import EmbeddedSystem, read_state
from app.errors import ConfigError
from app.settings import Settings


def register(sub: Any) -> None:
    parser = add_command(
        sub, "up", __doc__, "run everything locally (Postgres, API, scaler, workers) until Ctrl-C"
    )
    parser.add_argument(
        "--port", type=int, help="the API's port on 127.0.0.1 (default: STEMFLEET_API_PORT, 8000)"
    )
    parser.add_argument(
        "--scaler-interval",
        type=duration,
        default=2.0,
        metavar="DURATION",
        help="how often the scaler looks at the queue (default 2s)",
    )
    parser.add_argument(
        "--logs",
        action="store_true",
        help="show the API's, scaler's and workers' logs here (default: <data dir>/logs/up.log)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = command_settings()
    running = read_state(settings)
    if running is not None:
        raise ConfigError(
            f"stemfleet up is already running for {settings.data_dir} (pid {running.pid}, API at "
            f"{running.api_url}): use that one, stop it first, or give this one its own "
            "STEMFLEET_DATA_DIR"
        )
    log = None if args.logs else settings.data_dir / "logs" / "up.log"
    system = EmbeddedSystem(
        settings,
        port=args.port,
        scaler_interval=args.scaler_interval,
        output=log,
        write_state=True,
    )
    code = 0
    with terminate_as_interrupt():
        try:
            print("starting stemfleet...", flush=True)
            system.start()
            _banner(system)
            child = system.wait(threading.Event())
            if child is not None:
                print(
                    f"the {child.name} exited (code {child.process.returncode}); stopping",
                    flush=True,
                )
                code = 1
        except KeyboardInterrupt:
            print("\nstopping (the scaler, its workers, the API, Postgres)...", flush=True)
            code = 0
        finally:
            # A second Ctrl-C must not cut the shutdown short and leave children behind.
            with _ignoring_interrupts():
                system.stop()
    print("stopped", flush=True)
    return code


@contextlib.contextmanager
def _ignoring_interrupts() -> Iterator[None]:
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def sign_in_link(page_url: str, token: str) -> str:
    """A page's local sign-in link: the token rides in the fragment, which the browser keeps
    to itself (never sent to a server, never in an access log); the page stores it and drops
    it from the address bar."""
    return f"{page_url}#token={token}"


def webhook_secret_note(settings: Settings) -> str:
    """Where the signing secret of the webhooks (Standard Webhooks) is."""
    if settings.webhook_secret:
        return "signed with STEMFLEET_WEBHOOK_SECRET"
    return f"signed with the secret in {webhook_secret_path(settings)}"


def _banner(system: EmbeddedSystem) -> None:
    settings = system.settings
    storage = (
        f"s3://{settings.s3_bucket} at {settings.s3_endpoint_url or 'AWS'}"
        if settings.storage == "s3"
        else str(settings.local_storage_root)
    )
    database = system.database_url
    if system.postgres is not None and system.postgres.server is not None:
        database += f"  (data: {system.postgres.server.data_dir})"
    lines = [
        "stemfleet is up",
        f"  open      {sign_in_link(system.api_url + '/', system.token)}   (signs you in)",
        f"  operator  {sign_in_link(system.api_url + '/admin', system.token)}",
        f"  API       {system.api_url}   (docs: {system.api_url}/docs)",
        f"  token     {system.token}",
        f"  webhooks  {webhook_secret_note(settings)}",
        f"  database  {database}",
        f"  storage   {storage}",
        f"  workers   {system.model}, started on demand by the scaler (local provider)",
        f"  logs      {system.output or 'here'}"
        + (f"  (worker logs: {settings.data_dir / 'local-machines'})" if system.output else ""),
        "",
        "Use it from another terminal:",
        "  stemfleet separate song.mp3        (finds this server by itself)",
        f"  curl -H 'Authorization: Bearer {system.token}' {system.api_url}/v1/jobs",
        "Press Ctrl-C to stop.",
    ]
    print("\n".join(lines), flush=True)

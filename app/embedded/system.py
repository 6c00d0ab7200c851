"""The embedded default's orchestration: Postgres (ours, or STEMFLEET_DATABASE_URL's), the
migrations, then the API and the scaler as our children, started and stopped in order.

The API (`stemfleet api`) runs on 127.0.0.1 in dev-auth mode with one local token; the scaler
(`stemfleet scaler run`) has the `local` provider, which starts `stemfleet worker` processes on
demand. Stopping goes scaler (it stops its workers) first, then the API, then Postgres if we
started it; a final sweep stops any worker left behind (app.embedded.supervision).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import httpx

from app.embedded.postgres import EmbeddedError, EmbeddedPostgres, Say
from app.embedded.state import EmbeddedState, remove_state, save_state
from app.embedded.supervision import Child, StartStop, become_subreaper, spawn, sweep_orphans
from app.pgserver import free_port, port_in_use
from app.processes import stemfleet_command
from app.settings import Settings

READY_PATH = "/readyz"  # 200 once the database answers and its migrations are current
READY_TIMEOUT = 60.0
CHILD_STOP_TIMEOUT = 45.0  # the scaler drains its workers, which may finish or release a job
SWEEP_MARGIN = 10.0  # beyond STEMFLEET_SHUTDOWN_GRACE, which a worker may use to finish its job
_WORKER_ERROR = re.compile(r"^stemfleet(?: worker)?: error: (.+)$", re.MULTILINE)


@dataclass(eq=False)
class EmbeddedSystem(StartStop):
    """Postgres + migrations + API + scaler (local workers). Use as a context manager.

    `port`: the API's port; None is STEMFLEET_API_PORT, 0 picks a free one (for `stemfleet
    separate`); `api_port` is the one it listens on.
    `output`: where the children's logs go: None = our own stdout/stderr, else this file
    (rewritten on every start). `with_scaler`: False for commands that only read jobs.
    `worker_model`: the model workers load at boot. `warm_worker`: start one worker at once
    rather than when the first job is queued (for a command that is about to submit).
    """

    settings: Settings
    _: KW_ONLY
    port: int | None = None
    scaler_interval: float = 1.0
    output: Path | None = None
    write_state: bool = False
    with_scaler: bool = True
    worker_model: str | None = None
    warm_worker: bool = False
    say: Say = print

    def __post_init__(self) -> None:
        self.api_port = self.settings.api_port if self.port is None else self.port
        self._log_offsets: dict[Path, int] = {}
        self.postgres: EmbeddedPostgres | None = None
        self.database_url = ""
        self.api_url = ""
        self.token = ""
        self.children: list[Child] = []
        self._log_handle: IO[bytes] | None = None
        self._subreaper = False
        self._stopped = threading.Event()

    # --- start -------------------------------------------------------------------------------
    def start(self) -> None:
        self.start_database()
        self.start_services()

    def start_database(self) -> str:
        """Postgres (ours, or STEMFLEET_DATABASE_URL's), migrated; returns its URL."""
        from app.migrate import migrate

        if self.database_url:
            return self.database_url
        if self.api_port and port_in_use(self.api_port, self.settings.api_host):
            raise EmbeddedError(
                f"port {self.api_port} on {self.settings.api_host} is already in use (another "
                "`stemfleet up`?): stop what listens there, or choose another port with "
                "--port or STEMFLEET_API_PORT"
            )
        if self.settings.database_url:
            url = self.settings.database_url.get_secret_value()
        else:
            self.postgres = EmbeddedPostgres(self.settings, self.say)
            url = self.postgres.start()
        migrate(url)
        self.database_url = url
        return url

    def start_services(self) -> None:
        """The API and (unless with_scaler is off) the scaler, as our children."""
        from app.api.auth import ensure_dev_token

        self.start_database()
        self.token = ensure_dev_token(self.settings)
        self._subreaper = become_subreaper()
        if self.api_port == 0:
            self.api_port = free_port()
        self.api_url = f"http://{self.settings.api_host}:{self.api_port}"
        env = self.child_env()
        self._log_offsets = self._worker_logs()
        self._spawn("api", stemfleet_command("api"), env)
        if self.with_scaler:  # started before the API answers: its first worker boots meanwhile
            self._spawn(
                "scaler",
                stemfleet_command("scaler", "run", "--interval", f"{self.scaler_interval:g}"),
                env,
            )
        self._wait_api_ready()
        if self.write_state:
            save_state(
                self.settings,
                EmbeddedState(
                    api_url=self.api_url,
                    token=self.token,
                    database_url=self.database_url,
                    pid=os.getpid(),
                    started_at=datetime.now(UTC).isoformat(timespec="seconds"),
                    model=self.model,
                ),
            )

    @property
    def model(self) -> str:
        """The model its workers load at boot."""
        return self.worker_model or self.settings.model

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "STEMFLEET_DATABASE_URL": self.database_url,
                "STEMFLEET_DATA_DIR": str(self.settings.data_dir.resolve()),
                "STEMFLEET_API_HOST": self.settings.api_host,
                "STEMFLEET_API_PORT": str(self.api_port),
                "STEMFLEET_DEV_AUTH": "true",
                "STEMFLEET_DEV_TOKEN": self.token,
                "STEMFLEET_PROVIDER": "local",
            }
        )
        # One local worker by default: on one machine a second Demucs only competes for the
        # same cores or GPU. Local machines cost nothing.
        env.setdefault("STEMFLEET_MAX_MACHINES", "1")
        env.setdefault("STEMFLEET_MACHINE_SIZE", "local")
        if self.worker_model:  # the worker loads its model at boot: the one the jobs ask for
            env["STEMFLEET_MODEL"] = self.worker_model
        if self.warm_worker:  # jobs are on their way: boot a worker while they upload
            env["STEMFLEET_MIN_MACHINES"] = "1"
        for name in ("STEMFLEET_API_URL", "STEMFLEET_API_TOKEN"):
            env.pop(name, None)
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        if self.output is not None and self._log_handle is None:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = self.output.open("wb")
        self.children.append(spawn(name, argv, env, self._log_handle))

    def _wait_api_ready(self) -> None:
        api = next(c for c in self.children if c.name == "api")
        deadline = time.monotonic() + READY_TIMEOUT
        with httpx.Client(timeout=2.0) as client:
            while True:
                if api.process.poll() is not None:
                    raise EmbeddedError(
                        f"the API exited at start (code {api.process.returncode}); "
                        + self._log_hint()
                    )
                try:
                    if client.get(self.api_url + READY_PATH).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise EmbeddedError(
                        f"the API did not answer on {self.api_url} within {READY_TIMEOUT:.0f} s; "
                        + self._log_hint()
                    )
                time.sleep(0.1)

    def _log_hint(self) -> str:
        if self.output is not None:
            tail = ""
            with contextlib.suppress(OSError):
                tail = self.output.read_text(errors="replace")[-1500:]
            return f"its log is {self.output}:\n{tail}"
        return "see its output above"

    # --- run ---------------------------------------------------------------------------------
    def exited_child(self) -> Child | None:
        return next((c for c in self.children if c.process.poll() is not None), None)

    def wait(self, stop: threading.Event) -> Child | None:
        """Until `stop` is set (returns None) or a child exits on its own (returns it)."""
        while not stop.wait(0.5):
            child = self.exited_child()
            if child is not None:
                return child
        return None

    def _worker_logs(self) -> dict[Path, int]:
        """The local provider's worker logs (<data_dir>/local-machines/*.log) and their sizes."""
        sizes = {}
        for log in (self.settings.data_dir / "local-machines").glob("*.log"):
            with contextlib.suppress(OSError):
                sizes[log] = log.stat().st_size
        return sizes

    def worker_failure(self) -> str | None:
        """Why the local workers cannot start: the last `error:` line a worker wrote since we
        started (a reused machine appends to its old log, so only what is new counts)."""
        for log, size in self._worker_logs().items():
            start = self._log_offsets.get(log, 0)
            if size <= start:
                continue
            try:
                with log.open("rb") as handle:
                    handle.seek(max(start, size - 20000))
                    text = handle.read().decode(errors="replace")
            except OSError:
                continue
            found = _WORKER_ERROR.findall(text)
            if found:
                return f"the worker could not start (its log: {log}): {found[-1]}"
        return None

    # --- stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.write_state:
            with contextlib.suppress(OSError):
                remove_state(self.settings)
        for child in reversed(self.children):  # the scaler (and its workers) before the API
            child.stop(CHILD_STOP_TIMEOUT)
        self._sweep_orphans()
        if self.postgres is not None:
            self.postgres.stop()
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def _sweep_orphans(self) -> None:
        """Stop descendants re-parented to us (a worker its scaler left behind)."""
        if not self._subreaper:
            return
        keep = {c.process.pid for c in self.children}
        if self.postgres and self.postgres.server:
            keep.add(self.postgres.server.postmaster_pid() or -1)
        sweep_orphans(keep, self.settings.shutdown_grace + SWEEP_MARGIN)

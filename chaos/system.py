"""The system under test, on this machine, and the levers the faults pull.

The embedded default (app.embedded.EmbeddedSystem: a Postgres cluster from the machine's
binaries, the API, the scaler with the local provider keeping `workers` worker processes up),
with S3 storage on moto's server reached through the fault proxy, webhooks to a loopback
receiver, every child's scratch space (TMPDIR) in the run's folder, and an observer of every job.
Short leases keep recovery (and the suite) fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from app.db import connect
from app.embedded import EmbeddedSystem
from app.embedded.supervision import StartStop
from app.pgserver import LocalPostgres, free_port
from app.processes import pid_alive
from app.settings import load_settings
from app.storage import S3Storage
from chaos.observer import JobObserver
from chaos.proxy import FaultProxy
from chaos.receiver import WebhookReceiver
from tests.s3_support import new_bucket_env

if TYPE_CHECKING:
    from moto.server import ThreadedMotoServer

WORKER_MODEL = "demucs_unittest"  # Demucs' tiny model: no download, fast on a CPU
SCRATCH_PREFIX = "stemfleet-"  # what workers put under TMPDIR (stemfleet-worker-<id>, …)
CRASH_EXIT_TIMEOUT = 30.0
WEBHOOK_TIMEOUT_S = 5.0
# A delivery its dispatcher claimed and could not finish (Postgres went away) is due again after
# its claim's lease (app.api.webhooks: 3 x the timeout + 30 s); a webhook later than that is lost.
WEBHOOK_REDELIVERY_S = 3 * WEBHOOK_TIMEOUT_S + 30 + 10


@dataclass(frozen=True)
class Tuning:
    workers: int = 2
    lease: float = 20.0
    scaler_interval: float = 1.0
    max_attempts: int = 3

    @property
    def heartbeat(self) -> float:
        """How often a worker extends its lease: often enough that a short lease survives."""
        return min(2.0, self.lease / 4)

    @property
    def reaper_interval(self) -> float:
        """How often a worker reaps expired leases (the scaler does on each run, too)."""
        return max(self.lease / 2, 1.0)

    @property
    def quiet_window(self) -> float:
        """Quiet for this long with a job still queued or running: it is stuck."""
        return self.lease + self.reaper_interval + self.scaler_interval


class ChaosSystem(StartStop):
    def __init__(self, run_dir: Path, tuning: Tuning, *, seed: int) -> None:
        self.run_dir = run_dir
        self.tuning = tuning
        self.seed = seed
        self.data_dir = run_dir / "data"
        self.scratch_root = run_dir / "tmp"
        self.log_file = run_dir / "system.log"
        self.moto: ThreadedMotoServer | None = None
        self.proxy: FaultProxy | None = None
        self.receiver = WebhookReceiver()
        self.embedded: EmbeddedSystem | None = None
        self.observer: JobObserver | None = None
        self.storage: S3Storage | None = None  # straight to moto, past the proxy
        self._pause = threading.Event()  # never set: waits below are the fault's duration

    # --- up and down ----------------------------------------------------------------------
    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.scratch_root.mkdir(parents=True, exist_ok=True)
        port = free_port()
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        moto.start()
        self.moto = moto
        moto_url = f"http://127.0.0.1:{port}"
        bucket_env = new_bucket_env(moto_url)
        self.storage = S3Storage(
            bucket=bucket_env["STEMFLEET_S3_BUCKET"],
            endpoint_url=moto_url,
            region=bucket_env["STEMFLEET_S3_REGION"],
            access_key_id=bucket_env["STEMFLEET_S3_ACCESS_KEY_ID"],
            secret_access_key=bucket_env["STEMFLEET_S3_SECRET_ACCESS_KEY"],
        )
        self.proxy = FaultProxy(moto_url, seed=self.seed)
        self.proxy.start()
        self.receiver.start()
        for name in [k for k in os.environ if k.startswith("STEMFLEET_")]:
            del os.environ[name]
        os.environ.update({**bucket_env, **self.environment(self.proxy.url)})
        self.embedded = EmbeddedSystem(
            load_settings(),
            port=0,
            scaler_interval=self.tuning.scaler_interval,
            output=self.log_file,
            worker_model=WORKER_MODEL,
            say=lambda line: None,
        )
        self.embedded.start()
        self.observer = JobObserver(self.database_url).start()

    def environment(self, storage_endpoint: str) -> dict[str, str]:
        """What every component (API, scaler, workers) runs with: they inherit it."""
        t = self.tuning
        return {
            "STEMFLEET_S3_ENDPOINT_URL": storage_endpoint,
            "STEMFLEET_DATA_DIR": str(self.data_dir),
            "STEMFLEET_MODEL": WORKER_MODEL,
            "STEMFLEET_DEVICE": "cpu",
            "STEMFLEET_THREADS": "1",
            "STEMFLEET_LEASE": str(t.lease),
            "STEMFLEET_HEARTBEAT_INTERVAL": str(t.heartbeat),
            "STEMFLEET_POLL_INTERVAL": "1",
            "STEMFLEET_BACKOFF_BASE": "1",
            "STEMFLEET_MAX_ATTEMPTS": str(t.max_attempts),
            # the scaler's floor keeps the fleet up: a killed worker is started again
            "STEMFLEET_MIN_MACHINES": str(t.workers),
            "STEMFLEET_MAX_MACHINES": str(t.workers),
            "STEMFLEET_WORKER_IDLE_EXIT": "0",
            "STEMFLEET_SHUTDOWN_GRACE": "5",
            "STEMFLEET_CALLBACK_ALLOWLIST": "127.0.0.1",
            "STEMFLEET_WEBHOOK_RETRY_BASE": "1",
            "STEMFLEET_WEBHOOK_POLL_INTERVAL": "1",
            "STEMFLEET_WEBHOOK_TIMEOUT": str(WEBHOOK_TIMEOUT_S),
            "STEMFLEET_MAX_QUEUED_PER_USER": "1000",
            "STEMFLEET_DEDUP_WINDOW": "0",
            "TMPDIR": str(self.scratch_root),
        }

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()  # its connections first: Postgres stops only when unused
        if self.embedded is not None:
            self.embedded.stop()
        if self.proxy is not None:
            self.proxy.stop()
        self.receiver.stop()
        if self.moto is not None:
            self.moto.stop()

    # --- what the driver reads ------------------------------------------------------------
    @property
    def database_url(self) -> str:
        assert self.embedded is not None
        return self.embedded.database_url

    @property
    def api(self) -> tuple[str, str]:
        assert self.embedded is not None
        return self.embedded.api_url, self.embedded.token

    def dead_component(self) -> str | None:
        """The API or the scaler, should one have exited on its own."""
        assert self.embedded is not None
        child = self.embedded.exited_child()
        return f"{child.name} (exit code {child.process.returncode})" if child else None

    def scratch_left(self) -> list[Path]:
        return sorted(self.scratch_root.glob(f"{SCRATCH_PREFIX}*"))

    # --- levers -----------------------------------------------------------------------------
    @property
    def postgres(self) -> LocalPostgres:
        assert self.embedded and self.embedded.postgres and self.embedded.postgres.server
        return self.embedded.postgres.server

    def restart_postgres(self, *, crash: bool, down_s: float) -> None:
        """Stop Postgres (a crash, or cleanly: `pg_ctl stop -m fast`), keep it down `down_s`,
        start it again (after a crash it recovers from its WAL)."""
        server = self.postgres
        if crash:
            self._crash(server)
        else:
            server.stop()
        self._pause.wait(down_s)
        server.start()

    def _crash(self, server: LocalPostgres) -> None:
        """An immediate shutdown, made the way `pg_ctl stop -m immediate` makes one: SIGQUIT to
        the postmaster. Sent here directly because pg_ctl (through runuser) takes about 0.1 s
        to send it, and a completion whose WAL is not written yet is at risk for less."""
        pid = server.postmaster_pid()
        if pid is None:
            raise RuntimeError(f"no postmaster.pid in {server.data_dir}")
        os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + CRASH_EXIT_TIMEOUT
        while pid_alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # ours when a restart re-parented it to us
            self._pause.wait(0.02)
        if pid_alive(pid):
            raise RuntimeError(f"the postmaster (pid {pid}) did not exit after SIGQUIT")

    def kill_worker(self, worker_id: uuid.UUID) -> int | None:
        """SIGKILL the worker process registered as `worker_id`; its pid, or None when it is
        not (or no longer) running here."""
        try:
            with connect(self.database_url, application_name="chaos") as conn:
                row = conn.execute(
                    "select machine_id from public.workers where id = %s", (worker_id,)
                ).fetchone()
        except psycopg.Error:
            return None
        if row is None:
            return None
        machine_id = str(row["machine_id"])
        record = self.data_dir / "local-machines" / f"{machine_id}.json"
        try:
            pid = int(json.loads(record.read_text())["pid"])
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if f"STEMFLEET_MACHINE_ID={machine_id}".encode() not in environ:
            return None  # the pid is gone or is somebody else's now
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            return pid
        return None

"""The embedded default: the whole system on this machine, from one command.

- Postgres: a cluster from the machine's own binaries (app.pgserver) in `<data_dir>/pg/data`,
  reused across runs; a folder the `postgres` OS user can reach when we run as root and the data
  folder is private (root's home is mode 700). STEMFLEET_DATABASE_URL names an external database
  instead. Migrations and the Supabase bootstrap are applied on every start (idempotent).
- Storage: `<data_dir>/storage` (or S3 when STEMFLEET_STORAGE=s3).
- The API (`stemfleet api`) on 127.0.0.1 in dev-auth mode with one local token, and the scaler
  (`stemfleet scaler run`) with the `local` provider, which starts `stemfleet worker` processes
  on demand. Both are child processes, each in its own session and process group, so a Ctrl-C
  on the terminal reaches only us and we stop them in order: scaler (it stops its workers) first,
  then the API, then Postgres if we started it.

Nothing may outlive us: on Linux this process becomes a child subreaper, so a worker orphaned by
an exiting scaler is re-parented here (not to init) and the final sweep stops it; and the API and
the scaler get SIGTERM from the kernel should we die without stopping them (kill -9).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import httpx
import psycopg
from psycopg import sql

from app.errors import StemfleetError
from app.pgserver import LocalPostgres, port_in_use, server_can_reach
from app.processes import pid_alive
from app.settings import Settings

STATE_FILE = "embedded.json"
DATABASE = "stemfleet"
READY_PATH = "/readyz"  # 200 once the database answers and its migrations are current
READY_TIMEOUT = 60.0
CHILD_STOP_TIMEOUT = 45.0  # the scaler drains its workers, which may finish or release a job
SWEEP_MARGIN = 10.0  # beyond STEMFLEET_SHUTDOWN_GRACE, which a worker may use to finish its job
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_WORKER_ERROR = re.compile(r"^stemfleet(?: worker)?: error: (.+)$", re.MULTILINE)

Say = Callable[[str], None]


class EmbeddedError(StemfleetError):
    """The embedded system could not start; the message says why and what to do."""


# --- the state file: how other commands find a running `stemfleet up` -------------------------


@dataclass(frozen=True)
class EmbeddedState:
    api_url: str
    token: str
    database_url: str
    pid: int
    started_at: str
    model: str = ""  # what its workers load: jobs that name no model get it


def state_path(settings: Settings) -> Path:
    return settings.data_dir / STATE_FILE


def read_state(settings: Settings) -> EmbeddedState | None:
    """The running `stemfleet up` of this data folder, if any (a stale file is ignored)."""
    path = state_path(settings)
    try:
        state = EmbeddedState(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return state if pid_alive(state.pid) else None


def _write_state(settings: Settings, state: EmbeddedState) -> None:
    path = state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(asdict(state), handle, indent=2)
    os.replace(path.with_suffix(".tmp"), path)


# --- Postgres -----------------------------------------------------------------------------------


def postgres_dir(settings: Settings) -> tuple[Path, str | None]:
    """Where the cluster lives, and a note when that is not under the data folder."""
    preferred = settings.data_dir.resolve() / "pg" / "data"
    if server_can_reach(preferred):
        return preferred, None
    # One cluster per data folder, so tests (and several users of root) never share one.
    digest = hashlib.sha256(str(settings.data_dir.resolve()).encode()).hexdigest()[:12]
    for base in (Path("/var/lib/stemfleet"), Path(f"/tmp/stemfleet-{os.getuid()}")):
        candidate = base / digest / "data"
        try:
            base.mkdir(parents=True, exist_ok=True)
            base.chmod(0o755)
        except OSError:
            continue
        if server_can_reach(candidate):
            note = (
                f"the postgres OS user cannot reach {settings.data_dir} (a private parent "
                f"folder), so the database lives in {candidate.parent}"
            )
            return candidate, note
    raise EmbeddedError(
        f"no folder for the database that the postgres OS user can reach: make "
        f"{settings.data_dir} traversable (chmod o+x on its parents), set STEMFLEET_DATA_DIR "
        "to another folder, or set STEMFLEET_DATABASE_URL"
    )


def _running_port(data_dir: Path) -> int | None:
    """The port of a server already running on this data folder (line 4 of postmaster.pid)."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    return port if pid_alive(pid) else None


def postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


class EmbeddedPostgres:
    """The cluster of the embedded default. Stops it on exit if this run started it (or found
    it left behind by a killed run, with nobody connected) and no other client (a concurrent
    `stemfleet separate`, say) is connected by then."""

    def __init__(self, settings: Settings, say: Say) -> None:
        self.settings = settings
        self.say = say
        self.server: LocalPostgres | None = None
        self.started_here = False
        self.url = ""

    def start(self) -> str:
        data_dir, note = postgres_dir(self.settings)
        if note:
            self.say(f"note: {note}")
        port = _running_port(data_dir)
        if port is not None:
            self.server = LocalPostgres(data_dir=data_dir, port=port)
            # Nobody connected: a run that was killed left it behind; it is ours to stop.
            self.started_here = not self.others_connected()
            if self.started_here:
                self.say(f"note: reusing the Postgres a previous run left running ({data_dir})")
        else:
            self.server = LocalPostgres(data_dir=data_dir)
            self.server.start()
            self.started_here = True
        self._ensure_database(self.server)
        self.url = self.server.url_for(DATABASE)
        return self.url

    @staticmethod
    def _ensure_database(server: LocalPostgres) -> None:
        with psycopg.connect(server.url, autocommit=True) as conn:
            exists = conn.execute(
                "select 1 from pg_database where datname = %s", (DATABASE,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("create database {}").format(sql.Identifier(DATABASE)))

    def others_connected(self) -> bool:
        assert self.server is not None
        try:
            with psycopg.connect(self.server.url, autocommit=True, connect_timeout=5) as conn:
                row = conn.execute(
                    "select count(*) from pg_stat_activity where backend_type = 'client backend'"
                    " and pid <> pg_backend_pid()"
                ).fetchone()
        except psycopg.Error:
            return False
        return bool(row and row[0])

    def stop(self) -> None:
        if self.server is None or not self.started_here:
            return
        if self.others_connected():
            self.say("Postgres keeps running: another stemfleet process is still using it")
            return
        self.server.stop()


# --- child processes ----------------------------------------------------------------------------


def become_subreaper() -> bool:
    """Linux: orphaned descendants are re-parented to us, so the final sweep can stop them."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def parent_death_signal() -> Callable[[], None] | None:
    """Linux: a hook for Popen(preexec_fn=...) so the child gets SIGTERM if we die without
    stopping it (kill -9 included). The kernel ties it to the forking thread: spawn from the
    main thread. libc is loaded here, in the parent, so the forked child only makes the call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return arm


def child_pids(parent: int) -> list[int]:
    """Processes whose parent is `parent` (from /proc; empty where there is none)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == parent:
            found.append(int(entry.name))
    return found


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def stop(self, timeout: float) -> int | None:
        """SIGTERM to its process group, then SIGKILL after `timeout`; returns the exit code."""
        if self.process.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.process.wait()
        # whatever else is left in its group (a worker started into it) goes too
        self.signal_group(signal.SIGKILL)
        return self.process.returncode


def stemfleet_command(*args: str) -> list[str]:
    """`stemfleet ARGS` with this very interpreter (the same venv, whatever PATH says)."""
    return [sys.executable, "-m", "app.cli", *args]


# --- the system ---------------------------------------------------------------------------------


class EmbeddedSystem:
    """Postgres + migrations + API + scaler (local workers). Use as a context manager.

    `port`: the API's port; 0 picks a free one (for `stemfleet separate`).
    `output`: where the children's logs go: None = our own stdout/stderr, else this file
    (rewritten on every start). `with_scaler`: False for commands that only read jobs.
    `worker_model`: the model workers load at boot. `warm_worker`: start one worker at once
    rather than when the first job is queued (for a command that is about to submit).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        port: int | None = None,
        scaler_interval: float = 1.0,
        output: Path | None = None,
        write_state: bool = False,
        with_scaler: bool = True,
        worker_model: str | None = None,
        warm_worker: bool = False,
        say: Say = print,
    ) -> None:
        self.settings = settings
        self.port = settings.api_port if port is None else port
        self.scaler_interval = scaler_interval
        self.output = output
        self.write_state = write_state
        self.with_scaler = with_scaler
        self.worker_model = worker_model
        self.warm_worker = warm_worker
        self._log_offsets: dict[Path, int] = {}
        self.say = say
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
        if self.port and port_in_use(self.port, self.settings.api_host):
            raise EmbeddedError(
                f"port {self.port} on {self.settings.api_host} is already in use (another "
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
        from app.pgserver import free_port

        self.start_database()
        self.token = ensure_dev_token(self.settings)
        self._subreaper = become_subreaper()
        if self.port == 0:
            self.port = free_port()
        self.api_url = f"http://{self.settings.api_host}:{self.port}"
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
            _write_state(
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
                "STEMFLEET_API_PORT": str(self.port),
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
        process = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT if self._log_handle else None,
            start_new_session=True,  # our Ctrl-C is ours alone: we stop the children in order
            preexec_fn=parent_death_signal(),
        )
        self.children.append(Child(name, process))

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
                state = read_state(self.settings)
                if state is None or state.pid == os.getpid():
                    state_path(self.settings).unlink(missing_ok=True)
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
            keep.add(postmaster_pid(self.postgres.server.data_dir) or -1)
        orphans = [pid for pid in child_pids(os.getpid()) if pid not in keep]
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace + SWEEP_MARGIN
        pending = set(orphans)
        while pending:
            for pid in list(pending):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    pending.discard(pid)
            if not pending:
                break
            if time.monotonic() > deadline:
                for pid in pending:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, 0)
                break
            time.sleep(0.05)

    def __enter__(self) -> EmbeddedSystem:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

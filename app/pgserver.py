"""A Postgres cluster from the machine's own binaries (initdb / pg_ctl): the one way this
project brings a server up.

The embedded default (`stemfleet up`, app.embedded) keeps one in its data folder; the tests, the
benchmarks, the chaos suite and scripts/dump_schema.py start a throwaway one with
`throwaway_postgres` (or use a server named by an environment variable). Postgres refuses to run
as root, so under root every server command runs as the `postgres` OS user through runuser.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from app.db import connect
from app.errors import ConfigError, StemfleetError
from app.processes import pid_alive

SERVER_USER = "postgres"  # the OS user that runs the server when we are root
SUPERUSER = "postgres"  # the database superuser the cluster is created with

INSTALL_HINT = (
    "no PostgreSQL server binaries (initdb, pg_ctl) found on PATH or under "
    "/usr/lib/postgresql/*/bin. Install them (Debian/Ubuntu: `apt-get install postgresql`; "
    "macOS: `brew install postgresql@16`) or point STEMFLEET_DATABASE_URL at an existing "
    "Postgres (e.g. your Supabase project's session connection on port 5432)."
)


class PostgresStartError(StemfleetError):
    """The local cluster could not be initialised or started."""


def find_bin_dir() -> Path:
    """The folder holding initdb and pg_ctl: PATH first, then the newest Debian layout."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(os.path.realpath(on_path)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    for candidate in candidates:
        if (Path(candidate) / "pg_ctl").exists() and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    raise ConfigError(INSTALL_HINT)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _is_root() -> bool:
    return os.geteuid() == 0


def server_can_reach(path: Path) -> bool:
    """Whether the `postgres` OS user can traverse every parent of `path` (root's home is
    usually mode 700, so a cluster under it cannot start)."""
    if not _is_root():
        return True
    try:
        pw = pwd.getpwnam(SERVER_USER)
    except KeyError:
        return False
    probe = path.resolve()
    for parent in [probe, *probe.parents]:
        if not parent.exists():
            continue
        st = parent.stat()
        if st.st_uid == pw.pw_uid:
            continue
        if not st.st_mode & 0o001 and not (st.st_gid == pw.pw_gid and st.st_mode & 0o010):
            return False
    return True


@dataclass
class LocalPostgres:
    """One cluster in `data_dir`, listening on 127.0.0.1:`port` (TCP only)."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    bin_dir: Path = field(default_factory=find_bin_dir)
    fast_unsafe: bool = False  # fsync off: for throwaway test clusters only

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def url_for(self, dbname: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    @classmethod
    def running_in(cls, data_dir: Path) -> LocalPostgres | None:
        """The server already running on `data_dir` (a previous run's), on its own port."""
        found = _postmaster(data_dir)
        if found is None or not pid_alive(found[0]):
            return None
        return cls(data_dir=data_dir, port=found[1])

    def postmaster_pid(self) -> int | None:
        """The server's main process, from its postmaster.pid (None when it has none)."""
        found = _postmaster(self.data_dir)
        return found[0] if found else None

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def _run(self, args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if _is_root():
            cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            log_tail = ""
            if self.log_file.exists():
                log_tail = "\n" + self.log_file.read_text(errors="replace")[-2000:]
            raise PostgresStartError(
                f"`{' '.join(args[:2])}` failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}{log_tail}"
            )
        return result

    def _prepare_dirs(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if _is_root():
            pw = pwd.getpwnam(SERVER_USER)
            os.chown(self.data_dir.parent, pw.pw_uid, pw.pw_gid)
            if self.data_dir.exists():
                os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def running(self) -> bool:
        return (
            self._run(["pg_ctl", "status", "-D", str(self.data_dir)], check=False).returncode == 0
        )

    def start(self, timeout: float = 60.0) -> None:
        if not server_can_reach(self.data_dir):
            raise PostgresStartError(
                f"the `{SERVER_USER}` user cannot reach {self.data_dir} (a parent folder is "
                "private); choose a data folder it can traverse"
            )
        self._prepare_dirs()
        if not self.initialized:
            self._run(
                [
                    "initdb",
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                ]
            )
        if port_in_use(self.port):
            raise PostgresStartError(
                f"port {self.port} is already in use; stop what listens there or pick another port"
            )
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            "-c unix_socket_directories=''",
            "-c max_connections=200",
        ]
        if self.fast_unsafe:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(
            [
                "pg_ctl",
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-o",
                " ".join(options),
                "-w",
                "-t",
                str(int(timeout)),
            ]
        )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise PostgresStartError(f"Postgres did not accept connections: {exc}") from exc
                time.sleep(0.05)

    def restart(self, *, immediate: bool = False, timeout: float = 60.0) -> None:
        """Restart the server. `immediate`: kill it without a shutdown checkpoint, as a crash
        or a power loss would (crash recovery replays the WAL at the start)."""
        mode = "immediate" if immediate else "fast"
        data, log, wait = str(self.data_dir), str(self.log_file), str(int(timeout))
        self._run(["pg_ctl", "restart", "-D", data, "-l", log, "-m", mode, "-w", "-t", wait])
        self._wait_ready(timeout)

    def stop(self) -> None:
        if self.initialized and self.running():
            self._run(["pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w"], check=False)


def _postmaster(data_dir: Path) -> tuple[int, int] | None:
    """The pid and port a server wrote to `data_dir`/postmaster.pid (lines 1 and 4)."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        return int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None


@contextmanager
def throwaway_postgres(prefix: str, *, fast_unsafe: bool) -> Iterator[LocalPostgres]:
    """A new cluster in a temporary folder, started; stopped and deleted afterwards.
    `fast_unsafe`: fsync off, for a server whose data may be lost (tests, schema dumps)."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(base, 0o755)  # the `postgres` OS user must reach it when we run as root
    server = LocalPostgres(data_dir=base / "data", fast_unsafe=fast_unsafe)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def scratch_database(admin_url: str, prefix: str) -> Iterator[str]:
    """A new empty database on the server of `admin_url`, dropped afterwards; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with connect(admin_url) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    finally:
        with connect(admin_url) as conn:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )

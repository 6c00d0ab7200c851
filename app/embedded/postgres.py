"""The embedded default's Postgres: one cluster per data folder (app.pgserver.LocalPostgres),
kept across runs, reused when a previous run left it running, and stopped only when this run
owns it and nobody else is connected."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql

from app.errors import StemfleetError
from app.pgserver import LocalPostgres, server_can_reach
from app.settings import Settings

DATABASE = "stemfleet"

Say = Callable[[str], None]


class EmbeddedError(StemfleetError):
    """The embedded system could not start; the message says why and what to do."""


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
        self.server = LocalPostgres.running_in(data_dir)
        if self.server is not None:
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

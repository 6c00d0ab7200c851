"""Apply supabase/migrations/*.sql in order, recording them in the table `supabase db push` uses
(supabase_migrations.schema_migrations), so either tool sees the same history."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from app.db import Connection, connect
from app.errors import ConfigError
from app.log import get_logger

_FILE = re.compile(r"^(\d{14})_([A-Za-z0-9_]+)\.sql$")
_LOCK_KEY = 0x5354454D  # "STEM": one migrator at a time

_HISTORY_DDL = """
create schema if not exists supabase_migrations;
create table if not exists supabase_migrations.schema_migrations (
    version text not null primary key,
    statements text[],
    name text
);
"""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()


def migrations_dir() -> Path:
    override = os.environ.get("STEMFLEET_MIGRATIONS_DIR")
    path = (
        Path(override)
        if override
        else Path(__file__).resolve().parent.parent / "supabase/migrations"
    )
    if not path.is_dir():
        raise ConfigError(f"STEMFLEET_MIGRATIONS_DIR: no migrations folder at {path}")
    return path


def list_migrations(directory: Path | None = None) -> list[Migration]:
    found = []
    for path in sorted((directory or migrations_dir()).iterdir()):
        match = _FILE.match(path.name)
        if match:
            found.append(Migration(match.group(1), match.group(2), path))
    return found


def bootstrap_sql() -> str:
    return resources.files("app").joinpath("sql/supabase_bootstrap.sql").read_text()


def has_supabase_auth(conn: Connection) -> bool:
    row = conn.execute("select to_regnamespace('auth') is not null as present").fetchone()
    return bool(row and row["present"])


def applied_versions(conn: Connection) -> set[str]:
    row = conn.execute(
        "select to_regclass('supabase_migrations.schema_migrations') is not null as present"
    ).fetchone()
    if not row or not row["present"]:
        return set()
    return {
        r["version"]
        for r in conn.execute("select version from supabase_migrations.schema_migrations")
    }


def pending(conn: Connection, directory: Path | None = None) -> list[Migration]:
    done = applied_versions(conn)
    return [m for m in list_migrations(directory) if m.version not in done]


def migrate(url: str, directory: Path | None = None) -> list[Migration]:
    """Apply pending migrations, each in its own transaction; returns those applied.
    Idempotent: a second run applies nothing."""
    log = get_logger()
    applied: list[Migration] = []
    with connect(url, application_name="stemfleet-migrate") as conn:
        conn.execute("select pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            if not has_supabase_auth(conn):
                with conn.transaction():
                    conn.execute(bootstrap_sql())
                log.info("supabase_bootstrap_applied")
            with conn.transaction():
                conn.execute(_HISTORY_DDL)
            for migration in pending(conn, directory):
                with conn.transaction():
                    conn.execute(migration.sql)
                    conn.execute(
                        "insert into supabase_migrations.schema_migrations"
                        " (version, statements, name) values (%s, %s, %s)",
                        (migration.version, [migration.sql], migration.name),
                    )
                log.info("migration_applied", version=migration.version, name=migration.name)
                applied.append(migration)
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied

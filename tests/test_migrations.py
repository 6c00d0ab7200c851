"""Migrations: idempotent, recorded where `supabase db push` records them, and in agreement with
the schema Postgres actually holds."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from app.db import connect
from app.migrate import list_migrations, migrate, pending
from scripts.dump_schema import pg_dump as dump_schema


def test_migrate_applies_everything_then_nothing(fresh_database: Any) -> None:
    url = fresh_database(None)
    applied = migrate(url)
    assert [m.version for m in applied] == [m.version for m in list_migrations()]
    before = dump_schema(url)

    assert migrate(url) == []
    assert dump_schema(url) == before

    with connect(url) as conn:
        assert pending(conn) == []
        rows = conn.execute(
            "select version, name, statements from supabase_migrations.schema_migrations "
            "order by version"
        ).fetchall()
    assert [(r["version"], r["name"]) for r in rows] == [
        (m.version, m.name) for m in list_migrations()
    ]
    assert all(r["statements"] == [m.sql] for r, m in zip(rows, list_migrations(), strict=True))


def test_migration_files_follow_the_supabase_layout() -> None:
    folder = Path(__file__).resolve().parents[1] / "supabase/migrations"
    names = sorted(p.name for p in folder.iterdir() if p.suffix == ".sql")
    assert names, "no migrations"
    assert all(re.match(r"^\d{14}_[a-z0-9_]+\.sql$", n) for n in names), names
    assert len({n[:14] for n in names}) == len(names), "two migrations share a version"


# Objects a migration creates, as `create [or replace] <kind> [if not exists] schema.name`.
_CREATE = re.compile(
    r"create\s+(?:or\s+replace\s+)?(table|view|function|type|trigger|policy|index)\s+"
    r"(?:if\s+not\s+exists\s+)?([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)?)",
    re.IGNORECASE,
)


def test_migration_files_and_the_schema_dump_agree(fresh_database: Any) -> None:
    url = fresh_database(None)
    migrate(url)
    dump = dump_schema(url)
    declared = {
        (kind.lower(), name.lower())
        for m in list_migrations()
        for kind, name in _CREATE.findall(re.sub(r"--[^\n]*", "", m.sql))
    }
    dumped = {
        (kind.lower(), name.lower())
        for kind, name in _CREATE.findall(dump)
        if not name.lower().startswith(("auth.", "supabase_migrations."))
    }

    # The dump names every object with its schema; migrations may name triggers, policies and
    # indexes without one.
    def bare(items: set[tuple[str, str]]) -> set[tuple[str, str]]:
        return {(k, n.split(".")[-1]) for k, n in items}

    assert bare(declared) == bare(dumped), (
        f"in migrations only: {sorted(bare(declared) - bare(dumped))}; "
        f"in the database only: {sorted(bare(dumped) - bare(declared))}"
    )

"""supabase/schema.sql is what the migrations add up to: object by object, definitions included."""

from __future__ import annotations

from scripts.dump_schema import (
    REGENERATE,
    SCHEMA_FILE,
    migrated_objects,
    render,
    split_objects,
)


def test_schema_file_matches_a_database_migrated_from_scratch(pg_admin_url: str) -> None:
    migrated = migrated_objects(pg_admin_url)
    written = split_objects(SCHEMA_FILE.read_text())
    problems = [f"missing from {SCHEMA_FILE.name}: {key}" for key in migrated.keys() - written]
    problems += [f"not in the database: {key}" for key in written.keys() - migrated]
    problems += [
        f"differs: {key}"
        for key in migrated.keys() & written.keys()
        if migrated[key] != written[key]
    ]
    assert not problems, (
        f"supabase/schema.sql is out of date; regenerate it with `{REGENERATE}`:\n"
        + "\n".join(sorted(problems))
    )
    assert SCHEMA_FILE.read_text() == render(migrated), f"regenerate it with `{REGENERATE}`"

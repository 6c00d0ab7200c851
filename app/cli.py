"""The `stemfleet` command.

Core commands live here; the worker, the scaler and the API add theirs through the entry point
group `stemfleet.commands` (each entry is a `register(subparsers)` function), so `app` never
imports `worker` or `scaler` and the API installs without torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from app import __version__
from app.errors import StemfleetError

Handler = Callable[[argparse.Namespace], int]
COMMAND_GROUP = "stemfleet.commands"


def _db_migrate(args: argparse.Namespace) -> int:
    from app.db import connect
    from app.migrate import migrate
    from app.queue import Queue
    from app.settings import get_settings

    settings = get_settings()
    applied = migrate(settings.require_database_url())
    if applied:
        for migration in applied:
            print(f"applied {migration.version}_{migration.name}")
    else:
        print("database is up to date")
    with connect(settings.require_database_url()) as conn:  # a new job's defaults, for SQL
        Queue().configure_jobs(conn, max_attempts=settings.max_attempts, model=settings.model)
    print(f"job defaults: max_attempts {settings.max_attempts}, model {settings.model}")
    return 0


def _db_status(args: argparse.Namespace) -> int:
    from app.db import connect
    from app.migrate import applied_versions, list_migrations
    from app.settings import get_settings

    with connect(get_settings().require_database_url()) as conn:
        done = applied_versions(conn)
    pending = 0
    for migration in list_migrations():
        state = "applied" if migration.version in done else "pending"
        pending += state == "pending"
        print(f"{state:8} {migration.version}_{migration.name}")
    return 1 if pending else 0


def _register_core(sub: Any) -> None:
    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("migrate", help="apply pending migrations").set_defaults(handler=_db_migrate)
    db_sub.add_parser("status", help="list migrations and whether each is applied").set_defaults(
        handler=_db_status
    )
    from app.commands import register as register_commands  # up, separate, process, jobs...

    register_commands(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stemfleet", description="Music stem separation on a Postgres-queued GPU fleet."
    )
    parser.add_argument("--version", action="version", version=f"stemfleet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_core(sub)
    for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        entry.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from app.log import configure
    from app.settings import get_settings

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
        configure(settings.log_level, settings.log_json)
        handler: Handler = args.handler
        return handler(args)
    except StemfleetError as exc:
        print(f"stemfleet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

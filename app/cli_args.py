"""argparse pieces the `stemfleet` subcommands share (app/commands, worker/, scaler/)."""

from __future__ import annotations

import argparse
from typing import Any

from app.settings import parse_duration


def add_command(subparsers: Any, name: str, doc: str | None, help: str) -> argparse.ArgumentParser:
    """A subcommand whose --help shows `help` in the list and its module's `doc` as written."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    return parser


def duration(text: str) -> float:
    """argparse type for a duration such as 30s, 5m or 1.5 (seconds): `parse_duration`'s own
    message on bad input, not argparse's 'invalid value'."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None

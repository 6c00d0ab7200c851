"""The user-facing commands: `up`, `separate`, `process`, `jobs`, `status`, `cancel`,
`download` (registered by app.cli)."""

from __future__ import annotations

from typing import Any

from app.commands import jobs, process, separate, up


def register(sub: Any) -> None:
    up.register(sub)
    separate.register(sub)
    process.register(sub)
    jobs.register(sub)

"""The state file of a running `stemfleet up`: how other commands of the same data folder find
its API, token and database (`<data_dir>/embedded.json`, mode 600)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from app.processes import pid_alive
from app.settings import Settings

STATE_FILE = "embedded.json"


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


def save_state(settings: Settings, state: EmbeddedState) -> None:
    """Replace the state file at once (never half written), readable by this user alone."""
    path = state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(asdict(state), handle, indent=2)
    os.replace(path.with_suffix(".tmp"), path)


def remove_state(settings: Settings) -> None:
    """Remove the state file if it is ours (a later `stemfleet up` may have replaced it)."""
    state = read_state(settings)
    if state is None or state.pid == os.getpid():
        state_path(settings).unlink(missing_ok=True)

"""A worker's scratch folder (inputs and stems of the jobs it holds), and the sweep of the
folders of workers that died without removing theirs (SIGKILL, out of memory, a power loss).

The folder's name says whose it is: `stemfleet-worker-<pid>-<start>-<worker id>`, `start` being
the owning process's start time in hundredths of a second, so a pid reused by a later process
is not mistaken for the owner. A worker sweeps, when it starts, every such folder in its base
folder whose owner is no longer alive (psutil tells).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any
from uuid import UUID

import psutil

PREFIX = "stemfleet-worker-"
_NAME = re.compile(rf"^{PREFIX}(\d+)-(\d+)-[0-9a-f]{{32}}$")


def _started(process: psutil.Process) -> int:
    return round(process.create_time() * 100)


def scratch_name(worker_id: UUID) -> str:
    """The scratch folder's name for this process and `worker_id`."""
    me = psutil.Process()
    return f"{PREFIX}{me.pid}-{_started(me)}-{worker_id.hex}"


def owner_alive(pid: int, started: int) -> bool:
    """Whether the process that made a folder named for (`pid`, `started`) still runs."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(_started(process) - started) <= 1
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # not ours to inspect: it is alive
        return True


def sweep_dead(base: Path, log: Any) -> list[Path]:
    """Remove the scratch folders in `base` whose owner is dead; returns them, in name order."""
    removed: list[Path] = []
    if not base.is_dir():
        return removed
    for path in sorted(base.iterdir()):
        found = _NAME.match(path.name)
        if found is None or not path.is_dir() or owner_alive(int(found[1]), int(found[2])):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
        log.info("scratch_swept", folder=path.name, dead_pid=int(found[1]))
    return removed

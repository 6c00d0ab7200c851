"""The embedded default's child processes: started each in its own session and process group,
tied to us so none outlives us, and stopped group by group.

Linux gives two guarantees here: a child gets SIGTERM from the kernel should we die without
stopping it (kill -9 included), and as a child subreaper we inherit a worker orphaned by an
exiting scaler, so the final sweep can stop it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Self

import psutil

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Linux: orphaned descendants are re-parented to us, so the final sweep can stop them."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def parent_death_signal() -> Callable[[], None] | None:
    """Linux: a hook for Popen(preexec_fn=...) so the child gets SIGTERM if we die without
    stopping it (kill -9 included). The kernel ties it to the forking thread: spawn from the
    main thread. libc is loaded here, in the parent, so the forked child only makes the call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return arm


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def stop(self, timeout: float) -> int | None:
        """SIGTERM to its process group, then SIGKILL after `timeout`; returns the exit code."""
        if self.process.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.process.wait()
        # whatever else is left in its group (a worker started into it) goes too
        self.signal_group(signal.SIGKILL)
        return self.process.returncode


def spawn(name: str, argv: list[str], env: dict[str, str], log: IO[bytes] | None) -> Child:
    """Start `argv` in its own session (our Ctrl-C is ours alone: we stop the children in
    order), its output to `log` (None: our own stdout and stderr)."""
    process = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT if log else None,
        start_new_session=True,
        preexec_fn=parent_death_signal(),
    )
    return Child(name, process)


def sweep_orphans(keep: set[int], grace: float) -> None:
    """Stop our children other than `keep` (descendants re-parented to us, such as a worker
    its scaler left behind): SIGTERM, then SIGKILL to those still there after `grace` s."""
    orphans = [p.pid for p in psutil.Process().children() if p.pid not in keep]
    for pid in orphans:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    pending = set(orphans)
    while pending:
        for pid in list(pending):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                pending.discard(pid)
        if not pending:
            break
        if time.monotonic() > deadline:
            for pid in pending:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            break
        time.sleep(0.05)


class StartStop:
    """A system of processes used as a context manager: `start()` on entering the `with` block,
    `stop()` on leaving it, and `stop()` too when `start()` fails half way, so nothing it had
    started is left running. `stop()` must cope with a partial start."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

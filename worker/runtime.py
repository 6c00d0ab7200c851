"""Process plumbing for the worker: who it is, background tasks, and signals."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from types import FrameType
from typing import TypeVar

from app.settings import Settings

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    machine_id: str
    provider: str
    gpu: str | None
    region: str | None


def gpu_name() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    if torch.cuda.is_available():
        return str(torch.cuda.get_device_name(0))
    return None


# Where each provider tells a machine its own id, in order; the host name when none does.
MACHINE_ID_VARIABLES = ("STEMFLEET_MACHINE_ID", "FLY_MACHINE_ID", "RUNPOD_POD_ID")


def machine_id_from(settings: Settings, environ: Mapping[str, str]) -> str:
    """The id the provider knows this machine by: STEMFLEET_MACHINE_ID (the settings), else
    FLY_MACHINE_ID (Fly), else RUNPOD_POD_ID (RunPod), else the host name."""
    if settings.machine_id:
        return settings.machine_id
    found = (environ.get(name) for name in MACHINE_ID_VARIABLES[1:])
    return next((value for value in found if value), None) or socket.gethostname()


def detect_identity(settings: Settings) -> WorkerIdentity:
    """Who this worker is (machine_id_from). One machine runs one worker process: registering a
    machine id again marks its older registration stopped."""
    machine_id = machine_id_from(settings, os.environ)
    return WorkerIdentity(
        machine_id=machine_id,
        provider=settings.worker_provider,
        gpu=gpu_name(),
        region=settings.region or os.environ.get("FLY_REGION") or None,
    )


def spawn(fn: Callable[[], T], name: str) -> Future[T]:
    """Run `fn` on a daemon thread: a stuck upload must never keep the process from exiting
    (ThreadPoolExecutor joins its threads at exit)."""
    future: Future[T] = Future()

    def target() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


class SignalRelay:
    """Delivers SIGINT / SIGTERM to `on_signal(signum)` on a helper thread.

    Python runs signal handlers on the main thread between bytecodes, possibly while that thread
    holds a lock that the handler would need (an Event's condition, say). Here the C-level handler
    only writes the signal number to a pipe (signal.set_wakeup_fd); a helper thread reads it and
    calls `on_signal` outside any lock the main thread may hold.
    """

    def __init__(
        self,
        on_signal: Callable[[int], None],
        signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM),
    ) -> None:
        self._on_signal = on_signal
        self._signals = tuple(signals)
        self._previous: dict[int, object] = {}
        self._previous_fd = -1
        self._pipe: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def _ignore(signum: int, frame: FrameType | None) -> None:
        """The Python-level handler: the work happens on the relay thread."""

    def install(self) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._pipe = (read_fd, write_fd)
        self._previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for signum in self._signals:
            self._previous[signum] = signal.signal(signum, self._ignore)
        self._thread = threading.Thread(target=self._relay, name="signal-relay", daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        assert self._pipe is not None
        read_fd = self._pipe[0]
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in self._signals:
                    self._on_signal(signum)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
        signal.set_wakeup_fd(self._previous_fd)
        if self._pipe is not None:
            os.close(self._pipe[1])  # the relay thread reads EOF and ends
            if self._thread is not None:
                self._thread.join(timeout=2)
            os.close(self._pipe[0])
            self._pipe = None

    def __enter__(self) -> SignalRelay:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

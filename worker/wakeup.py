"""Wakes an idle worker the moment a job is queued.

A background thread LISTENs on `stemfleet_jobs_queued` and sets the worker's wake-up event on
every notification, so the main loop, which waits on that event through the injected clock,
claims within milliseconds of an insert instead of at its next poll. If the session connection
drops, it reconnects with backoff and wakes the loop once (notifications may have been missed);
the poll interval covers the gap meanwhile.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from app.db import Listener
from app.queue import QUEUED_CHANNEL
from app.retry import exponential, retrying

LISTEN_TIMEOUT = 0.25  # how long one wait on the connection lasts; bounds close()
MAX_RECONNECT_DELAY = 30.0


class QueueWatcher:
    def __init__(self, url: str, wake: Callable[[], None], *, log: Any) -> None:
        self._url = url
        self._wake = wake
        self._log = log
        self._listener: Listener | None = None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="queue-watcher", daemon=True)

    def start(self) -> None:
        """LISTEN before returning, so a job inserted after start() is never missed."""
        self._listener = self._connect()
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=LISTEN_TIMEOUT * 4)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _connect(self) -> Listener:
        return Listener(self._url, [QUEUED_CHANNEL], name="stemfleet-worker-listen")

    def _reconnect(self) -> Listener:
        """A new LISTEN connection, tried with backoff until it opens or the watcher closes."""
        return retrying(
            on=psycopg.Error,
            wait=exponential(0.5, MAX_RECONNECT_DELAY),
            sleep=self._closed.wait,
            until=self._closed,
            log=self._log,
            event="listen_reconnect_failed",
        )(self._connect)

    def _run(self) -> None:
        while not self._closed.is_set():
            if self._listener is None:
                try:
                    self._listener = self._reconnect()
                except psycopg.Error:  # raised only once the watcher is closed
                    return
                self._log.info("listen_reconnected")
                self._wake()
            try:
                notes = self._listener.wait(LISTEN_TIMEOUT)
            except psycopg.Error as exc:
                self._log.warning("listen_connection_lost", error=str(exc))
                with contextlib.suppress(psycopg.Error):
                    self._listener.close()
                self._listener = None
                continue
            if notes:
                self._wake()

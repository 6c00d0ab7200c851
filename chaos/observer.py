"""Every transition of every job, as a user watching it would see it.

A thread LISTENs on the queue's events channel (the NOTIFY every status or progress change
sends, the one the API's event stream follows) and re-reads the job's row on each one, keeping
a history of what it saw: status, attempt, worker and finish time. Postgres going away (a
restart, a crash) drops the connection: the thread reconnects and re-reads every job it follows.
A success the database forgets in a crash is still in the history, so a job that went from
succeeded back to running, or succeeded in two attempts, shows.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import psycopg

from app.db import Connection, Listener, connect
from app.queue import EVENTS_CHANNEL, Job, Queue
from app.retry import fixed, retrying

RECONNECT_PAUSE = 0.2


@dataclass(frozen=True)
class Seen:
    at: float  # time.monotonic() when it was read
    status: str
    attempts: int
    worker_id: uuid.UUID | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> Seen:
        return cls(time.monotonic(), job.status, job.attempts, job.worker_id, job.finished_at)

    def same_state(self, other: Seen) -> bool:
        return (self.status, self.attempts, self.worker_id, self.finished_at) == (
            other.status,
            other.attempts,
            other.worker_id,
            other.finished_at,
        )


class JobObserver:
    """Start it, `track()` each submitted job, read `history`; `stop()` at the end."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.history: dict[uuid.UUID, list[Seen]] = {}
        self.successes = 0  # transitions to succeeded seen so far
        self.last_change = time.monotonic()
        self.disconnects = 0  # connections lost (Postgres restarted or crashed)
        self._changed = threading.Condition()
        self._pending: set[uuid.UUID] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-observer", daemon=True)
        self._queue = Queue()

    # --- the driver's side ------------------------------------------------------------------
    def start(self) -> JobObserver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def track(self, job_id: uuid.UUID) -> None:
        with self._changed:
            self.history.setdefault(job_id, [])
            self._pending.add(job_id)

    def last(self, job_id: uuid.UUID) -> Seen | None:
        with self._changed:
            seen = self.history.get(job_id)
            return seen[-1] if seen else None

    def running(self) -> list[tuple[uuid.UUID, Seen]]:
        """The jobs last seen running, in the order they were submitted."""
        with self._changed:
            return [
                (job_id, seen[-1])
                for job_id, seen in self.history.items()
                if seen and seen[-1].status == "running"
            ]

    def idle(self) -> bool:
        """No job followed is queued or running (as last seen)."""
        with self._changed:
            return all(
                seen and seen[-1].status in ("succeeded", "failed", "cancelled")
                for seen in self.history.values()
            )

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Until `predicate()` holds (re-checked on every change seen) or `timeout` passes."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    # --- the thread -------------------------------------------------------------------------
    def _run(self) -> None:
        with contextlib.suppress(psycopg.Error):  # raised only once the observer stops
            retrying(
                on=psycopg.Error,
                wait=fixed(RECONNECT_PAUSE),
                sleep=self._stop.wait,
                until=self._stop,
                log=None,  # counted in `disconnects`
                event="chaos_observer_reconnect",
            )(self._session)

    def _session(self) -> None:
        """Follow the changes until the observer stops or the connection fails."""
        connected = False
        try:
            with (
                Listener(self.url, [EVENTS_CHANNEL], name="chaos-observer") as listener,
                connect(self.url, application_name="chaos-observer") as conn,
            ):
                with self._changed:
                    self._pending.update(self.history)  # whatever changed while away
                connected = True
                self._follow(listener, conn)
        except psycopg.Error:
            if connected:
                self.disconnects += 1
            raise

    def _follow(self, listener: Listener, conn: Connection) -> None:
        while not self._stop.is_set():
            with self._changed:
                ids, self._pending = self._pending, set()
            for job_id in sorted(ids):
                self._read(conn, job_id)
            for _, payload in listener.wait(0.2):
                try:
                    job_id = uuid.UUID(payload)
                except ValueError:
                    continue
                with self._changed:
                    if job_id in self.history:
                        self._pending.add(job_id)

    def _read(self, conn: Connection, job_id: uuid.UUID) -> None:
        try:
            seen = Seen.of(self._queue.get(conn, job_id))
        except psycopg.Error:
            with self._changed:
                self._pending.add(job_id)  # read it again once reconnected
            raise
        with self._changed:
            history = self.history[job_id]
            if history and history[-1].same_state(seen):
                return
            if seen.status == "succeeded":
                self.successes += 1
            history.append(seen)
            self.last_change = seen.at
            self._changed.notify_all()

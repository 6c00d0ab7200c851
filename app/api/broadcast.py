"""One LISTEN connection per API process, fanned out in memory to every event stream.

The broadcaster LISTENs on `stemfleet_job_events` (payload: a job id). Notifications are
gathered while a re-read is under way; then the jobs that have subscribers (and, when anything
changed, every subscribed job still in line, whose place may have moved) are re-read in one
round trip through the API's pool, and each subscriber gets its job's latest state. However many
streams are open, the process holds this one extra connection.

If the LISTEN connection drops, it reconnects with backoff and then re-reads every subscribed job,
so a change made while it was away is still delivered. Each user may hold a bounded number of
open streams (STEMFLEET_SSE_MAX_STREAMS_PER_USER).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import KW_ONLY, dataclass
from uuid import UUID

import psycopg
from psycopg import sql

from app.errors import StemfleetError
from app.log import get_logger
from app.queue import EVENTS_CHANNEL, Job
from app.retry import AsyncSleep, async_retrying, exponential

HEALTH_CHECK_INTERVAL = 30.0  # seconds without a notification before the connection is probed


@dataclass(frozen=True, slots=True)
class JobState:
    """A job as a stream shows it: the row and its place in line (None unless in line)."""

    job: Job
    position: int | None

    @property
    def shown(self) -> tuple[str, float, int | None]:
        """What a subscriber is told about when it changes."""
        return self.job.status, self.job.progress, self.position


ReadStates = Callable[[list[UUID]], Awaitable[dict[UUID, JobState]]]


class TooManyStreams(StemfleetError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} open event streams per user")
        self.limit = limit


class BroadcasterUnavailable(StemfleetError):
    """The LISTEN connection is not established (the database is unreachable)."""


class Subscription:
    """One stream's inbox: only the latest state is kept (a slow reader skips stale ones)."""

    def __init__(self, broadcaster: JobEventBroadcaster, user_id: UUID, job_id: UUID) -> None:
        self.broadcaster = broadcaster
        self.user_id = user_id
        self.job_id = job_id
        self.last: JobState | None = None
        self._latest: JobState | None = None
        self._gone = False
        self._changed = asyncio.Event()

    def offer(self, state: JobState | None) -> None:
        """A fresh state, or None when the job no longer exists."""
        if state is None:
            self._gone = True
        else:
            self._latest = state
        self._changed.set()

    async def updates(self) -> AsyncIterator[JobState]:
        """Each new state, until the job is gone; the caller stops after a final status."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            if self._gone:
                return
            if self._latest is not None:
                yield self._latest

    def close(self) -> None:
        self.broadcaster.unsubscribe(self)


@dataclass(eq=False)
class JobEventBroadcaster:
    database_url: str
    read_states: ReadStates
    _: KW_ONLY
    max_streams_per_user: int
    connect_timeout: float = 10.0
    sleep: AsyncSleep = asyncio.sleep
    health_check_interval: float = HEALTH_CHECK_INTERVAL

    def __post_init__(self) -> None:
        self.log = get_logger()
        self._by_job: dict[UUID, set[Subscription]] = {}
        self._per_user: dict[UUID, int] = {}
        self._dirty: set[UUID] = set()
        self._in_line: set[UUID] = set()  # subscribed jobs last seen queued (or not yet read)
        self._anything_changed = False
        self._wake = asyncio.Event()
        self._listening = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.connections = 0  # LISTEN connections made so far (1 + reconnects)

    # --- subscribers ----------------------------------------------------------------------
    async def subscribe(self, user_id: UUID, job_id: UUID) -> Subscription:
        """Register a stream before its first read, so no change after that read is missed.
        Raises TooManyStreams over the per-user cap, BroadcasterUnavailable when not listening."""
        if self._per_user.get(user_id, 0) >= self.max_streams_per_user:
            raise TooManyStreams(self.max_streams_per_user)
        await self._ensure_listening()
        subscription = Subscription(self, user_id, job_id)
        self._per_user[user_id] = self._per_user.get(user_id, 0) + 1
        self._by_job.setdefault(job_id, set()).add(subscription)
        self._in_line.add(job_id)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._by_job.get(subscription.job_id)
        if subscribers is None or subscription not in subscribers:
            return
        subscribers.discard(subscription)
        if not subscribers:
            del self._by_job[subscription.job_id]
            self._in_line.discard(subscription.job_id)
        left = self._per_user[subscription.user_id] - 1
        if left:
            self._per_user[subscription.user_id] = left
        else:
            del self._per_user[subscription.user_id]

    @property
    def open_streams(self) -> int:
        return sum(self._per_user.values())

    # --- lifecycle ------------------------------------------------------------------------
    async def _ensure_listening(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._listen_forever(), name="sse-listen"),
                asyncio.create_task(self._refresh_forever(), name="sse-refresh"),
            ]
        try:
            await asyncio.wait_for(self._listening.wait(), self.connect_timeout)
        except TimeoutError:
            raise BroadcasterUnavailable("the event listener is not connected") from None

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._listening.clear()

    # --- the LISTEN connection ------------------------------------------------------------
    async def _listen_forever(self) -> None:
        retrying = async_retrying(
            on=(psycopg.Error, OSError),
            wait=exponential(0.1, 5.0),
            sleep=self.sleep,
            log=self.log,
            event="sse_listener_reconnecting",
        )
        while True:
            async for attempt in retrying:
                with attempt:
                    await self._listen_once()

    async def _listen_once(self) -> None:
        """Listen until the connection fails (a psycopg error); then it is retried."""
        conn = await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True, application_name="stemfleet-api-events"
        )
        try:
            await conn.execute(sql.SQL("listen {}").format(sql.Identifier(EVENTS_CHANNEL)))
            self.connections += 1
            self._listening.set()
            self.log.info("sse_listening", connection=self.connections)
            if self.connections > 1:
                # Whatever changed while we were away: re-read every subscribed job.
                self._mark(set(self._by_job), anything=True)
            while True:
                async for note in conn.notifies(timeout=self.health_check_interval):
                    self._notified(note.payload)
                await conn.execute("select 1")  # a silent network drop fails here
        finally:
            self._listening.clear()
            await conn.close()

    def _notified(self, payload: str) -> None:
        try:
            job_id = UUID(payload)
        except ValueError:
            return
        self._mark({job_id} if job_id in self._by_job else set(), anything=True)

    def _mark(self, job_ids: set[UUID], *, anything: bool) -> None:
        self._dirty |= job_ids
        self._anything_changed |= anything
        self._wake.set()

    # --- re-reading and fanning out -------------------------------------------------------
    async def _refresh_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.refresh_once()
            except Exception as exc:  # a failed read must not end live status for everyone
                self.log.warning("sse_refresh_failed", error=str(exc))
                await self.sleep(0.5)
                self._mark(set(), anything=True)

    async def refresh_once(self) -> None:
        """Re-read the jobs marked since the last call and offer each to its subscribers."""
        dirty, self._dirty = self._dirty, set()
        anything, self._anything_changed = self._anything_changed, False
        if anything:  # any change can move a queued job's place in line
            dirty |= self._in_line
        wanted = [job_id for job_id in dirty if job_id in self._by_job]
        if not wanted:
            return
        try:
            states = await self.read_states(wanted)
        except BaseException:
            self._dirty |= set(wanted)
            raise
        for job_id in wanted:
            state = states.get(job_id)
            if state is not None and state.job.status == "queued" and job_id in self._by_job:
                self._in_line.add(job_id)
            else:
                self._in_line.discard(job_id)
            for subscription in list(self._by_job.get(job_id, ())):
                subscription.offer(state)

"""Workers: registration, heartbeats, draining and stopping (the queue.* worker functions)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

from psycopg.rows import class_row

from app.db import Connection
from app.errors import QueueError
from app.queue.base import SqlCaller


@dataclass(frozen=True, slots=True)
class Worker:
    id: UUID
    machine_id: str
    provider: str
    gpu: str | None
    region: str | None
    state: Literal["idle", "busy", "stopped", "lost"]
    draining: bool
    current_job_id: UUID | None
    started_at: datetime
    last_heartbeat_at: datetime
    idle_since: datetime | None
    stopped_at: datetime | None
    stop_reason: str | None = None  # why a worker refused to run (queue.worker_refused)


WORKER = class_row(Worker)

Q_REGISTER_WORKER = """
select * from queue.register_worker(p_machine_id => %(machine_id)s, p_provider => %(provider)s,
    p_gpu => %(gpu)s, p_region => %(region)s, p_now => %(now)s)
"""
Q_WORKER_HEARTBEAT = "select * from queue.worker_heartbeat(%(worker_id)s, p_now => %(now)s)"
Q_DRAIN_WORKER = "select * from queue.drain_worker(%(worker_id)s, %(draining)s)"
Q_WORKER_STOPPED = "select * from queue.worker_stopped(%(worker_id)s, p_now => %(now)s)"
Q_WORKER_REFUSED = """
select * from queue.worker_refused(p_machine_id => %(machine_id)s, p_provider => %(provider)s,
    p_gpu => %(gpu)s, p_region => %(region)s, p_reason => %(reason)s, p_now => %(now)s)
"""
Q_GET_WORKER = "select * from public.workers where id = %(worker_id)s"


class WorkerQueries(SqlCaller):
    def register_worker(
        self,
        conn: Connection,
        *,
        machine_id: str,
        provider: str = "local",
        gpu: str | None = None,
        region: str | None = None,
    ) -> Worker:
        args = {"machine_id": machine_id, "provider": provider, "gpu": gpu, "region": region}
        return self._made(conn, WORKER, Q_REGISTER_WORKER, args)

    def worker_heartbeat(self, conn: Connection, worker_id: UUID) -> Worker:
        return self._made(conn, WORKER, Q_WORKER_HEARTBEAT, {"worker_id": worker_id})

    def drain_worker(self, conn: Connection, worker_id: UUID, draining: bool = True) -> Worker:
        args = {"worker_id": worker_id, "draining": draining}
        return self._made(conn, WORKER, Q_DRAIN_WORKER, args)

    def worker_stopped(self, conn: Connection, worker_id: UUID) -> Worker | None:
        return self._row(conn, WORKER, Q_WORKER_STOPPED, {"worker_id": worker_id})

    def worker_refused(
        self,
        conn: Connection,
        *,
        machine_id: str,
        provider: str,
        gpu: str | None,
        region: str | None,
        reason: str,
    ) -> Worker:
        """Register this boot's worker as stopped at once, with the reason it cannot run."""
        return self._made(
            conn,
            WORKER,
            Q_WORKER_REFUSED,
            {
                "machine_id": machine_id,
                "provider": provider,
                "gpu": gpu,
                "region": region,
                "reason": reason,
            },
        )

    def get_worker(self, conn: Connection, worker_id: UUID) -> Worker:
        worker = self._row(conn, WORKER, Q_GET_WORKER, {"worker_id": worker_id})
        if worker is None:
            raise QueueError(f"worker {worker_id} not found")
        return worker

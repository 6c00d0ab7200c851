"""Small helpers shared by the queue's tests."""

from __future__ import annotations

import uuid

from app.db import Connection
from app.queue import Job, Queue

USER = uuid.UUID("00000000-0000-4000-8000-00000000000a")


def enqueue(queue: Queue, conn: Connection, **kwargs: object) -> Job:
    args: dict[str, object] = {"user_id": USER, "input_key": f"inputs/{USER}/x.wav"}
    args.update(kwargs)
    job, created = queue.enqueue(conn, **args)  # type: ignore[arg-type]
    assert created
    return job


def worker(queue: Queue, conn: Connection, name: str = "m1") -> uuid.UUID:
    return queue.register_worker(conn, machine_id=name).id

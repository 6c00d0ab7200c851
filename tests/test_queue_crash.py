"""Through a Postgres crash: a completion is never lost (a lost claim may re-run a job).

The cluster here is the test's own, durable like a production one (fsync on, unlike the shared
test cluster), and its WAL writer is slowed down to its maximum delay so that a commit which does
not wait for its own WAL flush surely is not on disk when `pg_ctl restart -m immediate` kills the
server right after it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from app.clock import FakeClock
from app.db import connect
from app.migrate import migrate
from app.pgserver import LocalPostgres, throwaway_postgres
from app.queue import Queue

USER = uuid.UUID("00000000-0000-4000-8000-00000000000c")


@pytest.fixture
def crashable_url() -> Iterator[tuple[LocalPostgres, str]]:
    # fsync on: a crash loses what was not flushed
    with throwaway_postgres("stemfleet-pgcrash-", fast_unsafe=False) as server:
        with connect(server.url) as conn:
            conn.execute("alter system set wal_writer_delay = '10s'")
            conn.execute("alter system set wal_writer_flush_after = '1GB'")
            conn.execute("select pg_reload_conf()")
            conn.execute("create database stemfleet")
        url = server.url_for("stemfleet")
        migrate(url)
        yield server, url


def test_a_completed_job_stays_succeeded_through_an_immediate_restart(
    crashable_url: tuple[LocalPostgres, str],
) -> None:
    server, url = crashable_url
    queue = Queue(FakeClock())
    with connect(url) as conn:
        job, _ = queue.enqueue(conn, user_id=USER, input_key=f"inputs/{USER}/a.wav")
        worker = queue.register_worker(conn, machine_id="crash-1")
        (claimed,) = queue.claim(conn, worker.id, lease=60)
        done = queue.complete(conn, claimed, output={"stems": {"vocals": "outputs/x/vocals.wav"}})
        assert done.status == "succeeded"

    server.restart(immediate=True)

    with connect(url) as conn:
        after = queue.get(conn, job.id)
        assert after.status == "succeeded"
        assert after.output == {"stems": {"vocals": "outputs/x/vocals.wav"}}
        assert queue.claim(conn, worker.id, lease=60) == []  # nothing to run a second time

"""The worker's LISTEN connection: lost, it is opened again through the retry helper (backoff
while the database refuses), and the loop is woken once it is back (notifications may have been
missed meanwhile)."""

from __future__ import annotations

import threading
from typing import Any

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from app.db import connect
from worker.wakeup import QueueWatcher


class Lines:
    """The watcher's log: each event, and an Event per event name to wait on."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.seen: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def _note(self, event: str, **fields: Any) -> None:
        with self._lock:
            self.events.append(event)
            self.seen.setdefault(event, threading.Event()).set()

    def waiter(self, event: str) -> threading.Event:
        with self._lock:
            return self.seen.setdefault(event, threading.Event())

    info = warning = _note


def test_a_lost_listen_connection_is_retried_until_it_opens_then_the_loop_wakes(
    db_url: str, pg_admin_url: str
) -> None:
    admin = connect(pg_admin_url)  # on another database: this one's connections get refused
    database = sql.Identifier(conninfo_to_dict(db_url)["dbname"])
    lines = Lines()
    woken = threading.Event()
    watcher = QueueWatcher(db_url, woken.set, log=lines)
    watcher.start()
    try:
        admin.execute(sql.SQL("alter database {} allow_connections false").format(database))
        admin.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity"
            " where application_name = 'stemfleet-worker-listen'"
        )
        assert lines.waiter("listen_reconnect_failed").wait(30)  # refused: waits, tries again
        assert not woken.is_set()
        admin.execute(sql.SQL("alter database {} allow_connections true").format(database))
        assert lines.waiter("listen_reconnected").wait(30)
        assert woken.wait(5)
    finally:
        admin.execute(sql.SQL("alter database {} allow_connections true").format(database))
        watcher.close()
        admin.close()
    assert lines.events[:2] == ["listen_connection_lost", "listen_reconnect_failed"]
    assert lines.events[-1] == "listen_reconnected"

"""The embedded default's parts on their own: its Postgres, reused when a killed run left it
running and stopped only when nobody else uses it; and the sweep that stops the children left
behind (app/embedded/postgres.py, app/embedded/supervision.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from app.embedded.postgres import EmbeddedPostgres
from app.pgserver import LocalPostgres
from app.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def settings() -> Iterator[Settings]:
    # Not under pytest's tmp_path (mode 700): the `postgres` OS user must reach the cluster.
    base = Path(tempfile.mkdtemp(prefix="stemfleet-embedded-"))
    os.chmod(base, 0o755)
    yield load_settings(data_dir=base / "data")
    leftover = LocalPostgres.running_in(base / "data" / "pg" / "data")
    if leftover is not None:
        leftover.stop()
    shutil.rmtree(base, ignore_errors=True)


def test_a_postgres_a_killed_run_left_running_is_reused_and_stopped_once_nobody_uses_it(
    settings: Settings,
) -> None:
    first = EmbeddedPostgres(settings, say=lambda _: None)
    url = first.start()  # then "killed": it never stops its server
    assert first.server is not None
    data_dir = first.server.data_dir
    assert data_dir == settings.data_dir.resolve() / "pg" / "data"

    said: list[str] = []
    second = EmbeddedPostgres(settings, say=said.append)
    assert second.start() == url
    assert second.server is not None and second.server.port == first.server.port
    assert second.started_here
    assert said == [f"note: reusing the Postgres a previous run left running ({data_dir})"]

    with psycopg.connect(url):  # another stemfleet process, still connected
        second.stop()
        assert said[-1] == "Postgres keeps running: another stemfleet process is still using it"
        assert LocalPostgres.running_in(data_dir) is not None
    second.stop()
    assert LocalPostgres.running_in(data_dir) is None


def test_a_run_that_finds_the_postgres_in_use_leaves_it_running(settings: Settings) -> None:
    first = EmbeddedPostgres(settings, say=lambda _: None)
    url = first.start()
    with psycopg.connect(url):  # `stemfleet up` is running and connected
        second = EmbeddedPostgres(settings, say=lambda _: None)
        second.start()
        assert not second.started_here
        second.stop()
    assert second.server is not None
    assert LocalPostgres.running_in(second.server.data_dir) is not None
    first.stop()
    assert LocalPostgres.running_in(second.server.data_dir) is None


SWEEP = textwrap.dedent(
    """
    import subprocess, sys
    import psutil
    from app.embedded.supervision import sweep_orphans

    def child(code):  # it lives until we exit (its stdin closes) or a signal stops it
        process = subprocess.Popen(
            [sys.executable, "-c", code + "; print('ready', flush=True); sys.stdin.read()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert process.stdout.readline() == "ready\\n"
        return process

    kept = child("import sys")
    polite = child("import sys")
    stubborn = child("import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    sweep_orphans({kept.pid}, grace=float(sys.argv[1]))
    left = sorted(p.pid for p in psutil.Process().children())
    gone = [pid for pid in (polite.pid, stubborn.pid) if psutil.pid_exists(pid)]
    print(left == [kept.pid], gone == [])
    kept.kill()
    """
)


def test_the_sweep_stops_every_other_child_and_kills_one_that_ignores_sigterm() -> None:
    # In a process of its own: the sweep stops every child of the process that runs it.
    result = subprocess.run(
        [sys.executable, "-c", SWEEP, "0.5"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]

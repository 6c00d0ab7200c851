"""`stemfleet scaler` as a command: two `once` at the same moment (one acts, the other exits
saying so), and `plan` printing a table with reasons while acting on nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli import build_parser
from app.clock import FakeClock
from app.db import Connection
from app.queue import Queue
from scaler.cli import _once, _plan, _run, _simulate
from tests.fake_fly import FakeFly
from tests.scaler_support import TEMPLATE
from tests.worker_helpers import libpq_url

ROOT = Path(__file__).resolve().parent.parent
USER = uuid.UUID("00000000-0000-4000-8000-0000000005c2")


@pytest.fixture
def fake() -> Iterator[FakeFly]:
    server = FakeFly(FakeClock())
    server.start()
    yield server
    server.stop()


def command_env(db_url: str, tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEMFLEET_")}
    env.update(
        {
            "STEMFLEET_DATABASE_URL": libpq_url(db_url),
            "STEMFLEET_DATA_DIR": str(tmp_path / "data"),
            "STEMFLEET_LOG_JSON": "true",
            **{f"STEMFLEET_{k.upper()}": v for k, v in settings.items()},
        }
    )
    return env


def scaler_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", "scaler", *args]


def test_the_commands_are_registered() -> None:
    parser = build_parser()
    assert parser.parse_args(["scaler", "once"]).handler is _once
    assert parser.parse_args(["scaler", "run", "--interval", "45s"]).interval == 45.0
    assert parser.parse_args(["scaler", "run"]).handler is _run
    assert parser.parse_args(["scaler", "plan"]).handler is _plan
    args = parser.parse_args(["scaler", "simulate", "--trace", "day.csv", "--rtf", "0.2"])
    assert (args.handler, args.trace, args.rtf) == (_simulate, "day.csv", 0.2)


def test_two_scaler_once_at_the_same_moment_one_acts_the_other_exits(
    fake: FakeFly, db_url: str, conn: Connection, tmp_path: Path
) -> None:
    template = tmp_path / "worker-machine.json"
    template.write_text(json.dumps(TEMPLATE))
    env = command_env(
        db_url,
        tmp_path,
        provider="fly",
        fly_api_url=fake.url,
        fly_api_token=fake.token,
        fly_app=fake.app,
        machine_template=str(template),
        min_machines="1",
    )
    gate = fake.gate_list()
    first = subprocess.Popen(
        scaler_command("once"), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        # The first run holds the lock while the provider answers its list request.
        assert fake.list_entered.wait(120), "the first run never listed machines"
        second = subprocess.run(
            scaler_command("once"),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 0
        assert "another scaler run holds the lock" in second.stdout
        assert fake.count("Machines_list") == 0  # the second never reached the provider
    finally:
        gate.set()
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert "run 1: 1 of 1 actions done, 0 errors" in out.decode()
    assert "floor: min_machines 1" in out.decode()
    assert fake.count("Machines_list") == 1 and fake.count("Machines_create") == 1
    assert conn.execute("select count(*) as n from scaler.runs").fetchone() == {"n": 1}
    assert fake.violations == []


def test_scaler_plan_prints_reasons_and_acts_on_nothing(
    db_url: str, conn: Connection, tmp_path: Path
) -> None:
    queue = Queue()
    for i in range(12):
        queue.enqueue(conn, user_id=USER, input_key=f"inputs/{i}.wav")
    queue.enqueue(conn, user_id=USER, input_key="inputs/p.wav", kind="preview")
    env = command_env(db_url, tmp_path, provider="local", max_machines="3")
    done = subprocess.run(
        scaler_command("plan"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(
        "backlog: 13 queued (1 previews), 0 waiting to retry, 0 running, oldest waiting"
    )
    header = next(line for line in lines if line.startswith("ACTION"))
    assert header.split() == ["ACTION", "MACHINE", "WORKER", "SIZE", "$/H", "REASON"]
    (row,) = [line for line in lines if line.startswith("create")]
    assert "(new)" in row and "local" in row
    assert "backlog 13 queued (weighted 17) > 10: +1: creating a machine (none stopped)" in row
    # Nothing was done: no machine, no record, the queue as it was.
    assert not list((tmp_path / "data" / "local-machines").glob("*.json"))
    assert conn.execute("select count(*) as n from scaler.runs").fetchone() == {"n": 0}
    assert conn.execute("select count(*) as n from scaler.machine_runs").fetchone() == {"n": 0}
    counts = conn.execute("select count(*) as n from public.jobs where status = 'queued'")
    assert counts.fetchone() == {"n": 13}


def test_scaler_run_loops_until_sigterm(db_url: str, tmp_path: Path) -> None:
    env = command_env(db_url, tmp_path, provider="local")
    loop = subprocess.Popen(
        scaler_command("run", "--interval", "1h"),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert loop.stdout is not None
        first = loop.stdout.readline()  # blocks until the first run has been recorded
        assert first.startswith("run 1: 0 of 0 actions done, 0 errors"), first
        loop.send_signal(signal.SIGTERM)  # wakes the loop from its hour-long wait
        assert loop.wait(timeout=60) == 0
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait()


def test_an_idle_scaler_loop_prints_and_logs_only_what_changed(db_url: str, tmp_path: Path) -> None:
    """`stemfleet up` runs the scaler every 2 s: with nothing to do, its first run is said and
    the others are not (they are still recorded, and logged at debug level)."""
    env = command_env(db_url, tmp_path, provider="local", log_level="DEBUG")
    loop = subprocess.Popen(
        scaler_command("run", "--interval", "0.05"),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert loop.stderr is not None
        runs = []
        for line in loop.stderr:  # until six runs have been logged
            if '"scaler_run"' in line:
                runs.append(json.loads(line))
                if len(runs) == 6:
                    break
        loop.send_signal(signal.SIGTERM)
        out, _ = loop.communicate(timeout=60)
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait()
    assert [run["level"] for run in runs] == ["debug"] * 6
    said = [line for line in out.splitlines() if line.startswith("run ")]
    assert len(said) == 1, out

"""A worker configured as a GPU worker on a machine without usable CUDA (this CPU-only test
machine) exits non-zero at once, with its reason on its `workers` row (real process, real
Postgres)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from app.db import Connection
from tests.worker_helpers import libpq_url
from worker.gpu_check import EXIT_NO_GPU, cuda_problem

ROOT = Path(__file__).resolve().parent.parent


def run_worker_process(db_url: str, tmp_path: Path, **settings: str) -> tuple[int, str, str]:
    machine_id = f"gpu-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEMFLEET_")}
    env.update(
        {
            "STEMFLEET_DATABASE_URL": libpq_url(db_url),
            "STEMFLEET_MODEL": "demucs_unittest",
            "STEMFLEET_MACHINE_ID": machine_id,
            "STEMFLEET_WORKER_PROVIDER": "runpod",
            "STEMFLEET_DATA_DIR": str(tmp_path / "data"),
            "STEMFLEET_WORKER_IDLE_EXIT": "1",
            **{f"STEMFLEET_{k.upper()}": v for k, v in settings.items()},
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "worker"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stderr, machine_id


@pytest.mark.parametrize("setting", [{"device": "cuda"}, {"device": "auto", "require_gpu": "1"}])
def test_a_gpu_worker_without_cuda_exits_with_its_reason_on_its_row(
    db_url: str, conn: Connection, tmp_path: Path, setting: dict[str, str]
) -> None:
    problem = cuda_problem()
    assert problem is not None and "CPU-only build" in problem  # this machine's torch
    code, stderr, machine_id = run_worker_process(db_url, tmp_path, **setting)
    assert code == EXIT_NO_GPU, stderr
    assert "no usable GPU: " in stderr and "CPU-only build" in stderr
    rows = conn.execute(
        "select state, stop_reason, provider, stopped_at from public.workers where machine_id = %s",
        (machine_id,),
    ).fetchall()
    assert len(rows) == 1
    row = rows[0]
    assert row["state"] == "stopped" and row["stopped_at"] is not None
    assert row["provider"] == "runpod"
    assert row["stop_reason"].startswith("no usable GPU: torch ")
    assert "CPU-only build" in row["stop_reason"]


def test_a_cpu_worker_is_not_checked(db_url: str, conn: Connection, tmp_path: Path) -> None:
    code, stderr, machine_id = run_worker_process(db_url, tmp_path, device="cpu")
    assert code == 0, stderr  # idle exit after 1 s: an orderly end
    row = conn.execute(
        "select stop_reason from public.workers where machine_id = %s", (machine_id,)
    ).fetchone()
    assert row is not None and row["stop_reason"] is None

"""docs/operations.md, run: the runbook's blocks against a live API process (`stemfleet api` on
loopback), Postgres and moto's S3 server, and every alert rule checked as PromQL on the metrics the
API serves."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import yaml

from app.clock import FakeClock
from app.db import connect
from app.queue import Queue
from tests.deploy_support import (
    ROOT,
    bash_script,
    child_env,
    run_bash,
)
from tests.docs_support import (
    api,
    docs_db,
    docs_s3,
    here,
    run_sql,
    workdir,
)

# the shared fixtures this module uses, and those they depend on
__all__ = ["api", "docs_db", "docs_s3", "workdir"]

RUNBOOK_USER = uuid.UUID("00000000-0000-4000-8000-0000000000b5")

# --- the runbook, run -----------------------------------------------------------------------------


def runbook_state(db_url: str) -> dict[str, str]:
    """The situations the runbook handles, made with the queue's own functions: a job whose
    worker died (lease expired), a running job to cancel, an input that killed its worker on
    every attempt and has another job queued, and a live worker to drain."""
    clock = FakeClock(datetime.now(UTC) - timedelta(minutes=10))
    past = Queue(clock)
    live = Queue()
    sha = "ab" * 32
    with connect(db_url) as conn:
        dead = past.register_worker(conn, machine_id="machine-dead")
        stuck, _ = past.enqueue(
            conn, user_id=RUNBOOK_USER, input_key=f"inputs/{RUNBOOK_USER}/stuck.mp3"
        )
        past.claim(conn, dead.id, lease=60)

        poison, _ = past.enqueue(
            conn,
            user_id=RUNBOOK_USER,
            input_key=f"inputs/{RUNBOOK_USER}/poison.mp3",
            input_sha256=sha,
            max_attempts=1,
        )
        past.claim(conn, dead.id, lease=1)
        clock.advance(30)  # the poisoned job's 1 s lease is over, the stuck job's 60 s is not
        reaped = past.reap(conn)
        assert [(r.job_id, r.status) for r in reaped] == [(poison.id, "failed")]
        again, _ = live.enqueue(
            conn,
            user_id=RUNBOOK_USER,
            input_key=f"inputs/{RUNBOOK_USER}/poison-again.mp3",
            input_sha256=sha,
        )

        worker = live.register_worker(conn, machine_id="machine-live")
        busy, _ = live.enqueue(
            conn, user_id=RUNBOOK_USER, input_key=f"inputs/{RUNBOOK_USER}/busy.mp3", priority=99
        )
        claimed = live.claim(conn, worker.id, lease=600)
        assert [j.id for j in claimed] == [busy.id]
    return {
        "<job id>": str(busy.id),
        "<worker id>": str(worker.id),
        "<sha256>": sha,
        "stuck": str(stuck.id),
        "again": str(again.id),
    }


def test_the_runbook_runs_against_a_live_api_and_database(
    api: dict[str, str], docs_db: str, workdir: Path
) -> None:
    state = runbook_state(docs_db)
    steps = here("operations.md")
    outputs: dict[str, list[list[dict[str, Any]]]] = {}
    with connect(docs_db) as conn:
        for step in (b for b in steps if b.lang == "sql"):
            statement = step.body
            for placeholder in ("<job id>", "<worker id>", "<sha256>"):
                statement = statement.replace(placeholder, state[placeholder])
            assert not re.search(r"<[a-z0-9 ]+>", statement), f"{step.title}: placeholder left"
            outputs[step.title] = run_sql(conn, statement, step.attrs.get("role"))

    leases = {
        str(r["id"]): r["lease_expired"] for r in outputs["Running jobs and their leases"][-1]
    }
    assert (leases[state["stuck"]], leases[state["<job id>"]]) == (True, False)
    assert state["stuck"] in {str(r["job_id"]) for r in outputs["Reap expired leases now"][-1]}
    assert outputs["Cancel one job"][-1][0]["status"] == "cancelled"
    poisoned = {r["input_sha256"]: r for r in outputs["Inputs that kill workers"][-1]}
    assert poisoned[state["<sha256>"]]["jobs"] == 1
    assert poisoned[state["<sha256>"]]["users"] == [RUNBOOK_USER]
    assert [(str(r["id"]), r["status"]) for r in outputs["Cancel every job of one input"][-1]] == [
        (state["again"], "cancelled")
    ]
    drained, undrained = outputs["Drain and undrain one worker"]
    assert drained[0]["draining"] is True and undrained[0]["draining"] is False
    depth = outputs["The admin views"][0]
    assert {(r["status"], r["kind"]) for r in depth} >= {
        ("failed", "separate"),
        ("running", "separate"),
    }

    bash = [b for b in steps if b.lang == "bash"]
    out = run_bash(bash_script(bash), env=child_env(api), cwd=workdir, timeout=300)
    assert "stemfleet_database_up 1.0" in out
    assert "machine-live" in out


def metric_names(expr: str) -> list[str]:
    """The metrics a PromQL expression reads (parsing it: a syntax error raises)."""
    names: list[str] = []

    def collect(node: Any, *_: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.append(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), collect)
    return names


def test_every_alert_is_valid_promql_on_served_metrics_and_explained(api: dict[str, str]) -> None:
    rules = yaml.safe_load((ROOT / "deploy/alerts.yml").read_text())["groups"][0]["rules"]
    served = httpx.get(api["API"] + "/metrics", timeout=30).text
    families = set(re.findall(r"^# TYPE (\w+) (\w+)", served, re.M))
    names = {name for name, _ in families}
    names |= {
        f"{name}_{suffix}"
        for name, kind in families
        if kind == "histogram"
        for suffix in ("bucket", "count", "sum")
    }
    runbook = (ROOT / "docs/operations.md").read_text()
    headings = {h.strip().lower() for h in re.findall(r"^### (\w+)$", runbook, re.M)}

    assert len({r["alert"] for r in rules}) == len(rules)
    for rule in rules:
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert set(used) - {"up"} <= names, (rule["alert"], set(used) - names)
        assert rule["labels"]["severity"] in ("page", "warn")
        assert rule["annotations"]["summary"]
        anchor = rule["annotations"]["runbook"]
        assert anchor == f"docs/operations.md#{rule['alert'].lower()}"
        assert rule["alert"].lower() in headings, f"no runbook section for {rule['alert']}"
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["for"]

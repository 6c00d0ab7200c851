"""docs/deploy.md and docs/operations.md, run: every block marked runs="here" runs against a real
API process (`stemfleet api` on loopback), Postgres, moto's S3 server and, for the deploy guide, a
real worker (`stemfleet worker`, a tiny model from scripts/fetch_model.py). Blocks that need a Fly
or Supabase account, a Docker engine or promtool are checked statically: shell syntax, setting
names, app names, Docker targets, files, and the supabase-py example's table and columns."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import promql_parser
import pytest
import yaml
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from app.clock import FakeClock
from app.db import Connection, as_user, connect
from app.pgserver import free_port
from app.queue import Queue
from app.settings import ENV_PREFIX, Settings
from scaler.providers.runpod_settings import PREFIX as RUNPOD_PREFIX
from scaler.providers.runpod_settings import RunPodSettings
from tests.audio_fixtures import write_clip
from tests.deploy_support import (
    CRON_NET_VAULT_STANDIN,
    DOCS,
    ROOT,
    RUNS,
    Block,
    Process,
    bash_script,
    block,
    blocks,
    child_env,
    load_script,
    migrated_with,
    run_bash,
    running,
)
from tests.s3_support import new_bucket_env
from tests.worker_helpers import libpq_url

JWT_SECRET = "docs-test-project-jwt-secret-of-32-chars-or-more"
USER = uuid.UUID("00000000-0000-4000-8000-00000000d0c5")
RUNBOOK_USER = uuid.UUID("00000000-0000-4000-8000-0000000000b5")
SECRETS_BLOCK = "Generate the service token and the webhook secret"
NON_SETTINGS = {"STEMFLEET_MIGRATIONS_DIR", "STEMFLEET_TEST_DATABASE_URL"}
WORKER_APP = "stemfleet-workers"


def user_token() -> str:
    now = int(time.time())
    claims = {"sub": str(USER), "aud": "authenticated", "role": "authenticated"}
    return jwt.encode({**claims, "iat": now, "exp": now + 3600}, JWT_SECRET, algorithm="HS256")


def generated_secrets(workdir: Path) -> dict[str, str]:
    """Run the docs' secret generation and read back what it produced."""
    script = (
        block("deploy.md", SECRETS_BLOCK).body
        + 'printf "%s\\n%s\\n" "$SERVICE_TOKEN" "$WEBHOOK_SECRET"\n'
    )
    out = run_bash("set -euo pipefail\n" + script, env=child_env({}), cwd=workdir, timeout=30)
    service_token, webhook_secret = out.split()
    return {"SERVICE_TOKEN": service_token, "WEBHOOK_SECRET": webhook_secret}


def fleet_env(db_url: str, s3_env: dict[str, str], data_dir: Path) -> dict[str, str]:
    return {
        **s3_env,
        "STEMFLEET_DATABASE_URL": libpq_url(db_url),
        "STEMFLEET_DATA_DIR": str(data_dir),
        "STEMFLEET_LOG_JSON": "true",
    }


def start_api(env: dict[str, str], workdir: Path) -> tuple[Process, str]:
    port = free_port()
    argv = [sys.executable, "-m", "app.cli", "api", "--host", "127.0.0.1", "--port", str(port)]
    process = Process(argv, env=child_env(env), cwd=workdir, log=workdir / "api.log")
    process.wait_for_line(r"(?i)application startup complete", timeout=90)
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    write_clip(path / "song.mp3", 3.0)
    return path


@pytest.fixture(scope="module")
def docs_db(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """One migrated database for the API all the docs' blocks talk to."""
    name = f"docs_{uuid.uuid4().hex[:12]}"
    with connect(pg_admin_url) as conn:
        conn.execute(
            sql.SQL("create database {} template {}").format(
                sql.Identifier(name), sql.Identifier(template_db)
            )
        )
    info = conninfo_to_dict(pg_admin_url) | {"dbname": name}
    yield libpq_url(make_conninfo(**{k: str(v) for k, v in info.items() if v is not None}))
    with connect(pg_admin_url) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="module")
def docs_s3(s3_server: str) -> dict[str, str]:
    return new_bucket_env(s3_server)


@pytest.fixture(scope="module")
def api(
    docs_db: str, docs_s3: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """The API as Fly runs it (`stemfleet api`), configured with the secrets the guide generates;
    yields the environment the docs' shell blocks expect. One for the whole module."""
    home = tmp_path_factory.mktemp("docs-api")
    secrets = generated_secrets(home)
    env = fleet_env(docs_db, docs_s3, home / "data") | {
        "STEMFLEET_JWT_SECRET": JWT_SECRET,
        "STEMFLEET_SERVICE_TOKEN": secrets["SERVICE_TOKEN"],
        "STEMFLEET_WEBHOOK_SECRET": secrets["WEBHOOK_SECRET"],
        # the fleet's model, as the API writes it into each job (fly.toml [env] and the machine
        # template name the same one); the worker below loads it from its model folder
        "STEMFLEET_MODEL": "tiny",
        # POST /v1/admin/scaler/run runs `stemfleet scaler once`: the local provider, no room
        "STEMFLEET_PROVIDER": "local",
        "STEMFLEET_MAX_MACHINES": "0",
    }
    process, url = start_api(env, home)
    try:
        yield env | secrets | {"API": url, "TOKEN": user_token()}
    finally:
        process.stop()


def here(doc: str) -> list[Block]:
    return [b for b in blocks(doc) if b.runs == "here"]


def run_sql(conn: Connection, statement: str, role: str | None) -> list[list[dict[str, Any]]]:
    """All result sets of a block, as the service (superuser), or as an end user the way
    PostgREST runs a request."""
    results: list[list[dict[str, Any]]] = []

    def collect() -> None:
        cursor = conn.execute(statement)
        while True:
            results.append(cursor.fetchall() if cursor.description else [])
            if not cursor.nextset():
                break

    if role == "authenticated":
        with as_user(conn, str(USER)):
            collect()
    else:
        collect()
    return results


# --- every block is labelled, and those that cannot run here are at least well-formed -------------


def test_every_doc_block_says_what_it_is_and_where_it_runs() -> None:
    for doc in DOCS:
        found = blocks(doc)
        assert found, doc
        titles = [b.title for b in found]
        assert all(titles), f"{doc}: a block without a title"
        assert len(set(titles)) == len(titles), f"{doc}: two blocks share a title"
        for b in found:
            assert b.lang in ("bash", "sql", "python"), (doc, b.title, b.lang)
            assert b.runs in RUNS, (doc, b.title, b.runs)


def test_blocks_that_need_an_account_are_well_formed() -> None:
    settings = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | NON_SETTINGS
    settings |= {RUNPOD_PREFIX + name.upper() for name in RunPodSettings.model_fields}
    apps = {tomllib.loads((ROOT / "fly.toml").read_text())["app"], WORKER_APP}
    stages = set(re.findall(r"^FROM \S+ AS (\w+)", (ROOT / "Dockerfile").read_text(), re.M))
    checked = 0
    for doc in DOCS:
        for b in blocks(doc):
            names = set(re.findall(r"\bSTEMFLEET_[A-Z0-9_]+", b.body))
            assert names <= settings, f"{b.title}: not settings: {sorted(names - settings)}"
            if b.lang != "bash":
                continue
            # <ref>, <password>…: placeholders a reader fills in before running
            filled = re.sub(r"<[a-z][\w .-]*>", "PLACEHOLDER", b.body)
            syntax = subprocess.run(["bash", "-n"], input=filled, capture_output=True, text=True)
            assert syntax.returncode == 0, f"{b.title}: {syntax.stderr}"
            for app in re.findall(r"(?:-a|--app) ([\w-]+)", b.body):
                assert app in apps, f"{b.title}: unknown Fly app {app}"
            for target in re.findall(r"--target (\w+)", b.body):
                assert target in stages, f"{b.title}: no Dockerfile target {target}"
            for path in re.findall(r"\b((?:deploy|supabase|scripts|docs)/[\w./-]+)", b.body):
                assert (ROOT / path).exists(), f"{b.title}: no file {path}"
            checked += 1
    assert checked >= 15


def test_the_supabase_client_example_uses_the_real_table_columns_and_bucket(
    conn: Connection,
) -> None:
    from storage3._sync.file_api import SyncBucketActionsMixin
    from supabase_auth import SyncGoTrueClient

    from supabase import Client

    example = block("deploy.md", "Upload and insert with supabase-py")
    tree = ast.parse(example.body)
    compile(tree, "deploy.md", "exec")
    calls = {
        node.func.attr: node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    # the client API the example calls exists in the installed supabase-py
    assert hasattr(Client, "table") and hasattr(Client, "storage")
    assert hasattr(SyncGoTrueClient, "sign_in_with_password")
    assert hasattr(SyncBucketActionsMixin, "upload")
    assert hasattr(SyncBucketActionsMixin, "create_signed_url")

    assert ast.literal_eval(calls["table"].args[0]) == "jobs"
    bucket = ast.literal_eval(calls["from_"].args[0])
    migration = (ROOT / "supabase/migrations/20261122000800_storage_bucket.sql").read_text()
    assert f"v_bucket constant text := '{bucket}'" in migration
    inserted = calls["insert"].args[0]
    assert isinstance(inserted, ast.Dict)
    keys = {ast.literal_eval(k) for k in inserted.keys if k is not None}
    selected = set(ast.literal_eval(calls["select"].args[0]).replace(" ", "").split(","))
    columns = {
        r["column_name"]
        for r in conn.execute(
            "select column_name from information_schema.columns "
            "where table_schema = 'public' and table_name = 'jobs'"
        )
    }
    assert keys <= columns and selected <= columns, (keys | selected) - columns
    assert 'f"inputs/{uid}/' in example.body, "uploads go under the user's own prefix"


# --- the deploy guide, run ------------------------------------------------------------------------


def test_the_deploy_guide_runs_from_migrations_to_downloaded_stems(
    api: dict[str, str],
    docs_db: str,
    docs_s3: dict[str, str],
    tmp_path: Path,
    workdir: Path,
) -> None:
    models = tmp_path / "models"
    assert (
        load_script("fetch_model").main(
            [
                "--model",
                "demucs_unittest",
                "--name",
                "tiny",
                "--random-weights",
                "--dest",
                str(models),
            ]
        )
        == 0
    )
    worker_env = fleet_env(docs_db, docs_s3, tmp_path / "worker-data") | {
        "STEMFLEET_MODEL": "tiny",
        "STEMFLEET_MODEL_REPO": str(models),
        "STEMFLEET_DEVICE": "cpu",
        "STEMFLEET_THREADS": "1",
        "STEMFLEET_MACHINE_ID": "docs-worker",
        "STEMFLEET_POLL_INTERVAL": "1",
    }
    steps = [b for b in here("deploy.md") if b.title != SECRETS_BLOCK]
    bash = [b for b in steps if b.lang == "bash"]
    argv = [sys.executable, "-m", "app.cli", "worker"]
    with running(argv, env=child_env(worker_env), cwd=workdir, log=tmp_path / "worker.log") as w:
        w.wait_for_line(r"worker_(started|ready|registered)", timeout=120)
        out = run_bash(bash_script(bash), env=child_env(api), cwd=workdir, timeout=600)

    assert "database is up to date" in out
    for stem in ("vocals", "drums", "bass", "other"):
        assert (workdir / f"{stem}.mp3").stat().st_size > 1000, stem
    with connect(docs_db) as conn:
        jobs = conn.execute(
            "select kind::text, status::text from public.jobs where user_id = %s "
            "order by created_at",
            (USER,),
        ).fetchall()
        assert jobs[0] == {"kind": "separate", "status": "succeeded"}
        assert any(j["kind"] == "preview" for j in jobs[1:])
        runs = conn.execute("select count(*) as n from scaler.runs").fetchone()
        assert runs is not None and runs["n"] >= 1, "the scaler ran through the API"

        for step in (b for b in steps if b.lang == "sql"):
            statement = step.body.replace("<user id>", str(USER))
            results = run_sql(conn, statement, step.attrs.get("role"))
            if step.title == "What PostgREST runs for the insert":
                assert results[-1] == [
                    {"id": results[-1][0]["id"], "user_id": USER, "status": "queued"}
                ]
            if step.title == "Run one tick by hand":
                assert results[-1] == [{"scaler_tick": None}]


def test_the_schedule_s_request_is_accepted_by_the_api(
    api: dict[str, str], fresh_database: Any
) -> None:
    """pg_net would send what admin.scaler_tick() builds: send it, and the API runs the
    scaler (tests/test_deploy_migrations.py checks the request on pg_cron / pg_net stand-ins)."""
    url = migrated_with(fresh_database, CRON_NET_VAULT_STANDIN)
    with connect(url) as conn:
        conn.execute(
            "insert into vault.decrypted_secrets (name, decrypted_secret) values "
            "('stemfleet_api_url', %s), ('stemfleet_service_token', %s)",
            (api["API"] + "/", api["SERVICE_TOKEN"]),
        )
        conn.execute("select admin.scaler_tick()")
        sent = conn.execute("select url, headers, body from net.requests").fetchone()
    assert sent is not None
    answer = httpx.post(sent["url"], headers=sent["headers"], json=sent["body"], timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["ok"] is True
    wrong = httpx.post(sent["url"], headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code in (401, 403)


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

"""docs/deploy.md, run: every block marked runs="here" runs against a real API process
(`stemfleet api` on loopback), Postgres, moto's S3 server and a real worker (`stemfleet worker`, a
tiny model from scripts/fetch_model.py). Blocks that need a Fly or Supabase account, a Docker
engine or promtool are checked statically: shell syntax, setting names, app names, Docker targets,
files, and the supabase-py example's table and columns. docs/operations.md: test_operations_docs.py.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx

from app.db import Connection, connect
from app.settings import ENV_PREFIX, Settings
from scaler.providers.runpod_settings import PREFIX as RUNPOD_PREFIX
from scaler.providers.runpod_settings import RunPodSettings
from tests.deploy_support import (
    CRON_NET_VAULT_STANDIN,
    DOCS,
    ROOT,
    RUNS,
    bash_script,
    block,
    blocks,
    child_env,
    load_script,
    migrated_with,
    run_bash,
    running,
)
from tests.docs_support import (
    SECRETS_BLOCK,
    USER,
    api,
    docs_db,
    docs_s3,
    fleet_env,
    here,
    run_sql,
    workdir,
)

# the shared fixtures this module uses, and those they depend on
__all__ = ["api", "docs_db", "docs_s3", "workdir"]

NON_SETTINGS = {"STEMFLEET_MIGRATIONS_DIR", "STEMFLEET_TEST_DATABASE_URL"}
WORKER_APP = "stemfleet-workers"

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

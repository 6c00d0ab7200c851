"""The docs' tests' shared parts: one migrated database, one bucket and one `stemfleet api` process
per session (the deploy guide's and the runbook's tests share them: each makes its own rows, under
its own user, and asserts on those), configured with the secrets the deploy guide generates, and
helpers to run the docs' shell and SQL blocks against them."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from app.db import Connection, as_user, connect
from app.pgserver import free_port
from tests.audio_fixtures import write_clip
from tests.deploy_support import (
    Block,
    Process,
    block,
    blocks,
    child_env,
    run_bash,
)
from tests.s3_support import new_bucket_env
from tests.worker_helpers import libpq_url

JWT_SECRET = "docs-test-project-jwt-secret-of-32-chars-or-more"
USER = uuid.UUID("00000000-0000-4000-8000-00000000d0c5")
SECRETS_BLOCK = "Generate the service token and the webhook secret"


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


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def docs_s3(s3_server: str) -> dict[str, str]:
    return new_bucket_env(s3_server)


@pytest.fixture(scope="session")
def api(
    docs_db: str, docs_s3: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """The API as Fly runs it (`stemfleet api`), configured with the secrets the guide generates;
    yields the environment the docs' shell blocks expect. One for the whole session."""
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

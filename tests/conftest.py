"""Shared fixtures: a real Postgres, a template database built once from the migrations, and a real
S3 HTTP endpoint (moto's server) spoken to through boto3.

A database test gets `tx` (a connection inside a transaction rolled back after the test, on one
database cloned from the template for the whole run) unless it needs what only a commit shows:
a NOTIFY, another connection or process (an API, a worker, a scaler), or a crash; those get a
fresh database of their own (`db_url`, `conn`, `fresh_database`).

Postgres comes from STEMFLEET_TEST_DATABASE_URL, else a throwaway cluster from the machine's
binaries (app.pgserver, the project's one bring-up), stopped and deleted at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from app.clock import FakeClock
from app.db import Connection, connect
from app.migrate import migrate
from app.queue import Queue
from tests.db_support import tx_connection
from tests.s3_support import new_bucket_env

# `make test` runs the suite in pytest-xdist workers, each with its own throwaway cluster; where
# they share one server (STEMFLEET_TEST_DATABASE_URL), each worker's databases have their own names.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
TEMPLATE_DB = f"stemfleet_template{_WORKER}"
TX_DB = f"stemfleet_tx{_WORKER}"


# The files that take longest (a minute or so each on 2 cores), longest first. Under xdist
# (`make test`: `--dist loadfile --no-loadscope-reorder`) a worker takes the next whole file in
# collection order; starting these first keeps one from being left to run alone at the end.
LONGEST_FILES = (
    "test_engines.py",  # its first compiled case compiles for a minute or two
    "test_scaler_runpod_day.py",
    "test_cli_embedded.py",
    "test_bench_gpu_script.py",
    "test_web_browser.py",
    "test_separation.py",
    "test_deploy_docs.py",
    "test_scaler_properties.py",
    "test_worker_groups.py",
    "test_scaler_fly.py",
    "test_worker_loop.py",
    "test_worker_failures.py",
    "test_worker_process.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """In an xdist worker, the longest files first (a stable sort: the rest keep their order)."""
    if not _WORKER:
        return
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def _with_db(url: str, dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in info.items() if v is not None})


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A URL to a maintenance database of a Postgres server we may create databases on."""
    env_url = os.environ.get("STEMFLEET_TEST_DATABASE_URL")
    if env_url:
        yield env_url
        return
    from app.pgserver import throwaway_postgres

    with throwaway_postgres("stemfleet-pg-", fast_unsafe=True) as server:
        yield server.url


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> str:
    """Build the template database from the migrations once per run."""
    with connect(pg_admin_url) as conn:
        conn.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(TEMPLATE_DB)))
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(TEMPLATE_DB)))
    migrate(_with_db(pg_admin_url, TEMPLATE_DB))
    return TEMPLATE_DB


@pytest.fixture
def fresh_database(pg_admin_url: str) -> Iterator[Any]:
    """Factory: create_db(template=...) -> URL of a new database, dropped after the test."""
    created: list[str] = []

    def create(template: str | None) -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        with connect(pg_admin_url) as conn:
            if template:
                query = sql.SQL("create database {} template {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            else:
                query = sql.SQL("create database {}").format(sql.Identifier(name))
            conn.execute(query)
        created.append(name)
        return _with_db(pg_admin_url, name)

    yield create
    with connect(pg_admin_url) as conn:
        for name in created:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


@pytest.fixture
def db_url(template_db: str, fresh_database: Any) -> str:
    """A fresh, fully migrated database for this test alone."""
    url: str = fresh_database(template_db)
    return url


@pytest.fixture
def conn(db_url: str) -> Iterator[Connection]:
    """An autocommit connection to this test's own fresh database (see `tx` for the cheap one)."""
    with connect(db_url) as connection:
        yield connection


@pytest.fixture(scope="session")
def tx_db_url(pg_admin_url: str, template_db: str) -> str:
    """One database cloned from the template for the whole run, shared by every `tx` test. (Not
    the template itself: a database being cloned may have no other connection.)"""
    with connect(pg_admin_url) as conn:
        conn.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(TX_DB)))
        conn.execute(
            sql.SQL("create database {} template {}").format(
                sql.Identifier(TX_DB), sql.Identifier(template_db)
            )
        )
    return _with_db(pg_admin_url, TX_DB)


@pytest.fixture
def tx(tx_db_url: str) -> Iterator[Connection]:
    """A connection inside a transaction rolled back after the test (tests/db_support.py): for
    tests that read and write rows through this one connection. Tests that need a NOTIFY, another
    connection or process, a commit or a crash use `conn` / `db_url` (a fresh database)."""
    with tx_connection(tx_db_url) as connection:
        yield connection


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(clock: FakeClock) -> Queue:
    return Queue(clock)


# --- S3: moto's real HTTP server --------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    from app.pgserver import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A fresh bucket on the moto server, with the STEMFLEET_S3_* settings set in the env."""
    env = new_bucket_env(s3_server)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


# --- the fake Fly Machines API (scaler tests) ------------------------------------------------


@pytest.fixture
def fake(clock: FakeClock) -> Iterator[Any]:
    """A fake Fly Machines API on loopback that validates every request against the spec."""
    from tests.fake_fly import FakeFly

    server = FakeFly(clock)
    server.start()
    yield server
    server.stop()

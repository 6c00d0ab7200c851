"""RLS and grants: what a Supabase client (anon / authenticated) can and cannot do."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from app.clock import FakeClock
from app.db import Connection, as_user, connect
from app.errors import JobNotFound, StorageKeyError
from app.queue import Queue
from app.storage import validate_key

ALICE = uuid.UUID("00000000-0000-4000-8000-0000000000a1")
BOB = uuid.UUID("00000000-0000-4000-8000-0000000000b0")


@contextmanager
def as_anon(conn: Connection) -> Iterator[Connection]:
    with conn.transaction():
        conn.execute(sql.SQL("set local role anon"))
        yield conn


def insert_as(conn: Connection, user: uuid.UUID, **columns: object) -> dict[str, object]:
    columns.setdefault("input_key", f"inputs/{user}/song.wav")
    names = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    values = sql.SQL(", ").join(sql.Placeholder() for _ in columns)
    with as_user(conn, str(user)):
        row = conn.execute(
            sql.SQL("insert into public.jobs ({}) values ({}) returning *").format(names, values),
            list(columns.values()),
        ).fetchone()
    assert row is not None
    return row


def test_user_insert_is_forced_to_a_queued_job_of_their_own(tx: Connection) -> None:
    forged_worker = uuid.uuid4()
    row = insert_as(
        tx,
        ALICE,
        user_id=BOB,
        priority=1000,
        attempts=7,
        max_attempts=99,
        worker_id=forged_worker,
        progress=0.9,
        output=psycopg.types.json.Jsonb({"stems": {"vocals": "outputs/x/vocals.wav"}}),
        error="nope",
        params=psycopg.types.json.Jsonb({"format": "mp3"}),
        idempotency_key="abc",
    )
    assert row["user_id"] == ALICE
    assert row["status"] == "queued"
    assert (row["priority"], row["attempts"], row["max_attempts"]) == (0, 0, 3)
    assert (row["worker_id"], row["output"], row["error"], row["progress"]) == (None, None, None, 0)
    # the params' defaults written in (queue.job_params); no deployment model recorded here
    written = {"format": "mp3", "sample_format": "int16", "shifts": 1, "overlap": 0.25}
    assert row["params"] == written and row["idempotency_key"] == "abc"


def test_user_cannot_insert_a_running_job(tx: Connection) -> None:
    row = insert_as(tx, ALICE, status="running", lease_expires_at=None)
    assert row["status"] == "queued"


def test_users_see_only_their_own_jobs(tx: Connection) -> None:
    mine = insert_as(tx, ALICE)
    theirs = insert_as(tx, BOB)
    with as_user(tx, str(ALICE)):
        ids = [r["id"] for r in tx.execute("select id from public.jobs").fetchall()]
        assert ids == [mine["id"]]
        row = tx.execute("select * from public.jobs where id = %s", (theirs["id"],)).fetchone()
        assert row is None


@pytest.mark.parametrize(
    "statement",
    [
        "update public.jobs set status = 'succeeded' where id = %s",
        "update public.jobs set priority = 99 where id = %s",
        "delete from public.jobs where id = %s",
    ],
)
def test_users_cannot_update_or_delete_jobs(tx: Connection, statement: str) -> None:
    own = insert_as(tx, ALICE)
    for target in (own["id"], insert_as(tx, BOB)["id"]):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(tx, str(ALICE)):
            tx.execute(statement, (target,))
    row = tx.execute("select status, priority from public.jobs where id = %s", (own["id"],))
    assert row.fetchone() == {"status": "queued", "priority": 0}


def test_users_cancel_only_their_own_jobs(tx: Connection) -> None:
    queue = Queue(FakeClock())
    own = insert_as(tx, ALICE)
    theirs = insert_as(tx, BOB)
    with as_user(tx, str(ALICE)):
        assert queue.cancel_as_user(tx, own["id"]).status == "cancelled"
    with pytest.raises(JobNotFound), as_user(tx, str(ALICE)):
        queue.cancel_as_user(tx, theirs["id"])
    assert queue.get(tx, theirs["id"]).status == "queued"


def test_users_cannot_reach_queue_functions_or_workers(tx: Connection) -> None:
    job = insert_as(tx, ALICE)
    attempts = [
        ("select * from queue.cancel(%s)", (job["id"],)),
        ("select * from queue.claim(%s)", (uuid.uuid4(),)),
        ("select * from public.workers", ()),
        ("select * from admin.queue_depth", ()),
    ]
    for query, params in attempts:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(tx, str(ALICE)):
            tx.execute(query, params)


def test_anon_can_do_nothing(tx: Connection) -> None:
    job = insert_as(tx, ALICE)
    attempts = [
        ("select * from public.jobs", ()),
        ("insert into public.jobs (input_key) values ('inputs/x')", ()),
        ("select * from public.cancel_job(%s)", (job["id"],)),
        ("select * from public.workers", ()),
        ("select * from admin.workers", ()),
    ]
    for query, params in attempts:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), as_anon(tx):
            tx.execute(query, params)


KEY_SUFFIXES = [
    "song.wav",
    "a/b/song.wav",
    "a\\b.wav",  # validate_key: must be relative
    "a//b.wav",  # empty path segment
    "a/",  # empty path segment (trailing)
    "./a.wav",
    "a/../b.wav",
    "a/./b.wav",
    "a\tb.wav",  # control character
    "C:/a.wav",
    "..wav",
    ".hidden.wav",
    "x" * 1100,  # too long
]


@pytest.mark.parametrize("suffix", KEY_SUFFIXES, ids=lambda s: repr(s)[:20])
def test_the_insert_guard_applies_validate_key(tx: Connection, suffix: str) -> None:
    """A Supabase-client insert passes the guard exactly when the worker's validate_key accepts
    the key: a key it would refuse never becomes a job."""
    key = f"inputs/{ALICE}/{suffix}"
    try:
        validate_key(key)
        valid = True
    except StorageKeyError:
        valid = False
    if valid:
        assert insert_as(tx, ALICE, input_key=key)["status"] == "queued"
    else:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not one of your uploads"):
            insert_as(tx, ALICE, input_key=key)


@pytest.fixture(scope="module")
def pure_sql(tx_db_url: str) -> Iterator[Connection]:
    """A plain connection for calls of a pure SQL function, which changes nothing: its examples
    need neither a rolled-back transaction nor a savepoint each (a third of the round trips)."""
    with connect(tx_db_url) as connection:
        yield connection


@settings(max_examples=300, deadline=None)
@given(
    key=st.text(
        alphabet=st.sampled_from(["a", "b", ".", "/", "\\", ":", "C", "\t", "\n", " ", "é"]),
        max_size=12,
    )
)
def test_sql_and_python_key_rules_agree(pure_sql: Connection, key: str) -> None:
    row = pure_sql.execute("select queue.object_key_problem(%s) as problem", (key,)).fetchone()
    assert row is not None
    try:
        validate_key(key)
        python_valid = True
    except StorageKeyError:
        python_valid = False
    assert (row["problem"] is None) == python_valid, (key, row["problem"])


def test_a_user_insert_must_name_a_model_the_fleet_serves(tx: Connection) -> None:
    assert insert_as(tx, ALICE, params=psycopg.types.json.Jsonb({"model": "htdemucs"}))
    with pytest.raises(psycopg.Error, match="'nope' is not served") as info:
        insert_as(tx, ALICE, params=psycopg.types.json.Jsonb({"model": "nope"}))
    assert info.value.sqlstate == "SF004"


def test_as_user_inside_a_callers_transaction_leaves_role_and_claims_as_it_found_them(
    tx: Connection,
) -> None:
    """SET LOCAL outlives a released savepoint: as_user nested in a caller's transaction must put
    back the caller's role and claims, or every later statement of that transaction runs as the
    end user."""
    before = tx.execute("select current_user as role, auth.uid() as uid").fetchone()
    with as_user(tx, str(ALICE)):
        inside = tx.execute("select current_user as role, auth.uid() as uid").fetchone()
        assert inside == {"role": "authenticated", "uid": ALICE}
    assert tx.execute("select current_user as role, auth.uid() as uid").fetchone() == before
    assert before is not None and before["role"] != "authenticated" and before["uid"] is None

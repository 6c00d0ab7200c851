"""The deployment migrations: the storage bucket and its policies, and the optional pg_cron + pg_net
scaler schedule. Both are guarded: a no-op on a bare Postgres, active where Supabase provides
the schemas. Where Supabase's schemas are needed, a minimal stand-in of them is created first
(the way app/sql/supabase_bootstrap.sql stands in for `auth`)."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from app.db import Connection, as_user, connect
from app.migrate import list_migrations, migrate
from app.queue import Queue
from tests.deploy_support import CRON_NET_VAULT_STANDIN, STORAGE_STANDIN, migrated_with

ALICE = uuid.UUID("00000000-0000-4000-8000-0000000000a1")
BOB = uuid.UUID("00000000-0000-4000-8000-0000000000b0")
BUCKET = "stemfleet"
DEPLOY_MIGRATIONS = {"20261122000800", "20261122000810", "20261130000100"}


def put_object(conn: Connection, user: uuid.UUID | None, name: str) -> None:
    """Insert an object row, as `user` through RLS, or as the service (no user)."""
    query = "insert into storage.objects (bucket_id, name) values (%s, %s)"
    if user is None:
        conn.execute(query, (BUCKET, name))
        return
    with as_user(conn, str(user)):
        conn.execute(query, (BUCKET, name))


def visible(conn: Connection, user: uuid.UUID, prefix: str) -> list[str]:
    with as_user(conn, str(user)):
        rows = conn.execute(
            "select name from storage.objects where name like %s order by name", (prefix + "%",)
        ).fetchall()
    return [r["name"] for r in rows]


def refused(conn: Connection, user: uuid.UUID, name: str) -> bool:
    try:
        put_object(conn, user, name)
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False


# --- a bare Postgres: nothing happens -------------------------------------------------------------


def test_the_deploy_migrations_are_no_ops_on_a_bare_postgres(tx: Connection) -> None:
    versions = {
        r["version"]
        for r in tx.execute("select version from supabase_migrations.schema_migrations")
    }
    assert versions >= DEPLOY_MIGRATIONS
    assert {m.version for m in list_migrations()} >= DEPLOY_MIGRATIONS
    row = tx.execute(
        "select to_regnamespace('storage') as storage, to_regnamespace('cron') as cron, "
        "to_regnamespace('net') as net"
    ).fetchone()
    assert row == {"storage": None, "cron": None, "net": None}
    extensions = {r["extname"] for r in tx.execute("select extname from pg_extension")}
    assert not extensions & {"pg_cron", "pg_net"}

    # The schedule's functions exist and stay harmless: dormant without a URL, and scheduling
    # says what is missing.
    assert tx.execute("select admin.scaler_tick() as id").fetchone() == {"id": None}
    assert tx.execute("select admin.unschedule_scaler() as done").fetchone() == {"done": False}
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="pg_cron is not enabled"):
        tx.execute("select admin.schedule_scaler()")


def test_users_cannot_call_the_schedule_functions(tx: Connection) -> None:
    for function in ("admin.scaler_tick()", "admin.schedule_scaler()"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(tx, str(ALICE)):
            tx.execute(f"select {function}")


# --- with Supabase Storage: the bucket and who may touch what -------------------------------------


def test_storage_policies_let_a_user_write_only_under_their_own_prefix(
    fresh_database: Any,
) -> None:
    url = migrated_with(fresh_database, STORAGE_STANDIN)
    with connect(url) as conn:
        bucket = conn.execute("select id, public from storage.buckets").fetchall()
        assert bucket == [{"id": BUCKET, "public": False}]

        put_object(conn, ALICE, f"inputs/{ALICE}/x.wav")
        put_object(conn, ALICE, f"inputs/{ALICE}/deeper/y.mp3")
        assert refused(conn, ALICE, f"inputs/{BOB}/x.wav")
        assert refused(conn, ALICE, f"inputs/{ALICE}.wav")  # not inside the folder
        assert refused(conn, ALICE, "inputs/x.wav")
        assert refused(conn, ALICE, f"outputs/{uuid.uuid4()}/vocals.wav")
        assert refused(conn, ALICE, f"elsewhere/{ALICE}/x.wav")
        put_object(conn, BOB, f"inputs/{BOB}/x.wav")

        # each reads back only their own inputs
        assert visible(conn, ALICE, "inputs/") == [
            f"inputs/{ALICE}/deeper/y.mp3",
            f"inputs/{ALICE}/x.wav",
        ]
        assert visible(conn, BOB, "inputs/") == [f"inputs/{BOB}/x.wav"]

        # moving an object out of one's own prefix is refused
        with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(conn, str(ALICE)):
            conn.execute(
                "update storage.objects set name = %s where name = %s",
                (f"inputs/{BOB}/stolen.wav", f"inputs/{ALICE}/x.wav"),
            )
        # deleting somebody else's input does nothing; one's own works
        with as_user(conn, str(ALICE)):
            gone = conn.execute(
                "delete from storage.objects where name like 'inputs/%' returning name"
            ).fetchall()
        assert sorted(g["name"] for g in gone) == [
            f"inputs/{ALICE}/deeper/y.mp3",
            f"inputs/{ALICE}/x.wav",
        ]
        assert visible(conn, BOB, "inputs/") == [f"inputs/{BOB}/x.wav"]

        # anon: nothing at all
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("set local role anon")
            conn.execute(
                "insert into storage.objects (bucket_id, name) values (%s, %s)",
                (BUCKET, f"inputs/{ALICE}/anon.wav"),
            )


def test_users_read_the_outputs_of_their_own_jobs_only(fresh_database: Any) -> None:
    url = migrated_with(fresh_database, STORAGE_STANDIN)
    queue = Queue()
    with connect(url) as conn:
        alice_job, _ = queue.enqueue(conn, user_id=ALICE, input_key=f"inputs/{ALICE}/a.wav")
        bob_job, _ = queue.enqueue(conn, user_id=BOB, input_key=f"inputs/{BOB}/b.wav")
        for job in (alice_job, bob_job):  # a worker's uploads (service role: no RLS)
            put_object(conn, None, f"outputs/{job.id}/vocals.wav")
            put_object(conn, None, f"outputs/{job.id}/drums.wav")
        put_object(conn, None, "outputs/not-a-uuid/vocals.wav")

        assert visible(conn, ALICE, "outputs/") == [
            f"outputs/{alice_job.id}/drums.wav",
            f"outputs/{alice_job.id}/vocals.wav",
        ]
        assert visible(conn, BOB, "outputs/") == [
            f"outputs/{bob_job.id}/drums.wav",
            f"outputs/{bob_job.id}/vocals.wav",
        ]
        # users never write or delete outputs, even of their own jobs
        assert refused(conn, ALICE, f"outputs/{alice_job.id}/forged.wav")
        with as_user(conn, str(ALICE)):
            gone = conn.execute("delete from storage.objects where name like 'outputs/%'")
        assert gone.rowcount == 0


# --- with pg_cron + pg_net (+ Vault): the scaler schedule -----------------------------------------


def test_the_scaler_schedule_calls_the_admin_endpoint_with_the_service_token(
    fresh_database: Any,
) -> None:
    url = migrated_with(fresh_database, CRON_NET_VAULT_STANDIN)
    with connect(url) as conn:
        # The migration schedules only where the real extensions are available (not here); the
        # function it calls there:
        conn.execute("select admin.schedule_scaler()")
        conn.execute("select admin.schedule_scaler()")  # again: the same job, not a second one
        jobs = conn.execute("select jobname, schedule, command from cron.job").fetchall()
        assert jobs == [
            {
                "jobname": "stemfleet-scaler",
                "schedule": "* * * * *",
                "command": "select admin.scaler_tick()",
            }
        ]
        tick = jobs[0]["command"]

        # dormant until configured
        assert conn.execute(tick).fetchone() == {"scaler_tick": None}
        assert conn.execute("select count(*) as n from net.requests").fetchone() == {"n": 0}

        # a URL but no token: a clear error in cron's run log
        conn.execute("set stemfleet.api_url = 'https://stemfleet.example.com/'")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="no service token"):
            conn.execute(tick)

        # Vault wins over settings
        conn.execute("set stemfleet.service_token = 'from-a-setting'")
        conn.execute(
            "insert into vault.decrypted_secrets (name, decrypted_secret) values "
            "('stemfleet_service_token', 'from-the-vault')"
        )
        request_id = conn.execute(tick).fetchone()
        assert request_id is not None and request_id["scaler_tick"] is not None
        sent = conn.execute("select * from net.requests").fetchone()
        assert sent is not None
        assert sent["url"] == "https://stemfleet.example.com/v1/admin/scaler/run"
        assert sent["headers"] == {
            "Authorization": "Bearer from-the-vault",
            "Content-Type": "application/json",
        }
        assert sent["body"] == {}
        assert sent["timeout_milliseconds"] < 60_000  # the next tick comes in a minute

        conn.execute("set stemfleet.api_url = 'ftp://nope'")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="must start with https"):
            conn.execute(tick)

        assert conn.execute("select admin.unschedule_scaler() as done").fetchone() == {"done": True}
        assert conn.execute("select count(*) as n from cron.job").fetchone() == {"n": 0}


# --- jobs inserted with a Supabase client name the user's own uploads ---------------------------


def insert_job_as(conn: Connection, user: uuid.UUID, key: str) -> dict[str, Any]:
    with as_user(conn, str(user)):
        row = conn.execute(
            "insert into public.jobs (input_key) values (%s) returning user_id, status", (key,)
        ).fetchone()
    assert row is not None
    return row


def test_a_user_job_must_name_one_of_their_own_uploads(tx: Connection) -> None:
    assert insert_job_as(tx, ALICE, f"inputs/{ALICE}/song.mp3") == {
        "user_id": ALICE,
        "status": "queued",
    }
    for key in (
        f"inputs/{BOB}/song.mp3",  # somebody else's upload
        f"inputs/{ALICE}",  # the folder, not a file in it
        f"inputs/{ALICE}/../{BOB}/song.mp3",
        f"outputs/{uuid.uuid4()}/vocals.wav",
        "song.mp3",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not one of your uploads"):
            insert_job_as(tx, ALICE, key)
    # the service (API, admins) may enqueue any key
    job, _ = Queue().enqueue(tx, user_id=ALICE, input_key=f"inputs/{BOB}/shared.mp3")
    assert job.status == "queued"


# --- Supabase Realtime: live status for Supabase-client users -------------------------------------

REALTIME_STANDIN = "create publication supabase_realtime"  # Supabase creates it, empty


def published_tables(conn: Connection) -> set[str]:
    rows = conn.execute(
        "select schemaname || '.' || tablename as t from pg_publication_tables "
        "where pubname = 'supabase_realtime'"
    ).fetchall()
    return {r["t"] for r in rows}


def test_the_jobs_table_is_published_to_realtime_where_supabase_has_it(
    fresh_database: Any, tx: Connection
) -> None:
    # a bare Postgres: no publication is made up
    assert tx.execute(
        "select count(*) as n from pg_publication where pubname = 'supabase_realtime'"
    ).fetchone() == {"n": 0}

    url = migrated_with(fresh_database, REALTIME_STANDIN)
    with connect(url) as supa:
        assert published_tables(supa) == {"public.jobs"}
        migrate(url)  # a second run changes nothing and does not fail
        assert published_tables(supa) == {"public.jobs"}


def test_a_realtime_subscriber_sees_changes_of_their_own_jobs_only(fresh_database: Any) -> None:
    # Realtime delivers a change to a subscriber only if the subscriber may select the new row
    # (RLS, evaluated as `authenticated` with the subscriber's JWT claims): the same check here.
    url = migrated_with(fresh_database, REALTIME_STANDIN)
    queue = Queue()
    with connect(url) as supa:
        alice_job, _ = queue.enqueue(supa, user_id=ALICE, input_key=f"inputs/{ALICE}/a.wav")
        bob_job, _ = queue.enqueue(supa, user_id=BOB, input_key=f"inputs/{BOB}/b.wav")
        supa.execute(
            "update public.jobs set priority = 7 where id in (%s, %s)", (alice_job.id, bob_job.id)
        )
        for user, own, other in ((ALICE, alice_job, bob_job), (BOB, bob_job, alice_job)):
            with as_user(supa, str(user)):
                rows = supa.execute(
                    "select id, priority from public.jobs where id in (%s, %s)",
                    (own.id, other.id),
                ).fetchall()
            assert rows == [{"id": own.id, "priority": 7}]

"""One contract for a job, whichever way it comes in: every rule of a valid job, through the HTTP
API (the real app) and through a Supabase client's own insert (role `authenticated` with the
user's JWT claims, as PostgREST runs it), expecting the same outcome: accepted with the same
defaults, or refused naming the same thing.

The deployment's settings (STEMFLEET_MAX_ATTEMPTS, STEMFLEET_MODEL) are recorded where SQL reads
them by the API's start-up and by `stemfleet db migrate` (tested below); a Supabase insert never
passes through Python."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from app.cli import main
from app.db import Connection, as_user
from app.params import KNOWN_STEMS, JobParams
from app.queue import Queue
from app.settings import get_settings
from app.storage import input_key
from tests.api_support import (
    USER_A,
    USER_B,
    api_client,
    api_settings,
    as_url,
    audio_bytes,
    bearer,
)

MAX_ATTEMPTS = 5  # not the built-in 3: a path that ignores the setting shows
MODEL = "htdemucs_ft"  # not the built-in htdemucs, for the same reason
PARAM_DEFAULTS = {"format": "wav", "sample_format": "int16", "shifts": 1, "overlap": 0.25}


@dataclass(frozen=True)
class Rule:
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    kind: str = "separate"
    # None: the API gets the file itself and the client names its own upload; else a key with
    # {me} / {other} for the two users' ids, sent by both paths
    key: str | None = None
    refused: str | None = None  # a word both refusals must name; None: accepted
    priority: int = 0

    def input_key(self) -> str:
        template = self.key or "inputs/{me}/song.wav"
        return template.format(me=USER_A, other=USER_B)


RULES = [
    # defaults: max attempts and the model from the settings, the params' defaults, priority
    Rule("defaults"),
    Rule("preview_priority", kind="preview", priority=10),
    Rule("chosen_params_kept", {"format": "mp3", "bitrate": 192, "stems": ["vocals", "drums"]}),
    Rule("chosen_model_kept", {"model": "mdx"}),
    Rule("null_means_default", {"model": None, "bitrate": None, "segment": None}),
    Rule("numbers_in_range", {"segment": 7.5, "shifts": 0, "overlap": 0.5}),
    Rule("two_stems", {"two_stems": "vocals", "format": "flac", "sample_format": "int24"}),
    Rule("opus_bitrate_edges", {"format": "opus", "bitrate": 6}),
    # the input: the key rule and ownership
    Rule("somebody_elses_input", key="inputs/{other}/song.wav", refused="one of your uploads"),
    Rule("input_not_under_inputs", key="outputs/{me}/song.wav", refused="one of your uploads"),
    Rule("input_bare_folder", key="inputs/{me}", refused="one of your uploads"),
    Rule("input_dot_dot", key="inputs/{me}/../{other}/song.wav", refused="'..'"),
    Rule("input_empty_segment", key="inputs/{me}//song.wav", refused="empty path segment"),
    # params: names, types, ranges, combinations, the served models
    Rule("unknown_param", {"colour": "red"}, refused="colour"),
    Rule("unknown_format", {"format": "aac"}, refused="format"),
    Rule("null_format", {"format": None}, refused="format"),
    Rule("unknown_sample_format", {"sample_format": "int8"}, refused="sample_format"),
    Rule("bitrate_above_range", {"format": "mp3", "bitrate": 321}, refused="bitrate"),
    Rule("bitrate_below_range", {"format": "opus", "bitrate": 5}, refused="bitrate"),
    Rule("bitrate_on_wav", {"bitrate": 128}, refused="bitrate"),
    Rule("bitrate_not_whole", {"format": "mp3", "bitrate": 192.5}, refused="bitrate"),
    Rule("segment_too_short", {"segment": 0.5}, refused="segment"),
    Rule("segment_too_long", {"segment": 60.5}, refused="segment"),
    Rule("shifts_too_many", {"shifts": 21}, refused="shifts"),
    Rule("shifts_negative", {"shifts": -1}, refused="shifts"),
    Rule("shifts_as_text", {"shifts": "2"}, refused="shifts"),
    Rule("shifts_as_bool", {"shifts": True}, refused="shifts"),
    Rule("overlap_one", {"overlap": 1}, refused="overlap"),
    Rule("unknown_stem", {"stems": ["kazoo"]}, refused="stems"),
    Rule("no_stems", {"stems": []}, refused="stems"),
    Rule("repeated_stem", {"stems": ["vocals", "vocals"]}, refused="stems"),
    Rule("unknown_two_stems", {"two_stems": "kazoo"}, refused="two_stems"),
    Rule("stems_and_two_stems", {"stems": ["bass"], "two_stems": "vocals"}, refused="two_stems"),
    Rule("flac_float32", {"format": "flac", "sample_format": "float32"}, refused="float32"),
    Rule("model_not_a_name", {"model": "a b"}, refused="model"),
    Rule("model_not_served", {"model": "nope"}, refused="not served"),
]


@dataclass(frozen=True)
class Accepted:
    status: str
    max_attempts: int
    priority: int
    params: dict[str, Any]


@dataclass(frozen=True)
class Refused:
    message: str


def expected(rule: Rule) -> Accepted | None:
    if rule.refused is not None:
        return None
    chosen = {k: v for k, v in rule.params.items() if v is not None}
    return Accepted(
        "queued", MAX_ATTEMPTS, rule.priority, {**PARAM_DEFAULTS, "model": MODEL, **chosen}
    )


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    """The API, started (so its settings are recorded) on the database both paths use."""
    settings = api_settings(db_url, tmp_path, max_attempts=MAX_ATTEMPTS, model=MODEL)
    with api_client(settings) as (client, _app):
        yield client


@pytest.fixture
def deployed(conn: Connection) -> Connection:
    """A database with the deployment's settings recorded, as the API's start-up does."""
    Queue().configure_jobs(conn, max_attempts=MAX_ATTEMPTS, model=MODEL)
    return conn


def through_api(client: TestClient, conn: Connection, rule: Rule) -> Accepted | Refused:
    headers = bearer(USER_A)
    if rule.key is None:
        response = client.post(
            "/v1/jobs",
            files={"file": ("song.wav", audio_bytes(), "application/octet-stream")},
            data={"kind": rule.kind, "params": json.dumps(rule.params)},
            headers=headers,
        )
    else:
        body = {"input_key": rule.input_key(), "kind": rule.kind, "params": rule.params}
        response = client.post("/v1/jobs", json=body, headers=headers)
    if response.status_code >= 400:
        assert response.status_code in (415, 422), response.text
        message: str = response.json()["error"]["message"]
        return Refused(message)
    assert response.status_code == 202, response.text
    job = Queue().get(conn, response.json()["id"])
    return Accepted(job.status, job.max_attempts, job.priority, job.params)


def through_supabase(conn: Connection, rule: Rule) -> Accepted | Refused:
    columns = {"input_key": rule.input_key(), "kind": rule.kind, "params": Jsonb(rule.params)}
    statement = sql.SQL("insert into public.jobs ({}) values ({}) returning *").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.SQL(", ").join(sql.Placeholder() for _ in columns),
    )
    try:
        with as_user(conn, str(USER_A)):
            row = conn.execute(statement, list(columns.values())).fetchone()
    except psycopg.Error as exc:
        assert exc.sqlstate is not None and exc.sqlstate[:2] not in ("08", "XX"), exc
        return Refused(exc.diag.message_primary or str(exc))
    assert row is not None
    return Accepted(row["status"], row["max_attempts"], row["priority"], row["params"])


def check(rule: Rule, outcome: Accepted | Refused) -> None:
    want = expected(rule)
    if want is None:
        assert isinstance(outcome, Refused), f"accepted: {outcome}"
        assert rule.refused is not None and rule.refused in outcome.message, outcome.message
    else:
        assert outcome == want


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_the_api_applies_the_rule(api: TestClient, conn: Connection, rule: Rule) -> None:
    check(rule, through_api(api, conn, rule))


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_a_supabase_insert_applies_the_rule(deployed: Connection, rule: Rule) -> None:
    check(rule, through_supabase(deployed, rule))


def test_the_api_records_the_job_defaults_when_it_starts(api: TestClient, conn: Connection) -> None:
    row = conn.execute("select max_attempts, model from queue.job_settings").fetchone()
    assert row == {"max_attempts": MAX_ATTEMPTS, "model": MODEL}


def test_neither_path_lets_a_user_choose_priority_or_attempts(
    api: TestClient, conn: Connection
) -> None:
    body = {"input_key": f"inputs/{USER_A}/song.wav", "priority": 1000, "max_attempts": 99}
    response = api.post("/v1/jobs", json=body, headers=bearer(USER_A))
    assert response.status_code == 422
    assert "priority" in response.json()["error"]["message"]

    columns = {"input_key": f"inputs/{USER_A}/song.wav", "priority": 1000, "max_attempts": 99}
    with as_user(conn, str(USER_A)):
        row = conn.execute(
            "insert into public.jobs (input_key, priority, max_attempts) "
            "values (%(input_key)s, %(priority)s, %(max_attempts)s) returning *",
            columns,
        ).fetchone()
    assert row is not None
    assert (row["priority"], row["max_attempts"]) == (0, MAX_ATTEMPTS)


# --- the typed model (app/params.py) and SQL agree ------------------------------------------

PARAM_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=600),
    st.sampled_from([0.0, 0.25, 0.5, 0.5000001, 0.999, 1.0, 7.5, 60.0, 60.0001, 192.0, -0.1]),
    st.sampled_from(
        [
            "wav",
            "flac",
            "mp3",
            "opus",
            "aac",
            "int16",
            "int24",
            "float32",
            "int8",
            "vocals",
            "bass",
            "kazoo",
            "htdemucs",
            "mdx_q",
        ]
    ),
    st.sampled_from(["a b", "", "2", "x" * 64, "x" * 65]),
    st.lists(st.sampled_from(["vocals", "drums", "bass", "piano", "kazoo", 3]), max_size=3),
)
PARAM_NAMES = [*JobParams.model_fields, "colour"]
# each param near its own rule (mostly valid, edges included) or anything at all
NEAR_VALID: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from([None, "htdemucs", "mdx_q"]),
    "stems": st.lists(st.sampled_from(KNOWN_STEMS), min_size=1, max_size=3, unique=True),
    "two_stems": st.sampled_from([None, "vocals", "bass"]),
    "format": st.sampled_from(["wav", "flac", "mp3", "opus"]),
    "sample_format": st.sampled_from(["int16", "int24", "float32"]),
    "bitrate": st.one_of(st.none(), st.integers(min_value=0, max_value=600)),
    "segment": st.one_of(st.none(), st.floats(0.4, 61), st.integers(min_value=0, max_value=61)),
    "shifts": st.integers(min_value=-1, max_value=21),
    "overlap": st.one_of(st.floats(-0.1, 1.1), st.integers(min_value=-1, max_value=2)),
}
RAW_PARAMS = st.one_of(
    st.fixed_dictionaries({}, optional=NEAR_VALID),
    st.fixed_dictionaries(
        {}, optional={k: st.one_of(v, PARAM_VALUES) for k, v in NEAR_VALID.items()}
    ),
    st.dictionaries(st.sampled_from(PARAM_NAMES), PARAM_VALUES, max_size=5),
)


def python_params(raw: dict[str, Any]) -> dict[str, Any] | None:
    """What the typed model makes of `raw`: its params with defaults, or None when invalid."""
    try:
        return JobParams.model_validate(raw).model_dump(mode="json", exclude_none=True)
    except ValidationError:
        return None


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=RAW_PARAMS)
def test_sql_and_python_params_rules_agree(conn: Connection, raw: dict[str, Any]) -> None:
    """Valid for one exactly when valid for the other, and the same defaults written in."""
    row = conn.execute(
        "select queue.params_problem(%(p)s) as problem, queue.job_params(%(p)s) as params",
        {"p": Jsonb(raw)},
    ).fetchone()
    assert row is not None
    python = python_params(raw)
    assert (row["problem"] is None) == (python is not None), (raw, row["problem"])
    if python is not None:  # no deployment model recorded in a fresh database: none written
        assert row["params"] == python, raw


def test_the_api_makes_input_keys_sql_finds_the_users_own(conn: Connection) -> None:
    key = input_key(USER_A, "../../My Song (live).mp3")
    problems = conn.execute(
        "select queue.input_key_problem(%s, %s) as mine, queue.input_key_problem(%s, %s) as theirs",
        (USER_A, key, USER_B, key),
    ).fetchone()
    assert problems == {"mine": None, "theirs": "not under inputs/<your user id>/"}


def test_db_migrate_records_the_job_defaults(
    db_url: str, conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployment that migrates with `stemfleet db migrate` and has Supabase clients but no API
    running yet still gives their jobs its settings."""
    monkeypatch.setenv("STEMFLEET_DATABASE_URL", as_url(db_url))
    monkeypatch.setenv("STEMFLEET_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("STEMFLEET_MODEL", "mdx")
    get_settings.cache_clear()
    try:
        assert main(["db", "migrate"]) == 0
    finally:
        get_settings.cache_clear()
    row = conn.execute("select max_attempts, model from queue.job_settings").fetchone()
    assert row == {"max_attempts": 7, "model": "mdx"}
    with as_user(conn, str(USER_A)):
        job = conn.execute(
            "insert into public.jobs (input_key) values (%s) returning max_attempts, params",
            (f"inputs/{USER_A}/song.wav",),
        ).fetchone()
    assert job is not None and job["max_attempts"] == 7 and job["params"]["model"] == "mdx"

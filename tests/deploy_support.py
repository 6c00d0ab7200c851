"""Helpers for the deployment tests: the docs' code blocks, a real API process on loopback, the
repository's scripts loaded as modules, the CLI commands and settings that deployment files may
name, and the Dockerfile and .dockerignore parsed."""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import queue
import re
import shlex
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.cli import build_parser
from app.db import connect
from app.migrate import bootstrap_sql, migrate
from app.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = {name: ROOT / "docs" / name for name in ("deploy.md", "operations.md")}
# Where a block can run: here (the suite runs it) or the account / tool it needs.
RUNS = {"here", "fly", "supabase", "docker", "prometheus", "runpod"}

_FENCE = re.compile(
    r"^(?P<indent>[ ]*)```(?P<lang>[A-Za-z]*)(?P<info>[^\n]*)\n(?P<body>.*?)^(?P=indent)```[ ]*$",
    re.MULTILINE | re.DOTALL,
)
_ATTR = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class Block:
    doc: str
    lang: str
    title: str
    runs: str
    attrs: dict[str, str]
    body: str


def blocks(doc: str) -> list[Block]:
    """Every fenced block with a language, in document order."""
    found = []
    for match in _FENCE.finditer(DOCS[doc].read_text()):
        if not match.group("lang"):
            continue
        attrs = dict(_ATTR.findall(match.group("info")))
        body = textwrap.dedent(match.group("body"))
        found.append(
            Block(
                doc=doc,
                lang=match.group("lang"),
                title=attrs.get("title", ""),
                runs=attrs.get("runs", ""),
                attrs=attrs,
                body=body,
            )
        )
    return found


def block(doc: str, title: str) -> Block:
    matches = [b for b in blocks(doc) if b.title == title]
    assert len(matches) == 1, f"{doc}: {len(matches)} blocks titled {title!r}"
    return matches[0]


def bash_script(steps: list[Block]) -> str:
    """One script running the blocks in order, as a reader would in one terminal; each block
    announces itself on stderr so a failure names its block."""
    parts = ["set -euo pipefail"]
    for step in steps:
        parts.append(f"echo {sh_quote('::: ' + step.title)} >&2")
        parts.append(step.body)
    return "\n".join(parts) + "\n"


def sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def run_bash(script: str, *, env: dict[str, str], cwd: Path, timeout: float) -> str:
    done = subprocess.run(
        ["bash", "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        announced = [line for line in done.stderr.splitlines() if line.startswith("::: ")]
        where = announced[-1][4:] if announced else "(before the first block)"
        raise AssertionError(
            f"block {where!r} failed with exit {done.returncode}\n"
            f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
        )
    return done.stdout


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The test's environment without STEMFLEET_ settings, with this interpreter's scripts
    (the `stemfleet` command) first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEMFLEET_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def load_script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Process:
    """A child process whose output lines are collected by a thread, so a test can wait for a
    line (a real event) with a deadline."""

    def __init__(self, argv: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log = log
        self._lines: queue.Queue[str] = queue.Queue()
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("a") as sink:
            for line in self.proc.stdout:
                sink.write(line)
                sink.flush()
                self._lines.put(line)

    def wait_for_line(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        wanted = re.compile(pattern)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and self._lines.empty()):
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout}s; log:\n"
                    + self.log.read_text()[-3000:]
                )
            try:
                line = self._lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if wanted.search(line):
                return line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)


@contextmanager
def running(argv: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> Iterator[Process]:
    process = Process(argv, env=env, cwd=cwd, log=log)
    try:
        yield process
    finally:
        process.stop()


# --- stand-ins for what Supabase provides ---------------------------------------------------------

# Supabase Storage's tables as far as policies see them, with RLS on and the grants Supabase
# gives; storage.foldername() as Supabase defines it.
STORAGE_STANDIN = """
create schema storage;
grant usage on schema storage to anon, authenticated, service_role;
create table storage.buckets (
    id text primary key,
    name text not null unique,
    owner uuid,
    public boolean default false,
    file_size_limit bigint,
    allowed_mime_types text[],
    created_at timestamptz default now(),
    updated_at timestamptz default now()
);
create table storage.objects (
    id uuid primary key default gen_random_uuid(),
    bucket_id text references storage.buckets (id),
    name text,
    owner uuid,
    metadata jsonb,
    path_tokens text[] generated always as (string_to_array(name, '/')) stored,
    created_at timestamptz default now(),
    updated_at timestamptz default now(),
    last_accessed_at timestamptz default now(),
    unique (bucket_id, name)
);
alter table storage.buckets enable row level security;
alter table storage.objects enable row level security;
grant all on storage.buckets, storage.objects to anon, authenticated, service_role;
create function storage.foldername(name text) returns text[]
language plpgsql as $$
declare
    _parts text[];
begin
    select string_to_array(name, '/') into _parts;
    return _parts[1:array_length(_parts, 1) - 1];
end
$$;
grant execute on function storage.foldername(text) to anon, authenticated, service_role;
"""

# pg_cron's, pg_net's and Vault's interfaces as the schedule uses them (same signatures);
# requests are recorded instead of sent.
CRON_NET_VAULT_STANDIN = """
create schema cron;
create table cron.job (
    jobid bigserial primary key, schedule text, command text, jobname text unique
);
create function cron.schedule(job_name text, schedule text, command text) returns bigint
language sql as $$
    insert into cron.job (jobname, schedule, command) values (job_name, schedule, command)
    on conflict (jobname) do update set schedule = excluded.schedule, command = excluded.command
    returning jobid
$$;
create function cron.unschedule(job_name text) returns boolean
language sql as $$
    with gone as (delete from cron.job where jobname = job_name returning 1)
    select exists (select 1 from gone)
$$;
create schema net;
create table net.requests (
    id bigserial primary key, url text, body jsonb, params jsonb, headers jsonb,
    timeout_milliseconds integer
);
create function net.http_post(
    url text,
    body jsonb default '{}'::jsonb,
    params jsonb default '{}'::jsonb,
    headers jsonb default '{"Content-Type": "application/json"}'::jsonb,
    timeout_milliseconds integer default 5000
) returns bigint
language sql as $$
    insert into net.requests (url, body, params, headers, timeout_milliseconds)
    values (url, body, params, headers, timeout_milliseconds)
    returning id
$$;
create schema vault;
create table vault.decrypted_secrets (
    name text, decrypted_secret text, created_at timestamptz default now()
);
"""


def migrated_with(fresh_database: Any, standin: str) -> str:
    """A new database: the auth bootstrap, then `standin`, then every migration."""
    url: str = fresh_database(None)
    with connect(url) as conn:
        conn.execute(bootstrap_sql())
        conn.execute(standin)
    migrate(url)
    return url


# --- what the deployment files may name ---------------------------------------------------------

# Variables read outside Settings (app/migrate.py, the test harness).
NON_SETTINGS_VARIABLES = {"STEMFLEET_MIGRATIONS_DIR", "STEMFLEET_TEST_DATABASE_URL"}


def assert_cli_command(command: str | list[str]) -> None:
    """`command` is a `stemfleet ...` invocation the real CLI accepts."""
    argv = shlex.split(command) if isinstance(command, str) else command
    assert argv[0] == "stemfleet", argv
    args = build_parser().parse_args(argv[1:])
    assert callable(args.handler), argv


def assert_known_settings(env: dict[str, str], where: str) -> None:
    """Every STEMFLEET_ variable names a setting (Settings ignores unknown ones silently), and
    together they load."""
    fields = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    unknown = {k for k in env if k.startswith(ENV_PREFIX)} - fields - NON_SETTINGS_VARIABLES
    assert not unknown, f"{where}: not settings: {sorted(unknown)}"


# --- the Dockerfile and .dockerignore, parsed ---------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def dockerfile_stages() -> dict[str, Stage]:
    text = (ROOT / "Dockerfile").read_text()
    logical = re.sub(r"\\\n", " ", text)
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for raw in logical.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        rest = " ".join(rest.split())
        if instruction == "FROM":
            base, _, name = rest.partition(" AS ")
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], base)
            current = Stage(base=base, name=name.strip())
            stages[current.name] = current
        elif current is None and instruction == "ARG":
            key, _, value = rest.partition("=")
            global_args[key] = value
        elif current is not None:
            current.instructions.append((instruction, rest))
    return stages


def dockerfile_env(stage: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in dockerfile_stages()[stage].args("ENV"):
        for item in shlex.split(rest):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: a pattern excludes a path when it matches it or one of its parents."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern) or fnmatch.fnmatchcase(
                prefix.split("/")[-1] if pattern.startswith("**/") else prefix, bare
            ):
                return True
    return False

"""`stemfleet process PROFILE`: separate every new file of a profile's source folder into its
destination (<destination>/<file stem>/<stem>.<ext>). A file is new when its content (sha256)
was not processed before, so renamed files are skipped and edited ones are done again.

Profiles live in a YAML file (--config, STEMFLEET_PROFILES_FILE, or ./stemfleet.yaml):

  api_url: https://stems.example.com  # for remote profiles (or STEMFLEET_API_URL)
  profiles:
    - name: h4n
      source_folder: /Volumes/H4N_SD/STEREO   # relative paths: relative to the YAML file
      glob: "*.wav"                           # or a list; case-insensitive; default: audio
      recursive: false
      model: htdemucs
      stems: [vocals, drums]                  # or two_stems: vocals; default: all
      format: opus                            # wav | flac | mp3 | opus
      bitrate: 192                            # kbps, mp3 / opus
      destination: ~/media/h4n
      remote: false

A local profile (remote: false) runs on this machine: the running `stemfleet up`, or an
embedded system started for the command; what it processed is recorded in its database. A
remote one talks to the API at api_url with --token / STEMFLEET_API_TOKEN, and skips files
that API already separated with the same options (its jobs keep each input's sha256).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.cli_args import add_command
from app.client import ApiClient, JobDict
from app.commands.batch import Batch, Item, ItemResult, output_folders
from app.commands.common import (
    Target,
    add_api_arguments,
    command_settings,
    say,
    terminate_as_interrupt,
    with_model_hint,
)
from app.commands.progress import ProgressBoard
from app.db import connect
from app.embedded import EmbeddedSystem, read_state
from app.errors import ConfigError
from app.params import JobParams
from app.profiles import Profile, file_sha256, find_config, load_profiles
from app.queue import Queue
from app.settings import Settings, reveal


def register(sub: Any) -> None:
    parser = add_command(
        sub, "process", __doc__, "separate the new files of a folder profile (see stemfleet.yaml)"
    )
    parser.add_argument("profile", metavar="PROFILE", help="a profile name from the config")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the profiles YAML (default: STEMFLEET_PROFILES_FILE, else ./stemfleet.yaml)",
    )
    parser.add_argument(
        "--force", action="store_true", help="process every matching file, even those done before"
    )
    add_api_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = command_settings()
    config = load_profiles(find_config(args.config, settings.profiles_file))
    profile = config.get(args.profile)
    params = profile.job_params()
    files = profile.source_files()
    if not files:
        print(f"{profile.name}: no files matching {profile.glob} in {profile.source_folder}")
        return 0
    hashes = {path: file_sha256(path) for path in files}
    first_of: dict[str, Path] = {}
    for path in files:
        first_of.setdefault(hashes[path], path)
    copies = len(files) - len(first_of)
    folders = dict(zip(files, output_folders(files, profile.destination), strict=True))

    with _session(args, settings, profile, config.api_url, params) as session:
        done = set() if args.force else _processed(session, profile, params, first_of, folders)
        todo = [
            Item(str(path.relative_to(profile.source_folder)), path, folders[path], sha256)
            for sha256, path in first_of.items()
            if sha256 not in done
        ]
        print(
            f"{profile.name}: {len(files)} file(s) in {profile.source_folder}, {len(todo)} new, "
            f"{len(done)} already processed"
            + (f", {copies} duplicate(s) of other files" if copies else ""),
            flush=True,
        )
        if not todo:
            return 0
        results = _run_batch(session.target(), profile, params, todo)
    failed = [r for r in results if not r.ok]
    print(
        f"{profile.name}: {len(results) - len(failed)} of {len(results)} new file(s) "
        f"separated into {profile.destination}"
    )
    for result in failed:
        print(f"failed: {result.item.path}: {result.reason}", file=sys.stderr)
    return 1 if failed else 0


@dataclass(kw_only=True, eq=False)
class Session:
    """Where a profile runs. For a local profile with no `stemfleet up` running, only the
    embedded database starts at first (enough to know what is new); the API, scaler and a
    worker start once there is something to process."""

    where: str
    client: ApiClient | None = None
    database_url: str | None = None
    system: EmbeddedSystem | None = None
    default_model: str | None = None

    def target(self) -> Target:
        if self.client is None:
            assert self.system is not None
            say("starting the embedded system (API, scaler with local workers)...")
            self.system.start_services()
            self.client = ApiClient(self.system.api_url, self.system.token)
        return Target(self.client, self.where, self.database_url, self.system, self.default_model)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


@contextlib.contextmanager
def _session(
    args: argparse.Namespace,
    settings: Settings,
    profile: Profile,
    config_api_url: str | None,
    params: JobParams,
) -> Iterator[Session]:
    if profile.remote:
        url = args.api or profile.api_url or config_api_url or settings.api_url
        if not url:
            raise ConfigError(
                f"profile {profile.name!r} is remote: give the API's address as api_url in the "
                "config (or the profile), --api, or STEMFLEET_API_URL"
            )
        session = Session(
            where=url, client=ApiClient(url, args.token or reveal(settings.api_token))
        )
        try:
            yield session
        finally:
            session.close()
        return
    if args.api:
        raise ConfigError(
            f"profile {profile.name!r} is local (remote: false): drop --api, or set remote: true"
        )
    state = read_state(settings)
    if state is not None:
        client = ApiClient(state.api_url, state.token)
        session = Session(
            where=state.api_url,
            client=client,
            database_url=state.database_url,
            default_model=state.model or None,
        )
        try:
            yield session
        finally:
            session.close()
        return
    system = EmbeddedSystem(
        settings,
        port=0,
        output=settings.data_dir / "logs" / "embedded.log",
        worker_model=params.model,
        warm_worker=True,
        say=say,
    )
    with terminate_as_interrupt():
        try:
            session = Session(
                where="embedded system",
                database_url=system.start_database(),
                system=system,
                default_model=system.model,
            )
            yield session
            session.close()
        finally:
            system.stop()


def _processed(
    session: Session,
    profile: Profile,
    params: JobParams,
    first_of: dict[str, Path],
    folders: dict[Path, Path],
) -> set[str]:
    """The hashes among `first_of` this profile need not process again."""
    hashes = list(first_of)
    if session.database_url is not None:
        with connect(session.database_url) as conn:
            return Queue().profile_files_processed(conn, profile.name, hashes)
    # Remote: a succeeded job for the same content and options, with stems in the destination.
    wanted = params.model_dump(mode="json", exclude_none=True)
    seen: set[str] = set()
    for job in session.target().client.iter_jobs(status=["succeeded"]):
        sha256 = job.get("input_sha256")
        if sha256 in first_of and job.get("params") == wanted:
            folder = folders[first_of[sha256]]
            if folder.is_dir() and any(folder.iterdir()):
                seen.add(sha256)
        if len(seen) == len(hashes):
            break
    return seen


def _run_batch(
    target: Target, profile: Profile, params: JobParams, todo: list[Item]
) -> list[ItemResult]:
    database_url = target.database_url

    def record(item: Item, job: JobDict, stems: dict[str, Path]) -> None:
        if database_url is None or item.sha256 is None:
            return  # remote: the API's job (with the input's sha256) is the record
        with connect(database_url) as conn:
            Queue().record_profile_file(
                conn,
                profile=profile.name,
                sha256=item.sha256,
                source_path=str(item.path),
                job_id=str(job["id"]),
                outputs={name: str(path) for name, path in stems.items()},
            )

    system = target.system

    def health() -> str | None:
        problem = system.worker_failure() if system is not None else None
        return with_model_hint(problem) if problem else None

    board = ProgressBoard([item.name for item in todo])
    batch = Batch(
        target.client,
        target.complete(params),
        board,
        on_success=record,
        health=health if system is not None else None,
    )
    return batch.run(todo)

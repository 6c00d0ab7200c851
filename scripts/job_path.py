"""How much of the project one job goes through: files and functions on its path, submit to stems.

Runs one job end to end in this process: a throwaway Postgres (app.pgserver, migrated), moto's S3
server, the API in-process (its lifespan, then httpx over ASGI), and one `Worker.run_once()` with
Demucs' tiny `demucs_unittest` model on the CPU. From the submit (POST /v1/jobs) to the stems
(GET /v1/jobs/{id} with their URLs), every Python call on any thread is seen through
`sys.setprofile` / `threading.setprofile`; the distinct project files (app/, worker/, scaler/)
and functions among them are printed with their counts. The API's and the worker's start (model
load, registering, LISTEN) happen before the window and are not counted; the worker's own
threads (heartbeats, upload) are, while the job is on its path.

    .venv/bin/python scripts/job_path.py            # the counts and the list
    .venv/bin/python scripts/job_path.py --json     # one JSON object instead

Functions are named ones (`module.py:Class.method`); lambdas and comprehensions are counted
apart, as `anonymous`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PARTS = ("app", "worker", "scaler")
PREFIXES = tuple(str(ROOT / part) + os.sep for part in PARTS)


class PathRecorder:
    """A profile hook that notes each project function called while `on`."""

    def __init__(self) -> None:
        self.on = False
        self.calls: dict[tuple[str, str], int] = defaultdict(int)
        self._lock = threading.Lock()

    def hook(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or not self.on:
            return
        code = frame.f_code
        if not code.co_filename.startswith(PREFIXES):
            return
        where = os.path.relpath(code.co_filename, ROOT)
        with self._lock:
            self.calls[(where, code.co_qualname)] += 1

    @contextmanager
    def installed(self) -> Iterator[PathRecorder]:
        sys.setprofile(self.hook)
        threading.setprofile(self.hook)
        try:
            yield self
        finally:
            sys.setprofile(None)
            threading.setprofile(None)  # type: ignore[arg-type]

    def report(self) -> dict[str, Any]:
        named = sorted(key for key in self.calls if not _anonymous(key[1]))
        anonymous = sorted(key for key in self.calls if _anonymous(key[1]))
        files = sorted({where for where, _ in self.calls})
        per_part = {part: sum(f.startswith(part + "/") for f in files) for part in PARTS}
        return {
            "files": len(files),
            "functions": len(named),
            "anonymous": len(anonymous),
            "files_per_part": per_part,
            "file_list": files,
            "function_list": [f"{where}:{name}" for where, name in named],
        }


def _anonymous(qualname: str) -> bool:
    return qualname.rsplit(".", 1)[-1].startswith("<")


@contextmanager
def services(work: Path) -> Iterator[dict[str, str]]:
    """A migrated throwaway Postgres and a bucket on moto's S3 server; yields the settings."""
    from moto.server import ThreadedMotoServer

    from app.migrate import migrate
    from app.pgserver import LocalPostgres, free_port
    from tests.s3_support import new_bucket_env

    os.chmod(work, 0o755)  # the `postgres` OS user must reach the cluster when we run as root
    server = LocalPostgres(data_dir=work / "pg", fast_unsafe=True)
    server.start()
    port = free_port()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3.start()
    try:
        migrate(server.url)
        env = new_bucket_env(f"http://127.0.0.1:{port}")
        yield {k.removeprefix("STEMFLEET_").lower(): v for k, v in env.items()} | {
            "database_url": server.url
        }
    finally:
        s3.stop()
        server.stop()


async def one_job(settings: Any, recorder: PathRecorder, work: Path) -> dict[str, Any]:
    """Submit one clip through the API, run it with one `run_once()`, read the stems."""
    import httpx

    from app.api.main import create_app
    from tests.api_support import USER_A, audio_bytes, bearer
    from worker.loop import Worker
    from worker.separation import Separator

    app = create_app(settings, run_dispatcher=False)
    clip = audio_bytes("WAV", 2.0, samplerate=44100)
    worker = Worker(settings, separator=Separator(settings), prefetch=False, work_dir=work / "w")
    with worker:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=120
            ) as client,
        ):
            recorder.on = True
            created = await client.post(
                "/v1/jobs",
                files={"file": ("mix.wav", clip, "audio/wav")},
                headers=bearer(USER_A),
            )
            created.raise_for_status()
            job_id = created.json()["id"]
            (outcome,) = worker.run_once()
            final = (await client.get(f"/v1/jobs/{job_id}", headers=bearer(USER_A))).json()
            recorder.on = False
    if outcome.status != "succeeded" or set(final.get("stems") or {}) != {
        "drums",
        "bass",
        "other",
        "vocals",
    }:
        raise SystemExit(f"the job did not end with four stems: {outcome}, {final}")
    return {"job_id": job_id, "status": final["status"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    from app.log import configure
    from tests.api_support import api_settings

    configure("WARNING", json=True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request lines
    work = Path(tempfile.mkdtemp(prefix="stemfleet-job-path-"))
    recorder = PathRecorder()
    try:
        with services(work) as env, recorder.installed():
            database_url = env.pop("database_url")
            settings = api_settings(
                database_url,
                work,
                model="demucs_unittest",
                model_repo=None,
                device="cpu",
                **env,
            )
            job = asyncio.run(one_job(settings, recorder, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"job": job, **recorder.report()}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print("\n".join(report["function_list"]))
    print()
    print("files:", "\n  ".join(["", *report["file_list"]]))
    parts = ", ".join(f"{k} {v}" for k, v in report["files_per_part"].items())
    print(
        f"\none job's path (submit to stems): {report['files']} files ({parts}), "
        f"{report['functions']} named functions (+{report['anonymous']} lambdas/comprehensions)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

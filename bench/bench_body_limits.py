"""Benchmark 8: the API's peak memory on a huge JSON body.

Runs the API as its own process (as bench_sse.py does) and POSTs a 256 MB JSON body to /v1/jobs,
once with a Content-Length and once chunked (no Content-Length), then reads the process's
resident set before the request (VmRSS) and its high-water mark after (VmHWM, /proc; Linux).
`--api-src DIR` runs another source tree (e.g. main) for the before/after comparison.

    .venv/bin/python bench/bench_body_limits.py [--mb 256] [--api-src DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.migrate import migrate
from app.pgserver import free_port
from bench._common import REPO_ROOT, bench_postgres, scratch_database, write_result
from bench.bench_sse import start_api, user_token

MIB = 1024 * 1024


def memory_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--api-src", type=Path, default=REPO_ROOT)
    parser.add_argument("--out", default="body_limits.md")
    args = parser.parse_args(argv)
    args.streams_per_user = 20
    body = b'{"input_key": "' + b"x" * (args.mb * MIB) + b'"}'
    headers = {
        "Authorization": f"Bearer {user_token(uuid.uuid4())}",
        "Content-Type": "application/json",
    }

    def chunked() -> Iterator[bytes]:
        for start in range(0, len(body), MIB):
            yield body[start : start + MIB]

    rows = []
    with bench_postgres() as pg, scratch_database(pg.admin_url, "bench_body") as db_url:
        migrate(db_url, args.api_src / "supabase" / "migrations")
        for label, content in (("Content-Length", body), ("chunked", None)):
            with tempfile.TemporaryDirectory(prefix="stemfleet-bench-body-") as tmp:
                port = free_port()
                api = start_api(db_url, port, Path(tmp), args)
                try:
                    before = memory_mib(api.pid, "VmRSS")
                    response = httpx.post(
                        f"http://127.0.0.1:{port}/v1/jobs",
                        content=content if content is not None else chunked(),
                        headers=headers,
                        timeout=300,
                    )
                    peak = memory_mib(api.pid, "VmHWM")
                finally:
                    api.terminate()
                    api.wait(timeout=30)
            answer = f"{response.status_code} {response.text[:120]}"
            rows.append(f"| {label} | {before:.0f} MiB | {peak:.0f} MiB | {answer} |")
    text = "\n".join(
        [
            f"# Benchmark 8: API peak memory on a {args.mb} MB JSON body",
            "",
            f"API source: {args.api_src}",
            "",
            "| body sent with | RSS before | peak RSS (VmHWM) | answer |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    print(text)
    write_result(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

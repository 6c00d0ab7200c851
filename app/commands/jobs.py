"""`stemfleet jobs`, `status JOB`, `cancel JOB`, `download JOB`: against a configured API, the
running `stemfleet up`, or (when neither) the embedded system's API started just for the
command (no scaler: reading jobs starts no worker)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

from app.commands.common import (
    add_api_arguments,
    command_settings,
    describe_job,
    input_name,
    job_state,
    local_time,
    open_target,
    reason_of,
)
from app.commands.separate import DEFAULT_OUT

STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"]


def _job_id(text: str) -> str:
    try:
        return str(UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a job id (a UUID, as `stemfleet jobs` lists them)"
        ) from None


def register(sub: Any) -> None:
    jobs = sub.add_parser("jobs", help="list my jobs, newest first")
    jobs.add_argument(
        "--status", action="append", choices=STATUSES, help="only this status (repeatable)"
    )
    jobs.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    jobs.add_argument("--json", action="store_true", help="the API's JSON, one list")
    add_api_arguments(jobs)
    jobs.set_defaults(handler=run_jobs)

    status = sub.add_parser("status", help="one job: status, progress, error, stems")
    status.add_argument("job", type=_job_id, metavar="JOB")
    status.add_argument("--json", action="store_true", help="the API's JSON")
    add_api_arguments(status)
    status.set_defaults(handler=run_status)

    cancel = sub.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job", type=_job_id, metavar="JOB")
    add_api_arguments(cancel)
    cancel.set_defaults(handler=run_cancel)

    download = sub.add_parser("download", help="download a finished job's stems")
    download.add_argument("job", type=_job_id, metavar="JOB")
    download.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help="stems go to DIR/<input file stem>/<stem>.<ext> (default: ./stems)",
    )
    add_api_arguments(download)
    download.set_defaults(handler=run_download)


def run_jobs(args: argparse.Namespace) -> int:
    with open_target(args, command_settings(), start=True, with_scaler=False) as target:
        jobs = target.client.list_jobs(status=args.status, limit=args.limit)
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    if not jobs:
        print("no jobs" + (f" with status {', '.join(args.status)}" if args.status else ""))
        return 0
    rows = [("ID", "STATUS", "KIND", "INPUT", "CREATED")]
    for job in jobs:
        created = local_time(job["created_at"])
        rows.append((str(job["id"]), job_state(job), job["kind"], input_name(job), created))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join([*(row[i].ljust(widths[i]) for i in range(4)), row[4]]))
    return 0


def run_status(args: argparse.Namespace) -> int:
    with open_target(args, command_settings(), start=True, with_scaler=False) as target:
        job = target.client.get(args.job)
    if args.json:
        print(json.dumps(job, indent=2))
    else:
        print("\n".join(describe_job(job)))
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    with open_target(args, command_settings(), start=True, with_scaler=False) as target:
        job = target.client.cancel(args.job)
    print(f"{job['id']}: {job['status']}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    with open_target(args, command_settings(), start=True, with_scaler=False) as target:
        job = target.client.get(args.job)
        if job["status"] != "succeeded":
            why = f": {reason_of(job)}" if job["status"] in ("failed", "cancelled") else ""
            print(f"job {job['id']} has no stems: it is {job_state(job)}{why}", file=sys.stderr)
            return 1
        dest = args.out / (Path(input_name(job)).stem or str(job["id"]))
        stems = target.client.download_stems(job, dest)
    for name, path in sorted(stems.items()):
        print(f"{name:8} {path}")
    return 0

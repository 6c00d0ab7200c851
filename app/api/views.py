"""The JSON shapes the API answers with (also the webhook payload's `data`)."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field

from app.queue import Job
from app.storage import Storage


class StemFile(BaseModel):
    key: str = Field(description="object key in storage")
    url: str = Field(description="presigned download URL, valid for `url_expires_in` seconds")


class JobOut(BaseModel):
    id: UUID
    kind: Literal["separate", "preview"]
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: float = Field(description="0..1 while running; 1 once succeeded")
    queue_position: int | None = Field(
        None,
        description="1 = next to run: place among the queued jobs due to run, in claim order "
        "(priority, then age); null unless queued, and while a retry waits out its backoff",
    )
    params: dict[str, Any]
    input_key: str
    input_sha256: str | None
    duration_s: float | None = Field(description="seconds of input audio")
    error: str | None = Field(description="why the job failed, in words a user can act on")
    error_kind: str | None = Field(description="the failure's class, for programs to match on")
    attempts: int = Field(description="tries started so far")
    max_attempts: int = Field(description="tries before a failing job fails for good")
    callback_url: str | None = Field(description="where the job's webhooks are sent")
    idempotency_key: str | None = Field(description="the Idempotency-Key it was submitted with")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    timings: dict[str, Any] = Field(
        description="worker-reported phase timings plus wait_s (queued) and run_s (running)"
    )
    output: dict[str, Any] | None
    stems: dict[str, StemFile] | None = Field(
        None, description="stem name -> download, once succeeded"
    )
    url_expires_in: float | None = None
    reused_from: UUID | None = Field(
        None,
        description="only in a submit answer: the same audio with the same kind and params was "
        "submitted before, so that job (this one) and its stems are reused, nothing runs again",
    )


class JobList(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next (older) page")


def stem_keys(output: dict[str, Any] | None) -> dict[str, str]:
    """Stem name -> object key from jobs.output: {"stems": {name: key | {"key": ...}}}, or
    the same mapping at the top level."""
    if not output:
        return {}
    stems = output.get("stems", output)
    found: dict[str, str] = {}
    if isinstance(stems, dict):
        items = list(stems.items())
    elif isinstance(stems, list):
        items = [(str(s.get("name") or s.get("stem")), s) for s in stems if isinstance(s, dict)]
    else:
        return {}
    for name, value in items:
        key = value.get("key") if isinstance(value, dict) else value
        if isinstance(key, str) and key.startswith("outputs/"):
            found[str(name)] = key
    return found


def job_view(
    job: Job,
    storage: Storage | None = None,
    *,
    expires: float = 3600.0,
    position: int | None = None,
) -> JobOut:
    timings = dict(job.timings)
    if job.started_at:
        timings["wait_s"] = (job.started_at - job.created_at).total_seconds()
        if job.finished_at:
            timings["run_s"] = (job.finished_at - job.started_at).total_seconds()
    stems = None
    if job.status == "succeeded" and storage is not None:
        stems = {
            name: StemFile(key=key, url=storage.presign_get(key, expires))
            for name, key in stem_keys(job.output).items()
        }
    # Job's own fields by name (JobOut shows a subset), then what the view adds
    view = JobOut.model_validate(job, from_attributes=True)
    return view.model_copy(
        update={
            "queue_position": position if job.status == "queued" else None,
            "timings": timings,
            "stems": stems,
            "url_expires_in": expires if stems else None,
        }
    )


class BadCursor(ValueError):
    pass


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, job_id = raw.partition("|")
        return datetime.fromisoformat(created), UUID(job_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadCursor("cursor is not one this API returned: use next_cursor as given") from None

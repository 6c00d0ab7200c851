"""Creating a job: the job's rules (queue.check_job, in SQL, as a Supabase client's insert gets
them), idempotency replay, callback vetting, the per-user queue limit, the checks that need the
bytes, deduplication by content, then queue.enqueue (SQL) on the service connection."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from app.api.context import ApiContext
from app.api.errors import ApiError
from app.api.intake import Input, copy_limited, inspect_audio, sha256_file, too_large
from app.api.ssrf import UnsafeCallbackUrl
from app.api.views import JobOut
from app.errors import InputKeyRefused, InvalidParams, ObjectNotFound
from app.log import get_logger
from app.params import JobParams
from app.queue import Job, JobKind
from app.storage import input_key

QUEUE_FULL_RETRY_AFTER = 30  # seconds


def _default_params() -> JobParams:
    return JobParams.model_validate({})


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: JobKind = Field("separate", description="separate: whole file; preview: a short clip")
    params: JobParams = Field(default_factory=_default_params)
    callback_url: str | None = Field(
        None,
        max_length=2048,
        description="POSTed a signed webhook (Standard Webhooks) on every final status",
    )


class JobCreate(JobSpec):
    input_key: str = Field(
        min_length=1, max_length=1024, description="the input_key returned by POST /v1/uploads"
    )


@dataclass(frozen=True)
class Upload:
    file: BinaryIO
    filename: str


@dataclass(frozen=True)
class Request:
    """What an Idempotency-Key stands for: the same key must come with the same request."""

    kind: str
    params: dict[str, Any]
    callback_url: str | None
    input_key: str | None  # by input_key; None for an uploaded file (compared by sha256)

    def differences(self, job: Job, *, sha256: str | None) -> list[str]:
        found = [
            name
            for name, mine, theirs in (
                ("kind", self.kind, job.kind),
                ("params", self.params, job.params),
                ("callback_url", self.callback_url, job.callback_url),
            )
            if mine != theirs
        ]
        if self.input_key is not None and self.input_key != job.input_key:
            found.append("input_key")
        if sha256 is not None and sha256 != job.input_sha256:
            found.append("file")
        return found


@dataclass(frozen=True)
class Submitted:
    job: JobOut
    created: bool
    replayed: bool = False
    deduplicated: bool = False


class Submitter:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.log = get_logger()

    def _view(self, job: Job, *, reused: bool = False) -> JobOut:
        view = self.ctx.views([job])[0]
        return view.model_copy(update={"reused_from": job.id}) if reused else view

    def submit(
        self, user_id: UUID, spec: JobSpec, source: Upload | str, idempotency_key: str | None
    ) -> Submitted:
        """Queue the job `spec` on the input `source`: a file uploaded with the request, or the
        input_key of an earlier upload."""
        ctx = self.ctx
        upload = source if isinstance(source, Upload) else None
        key = source if isinstance(source, str) else None
        request = Request(
            kind=spec.kind,
            params=self._check_job(user_id, spec, key),
            callback_url=spec.callback_url,
            input_key=key,
        )
        earlier, replay_key = None, idempotency_key or ""
        if idempotency_key is not None:
            with ctx.user_connection(user_id) as conn:
                earlier = ctx.queue.find_idempotent_mine(conn, idempotency_key)
        if earlier is not None and upload is None:
            return self._replay(earlier, replay_key, request)
        with tempfile.TemporaryDirectory(prefix="stemfleet-api-") as tmp:
            staged = Path(tmp) / "input"
            if upload is not None:
                size, sha256 = copy_limited(upload.file, staged, ctx.max_upload_bytes)
                if earlier is not None:
                    return self._replay(earlier, replay_key, request, sha256=sha256)
            self._check_callback(spec.callback_url)
            self._check_queue_limit(user_id)
            if upload is None:
                assert key is not None
                size = self._fetch_input(user_id, key, staged)
                sha256 = sha256_file(staged)
            found = inspect_audio(staged, size, sha256, ctx.settings.max_duration)
            if ctx.settings.dedup_window > 0:
                with ctx.user_connection(user_id) as conn:
                    duplicate = ctx.queue.find_duplicate_mine(
                        conn,
                        sha256=sha256,
                        kind=spec.kind,
                        params=request.params,
                        window=ctx.settings.dedup_window,
                    )
                if duplicate is not None:
                    self.log.info(
                        "job_deduplicated", job_id=str(duplicate.id), user_id=str(user_id)
                    )
                    view = self._view(duplicate, reused=True)
                    return Submitted(view, created=False, deduplicated=True)
            if upload is not None:
                key = self._store(user_id, upload.filename, found)
        assert key is not None
        with ctx.connection() as conn:
            job, created = ctx.queue.enqueue(
                conn,
                user_id=user_id,
                input_key=key,
                kind=spec.kind,
                params=request.params,
                input_sha256=found.sha256,
                duration_s=found.duration_s,
                callback_url=spec.callback_url,
                idempotency_key=idempotency_key,
            )
        if not created:  # the same key, sent twice at once: the other request won
            return self._replay(job, replay_key, request, sha256=found.sha256)
        self.log.info("job_submitted", job_id=str(job.id), user_id=str(user_id), kind=job.kind)
        return Submitted(self._view(job), created=True)

    def _replay(
        self, earlier: Job, idempotency_key: str, request: Request, *, sha256: str | None = None
    ) -> Submitted:
        """The job an Idempotency-Key was first used for, if this is the same request (409 if
        not, as payment APIs do: a key names one request, never a different one)."""
        differs = request.differences(earlier, sha256=sha256)
        if differs:
            raise ApiError(
                409,
                "idempotency_key_reused",
                f"Idempotency-Key {idempotency_key!r} was already used for job {earlier.id}, "
                f"with a different {' and '.join(differs)}; send exactly the same request to "
                "get that job again, or use a new key for a new job",
            )
        return Submitted(self._view(earlier), created=False, replayed=True)

    def _check_job(self, user_id: UUID, spec: JobSpec, key: str | None) -> dict[str, Any]:
        """The job's rules, from SQL: the params with the deployment's defaults written in (the
        fleet's model among them, so a job records what it ran with and dedup never matches a
        job separated by another model), and a named input_key that is the user's own."""
        params = spec.params.model_dump(mode="json", exclude_none=True)
        try:
            with self.ctx.connection() as conn:
                return self.ctx.queue.check_job(conn, user_id=user_id, params=params, input_key=key)
        except InputKeyRefused as exc:
            raise ApiError(
                422, "invalid_input_key", f"{exc}; get an input_key from POST /v1/uploads"
            ) from None
        except InvalidParams as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None

    def _check_queue_limit(self, user_id: UUID) -> None:
        with self.ctx.user_connection(user_id) as conn:
            queued = self.ctx.queue.count_queued_mine(conn)
        limit = self.ctx.settings.max_queued_per_user
        if queued >= limit:
            raise ApiError(
                429,
                "too_many_queued_jobs",
                f"you already have {queued} queued jobs, the limit is {limit}; wait for some to "
                "start or cancel some, then retry",
                headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER)},
            )

    def _check_callback(self, url: str | None) -> None:
        if url is None:
            return
        if self.ctx.webhook_secret is None:
            raise ApiError(
                422,
                "webhooks_disabled",
                "this server sends no webhooks (the operator set no STEMFLEET_WEBHOOK_SECRET); "
                "submit without callback_url and follow the job with GET or its event stream",
            )
        try:
            self.ctx.callbacks.check(url)
        except UnsafeCallbackUrl as exc:
            raise ApiError(422, "invalid_callback_url", str(exc)) from None

    def _fetch_input(self, user_id: UUID, key: str, dest: Path) -> int:
        """The input named by `key`, which queue.check_job found to be the user's own."""
        storage = self.ctx.storage
        try:
            size = storage.size(key)
            if size > self.ctx.max_upload_bytes:
                raise too_large(self.ctx.max_upload_bytes)
            storage.get_file(key, dest)
        except ObjectNotFound:
            raise ApiError(
                422,
                "input_not_found",
                f"nothing was uploaded to {key!r}: PUT the file to the upload_url from "
                "POST /v1/uploads first (it expires), then submit",
            ) from None
        return dest.stat().st_size

    def _store(self, user_id: UUID, filename: str, found: Input) -> str:
        name = filename or f"input.{found.format.extensions[0]}"
        key = input_key(user_id, name)
        self.ctx.storage.put_file(key, found.path, content_type=found.content_type)
        return key

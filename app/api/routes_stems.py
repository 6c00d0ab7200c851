"""GET /v1/jobs/{id}/stems.zip: every stem of a finished job in one archive (stored, not
compressed: the stems are audio). The stems are fetched from storage into a temporary folder,
zipped there and streamed; the folder goes once the answer is sent."""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from uuid import UUID

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from app.api.context import ApiContext
from app.api.deps import Ctx, StreamUser, errors
from app.api.errors import ApiError
from app.api.views import stem_keys
from app.storage import safe_filename

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def archive_name(input_key: str) -> str:
    """`song-stems.zip` for an input named `song.mp3`."""
    stem = PurePosixPath(input_key).stem or "job"
    return f"{safe_filename(stem)}-stems.zip"


def _build(ctx: ApiContext, user: UUID, job_id: UUID, folder: Path) -> tuple[Path, str]:
    with ctx.user_connection(user) as conn:
        job = ctx.queue.get(conn, job_id)
    keys = stem_keys(job.output) if job.status == "succeeded" else {}
    if not keys:
        raise ApiError(
            409,
            "no_stems",
            f"job {job_id} is {job.status}: its stems can be downloaded once it has succeeded",
        )
    archive = folder / "stems.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zipped:
        for name, key in sorted(keys.items()):
            local = folder / f"stem{PurePosixPath(key).suffix}"
            ctx.storage.get_file(key, local)
            zipped.write(local, arcname=f"{safe_filename(name)}{PurePosixPath(key).suffix}")
            local.unlink()
    return archive, archive_name(job.input_key)


@router.get(
    "/{job_id}/stems.zip",
    response_class=FileResponse,
    summary="All stems of a finished job in one zip archive",
    description="Browsers may pass the token as ?access_token= (a download link cannot set "
    "headers).",
    responses=errors(401, 404, 409, 422, extra={200: {"content": {"application/zip": {}}}}),
)
async def stems_archive(ctx: Ctx, user: StreamUser, job_id: UUID) -> FileResponse:
    folder = Path(tempfile.mkdtemp(prefix="stemfleet-zip-"))
    try:
        archive, filename = await run_in_threadpool(_build, ctx, user, job_id, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(
        archive,
        media_type="application/zip",
        filename=filename,
        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
    )

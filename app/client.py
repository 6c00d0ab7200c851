"""A small client of the stemfleet HTTP API (httpx): submit a file, read, list, cancel, follow a
job (server-sent events, or polling where the stream is unavailable), and download its stems.

Jobs are returned as the API's JSON (a dict shaped like app.api.views.JobOut).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

from app.closing import Closing
from app.errors import StemfleetError
from app.params import JobParams

FINAL = frozenset({"succeeded", "failed", "cancelled"})
CHUNK = 1 << 20

JobDict = dict[str, Any]


class ApiClientError(StemfleetError):
    """The API refused a request or could not be reached; `status` 0 when unreachable."""

    def __init__(
        self, message: str, *, status: int = 0, code: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after


def _error_of(response: httpx.Response) -> ApiClientError:
    code, message = "", ""
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code, message = str(error.get("code", "")), str(error.get("message", ""))
        elif isinstance(body, dict) and "detail" in body:
            message = str(body["detail"])
    except ValueError:
        message = response.text[:300]
    if response.status_code == 401 and not message:
        message = "missing or invalid token"
    if response.status_code == 401:
        message += " (give --token or STEMFLEET_API_TOKEN)"
    retry_after = response.headers.get("Retry-After", "")
    return ApiClientError(
        message or f"HTTP {response.status_code}",
        status=response.status_code,
        code=code,
        retry_after=float(retry_after) if retry_after.isdigit() else None,
    )


class ApiClient(Closing):
    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    # --- plumbing ------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiClientError(
                f"cannot reach the API at {self.base_url} ({type(exc).__name__}: {exc}): is it "
                "running? Start one with `stemfleet up`, or fix --api / STEMFLEET_API_URL"
            ) from None
        if response.status_code >= 400:
            raise _error_of(response)
        return response

    # --- jobs ----------------------------------------------------------------------------------
    def submit_file(
        self,
        path: Path,
        params: JobParams | None = None,
        *,
        kind: str = "separate",
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> JobDict:
        """Upload `path` with the job (multipart); returns the job: new, or the earlier one whose
        stems the API reuses for the same audio and options (then `reused_from` is set)."""
        data = {"kind": kind}
        if params is not None:
            data["params"] = json.dumps(params.model_dump(mode="json", exclude_none=True))
        if callback_url:
            data["callback_url"] = callback_url
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with path.open("rb") as handle:
            response = self._request(
                "POST",
                "/v1/jobs",
                data=data,
                files={"file": (path.name, handle, "application/octet-stream")},
                headers=headers,
                timeout=httpx.Timeout(None, connect=10.0),
            )
        job: JobDict = response.json()
        return job

    def get(self, job_id: str) -> JobDict:
        job: JobDict = self._request("GET", f"/v1/jobs/{job_id}").json()
        return job

    def list_jobs(self, *, status: list[str] | None = None, limit: int = 20) -> list[JobDict]:
        """The newest `limit` jobs (all pages up to that many)."""
        jobs: list[JobDict] = []
        cursor: str | None = None
        while len(jobs) < limit:
            query: dict[str, Any] = {"limit": min(100, limit - len(jobs))}
            if status:
                query["status"] = status
            if cursor:
                query["cursor"] = cursor
            page = self._request("GET", "/v1/jobs", params=query).json()
            jobs.extend(page["jobs"])
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return jobs

    def iter_jobs(self, *, status: list[str] | None = None) -> Iterator[JobDict]:
        """Every job of the caller, newest first, page by page."""
        cursor: str | None = None
        while True:
            query: dict[str, Any] = {"limit": 100}
            if status:
                query["status"] = status
            if cursor:
                query["cursor"] = cursor
            page = self._request("GET", "/v1/jobs", params=query).json()
            yield from page["jobs"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def cancel(self, job_id: str) -> JobDict:
        job: JobDict = self._request("POST", f"/v1/jobs/{job_id}/cancel").json()
        return job

    # --- following -----------------------------------------------------------------------------
    def follow(
        self, job_id: str, *, poll_interval: float = 1.0, timeout: float | None = None
    ) -> Iterator[JobDict]:
        """The job on every change until it is final (the last item). Server-sent events;
        polling GET when the stream cannot be opened or breaks."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: JobDict | None = None
        try:
            for job in self._events(job_id, deadline):
                last = job
                yield job
                if job["status"] in FINAL:
                    return
        except (ApiClientError, httpx.HTTPError) as exc:
            if isinstance(exc, ApiClientError) and exc.status in (401, 404):
                raise
        yield from self._poll(job_id, poll_interval, deadline, last)

    def _events(self, job_id: str, deadline: float | None) -> Iterator[JobDict]:
        read_timeout = None if deadline is None else max(1.0, deadline - time.monotonic())
        with self._http.stream(
            "GET",
            f"/v1/jobs/{job_id}/events",
            headers={"Accept": "text/event-stream"},
            timeout=httpx.Timeout(read_timeout, connect=10.0),
        ) as response:
            if response.status_code >= 400:
                response.read()
                raise _error_of(response)
            data: list[str] = []
            for line in response.iter_lines():
                if line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                elif line == "" and data:
                    yield json.loads("\n".join(data))
                    data = []
                if deadline is not None and time.monotonic() > deadline:
                    raise ApiClientError(f"job {job_id} did not finish in time")

    def _poll(
        self, job_id: str, interval: float, deadline: float | None, last: JobDict | None
    ) -> Iterator[JobDict]:
        while True:
            job = self.get(job_id)
            if last is None or (job["status"], job["progress"]) != (
                last["status"],
                last["progress"],
            ):
                last = job
                yield job
            if job["status"] in FINAL:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise ApiClientError(f"job {job_id} did not finish in time")
            time.sleep(interval)

    # --- stems ---------------------------------------------------------------------------------
    def download_stems(
        self,
        job: JobDict,
        dest: Path,
        *,
        progress: Callable[[float], None] | None = None,
    ) -> dict[str, Path]:
        """Write each stem of a succeeded job to `dest/<stem>.<ext>`; returns stem -> path.
        Each file is written to a temporary name first, so a broken download leaves no stem."""
        if job.get("status") != "succeeded":
            raise ApiClientError(f"job {job['id']} has no stems: it is {job.get('status')}")
        stems = job.get("stems") or {}
        if not stems:
            job = self.get(str(job["id"]))  # presigned URLs expire: fetch fresh ones
            stems = job.get("stems") or {}
        if not stems:
            raise ApiClientError(f"job {job['id']} succeeded but lists no stems")
        dest.mkdir(parents=True, exist_ok=True)
        written: dict[str, Path] = {}
        for index, (name, stem) in enumerate(sorted(stems.items())):
            ext = Path(str(stem["key"])).suffix
            target = dest / f"{name}{ext}"
            self._download(urljoin(self.base_url + "/", str(stem["url"])), target)
            written[name] = target
            if progress is not None:
                progress((index + 1) / len(stems))
        return written

    def _download(self, url: str, target: Path) -> None:
        partial = target.with_name(f".{target.name}.part")
        # Presigned URLs carry their own authorization: send no bearer token to S3.
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0)) as plain,
                plain.stream("GET", url) as response,
            ):
                if response.status_code >= 400:
                    response.read()
                    raise ApiClientError(
                        f"downloading {target.name} failed: HTTP {response.status_code} "
                        f"{response.text[:200]}",
                        status=response.status_code,
                    )
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes(CHUNK):
                        out.write(chunk)
        except httpx.TransportError as exc:
            partial.unlink(missing_ok=True)
            raise ApiClientError(f"downloading {target.name} failed: {exc}") from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(target)

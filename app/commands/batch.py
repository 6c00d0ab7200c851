"""Submit files to the API, follow each job, and download its stems: the engine behind
`stemfleet separate` and `stemfleet process`.

Each file runs on its own thread (at most `concurrency` at once, so a big folder never floods
the per-user queue limit): upload → queued → running with percent → downloading → done, shown
on the file's progress line. Ctrl-C cancels the jobs already submitted, so nothing keeps running
for a command that is gone.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path

from app.client import ApiClient, ApiClientError, JobDict
from app.commands.common import reason_of
from app.commands.progress import ProgressBoard
from app.params import JobParams
from app.retry import fixed, hinted, retrying

DEFAULT_CONCURRENCY = 4
QUEUE_FULL_WAIT = 30.0
HEALTH_INTERVAL = 2.0


@dataclass(frozen=True)
class Item:
    name: str  # its progress line
    path: Path
    dest: Path  # the folder its stems go to
    sha256: str | None = None


@dataclass
class ItemResult:
    item: Item
    ok: bool
    reason: str = ""
    job_id: str | None = None
    stems: dict[str, Path] = field(default_factory=dict)


OnSuccess = Callable[[Item, JobDict, dict[str, Path]], None]
# Returns why no job can run (a worker that cannot start), or None while all is well.
HealthCheck = Callable[[], str | None]


def output_folders(paths: list[Path], out: Path) -> list[Path]:
    """`out/<file stem>` per input; a repeated stem gets `-2`, `-3`... so nothing is
    overwritten."""
    used: dict[str, int] = {}
    folders = []
    for path in paths:
        stem = path.stem or path.name
        used[stem] = used.get(stem, 0) + 1
        folders.append(out / (stem if used[stem] == 1 else f"{stem}-{used[stem]}"))
    return folders


@dataclass(eq=False)
class Batch:
    client: ApiClient
    params: JobParams
    board: ProgressBoard
    _: KW_ONLY
    kind: str = "separate"
    concurrency: int = DEFAULT_CONCURRENCY
    on_success: OnSuccess | None = None
    health: HealthCheck | None = None

    def __post_init__(self) -> None:
        self._fatal: str | None = None
        self._slots = threading.Semaphore(max(1, self.concurrency))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._submitted: dict[str, str] = {}  # item name -> job id, until the job is final

    def run(self, items: list[Item]) -> list[ItemResult]:
        results: dict[str, ItemResult] = {}
        threads = [
            threading.Thread(
                target=self._guarded, args=(item, results), name=f"file-{i}", daemon=True
            )
            for i, item in enumerate(items)
        ]
        for thread in threads:
            thread.start()
        checked = time.monotonic()
        try:
            for thread in threads:
                while thread.is_alive():  # a bounded join keeps Ctrl-C deliverable
                    thread.join(0.2)
                    if self.health and time.monotonic() - checked > HEALTH_INTERVAL:
                        checked = time.monotonic()
                        self._check_health(self.health)
        except KeyboardInterrupt:
            self._stop.set()
            cancelled = self.cancel_unfinished()
            self.board.close()
            print(f"interrupted: cancelled {len(cancelled)} submitted job(s)", file=sys.stderr)
            raise
        finally:
            self.board.close()
        return [results[item.name] for item in items]

    def _check_health(self, health: HealthCheck) -> None:
        if self._fatal is not None:
            return
        problem = health()
        if problem is not None:
            self._fatal = problem
            self._stop.set()
            self.cancel_unfinished()

    def cancel_unfinished(self) -> list[str]:
        with self._lock:
            pending = list(self._submitted.items())
        cancelled = []
        for name, job_id in pending:
            try:
                self.client.cancel(job_id)
                cancelled.append(job_id)
                self.board.update(name, "cancelled", note=f"job {job_id}")
            except ApiClientError:
                continue  # already final, or the server is gone
        return cancelled

    # --- one file --------------------------------------------------------------------------
    def _guarded(self, item: Item, results: dict[str, ItemResult]) -> None:
        with self._slots:
            if self._stop.is_set():
                results[item.name] = ItemResult(item, False, self._fatal or "interrupted")
                return
            try:
                result = self._one(item)
            except ApiClientError as exc:
                result = ItemResult(item, False, str(exc), self._submitted.get(item.name))
            except OSError as exc:
                result = ItemResult(item, False, f"{exc.strerror or exc}: {exc.filename or ''}")
            with self._lock:
                self._submitted.pop(item.name, None)
            if not result.ok:
                self.board.update(item.name, "failed", note=result.reason)
            results[item.name] = result

    def _one(self, item: Item) -> ItemResult:
        self.board.update(item.name, "uploading")
        job = self._submit(item)
        job_id = str(job["id"])
        reused = f"reused the stems of job {job_id}" if job.get("reused_from") else ""
        if reused:  # the same audio with the same options was separated (or queued) before
            self.board.update(item.name, "reused", note=f"{reused}: same audio and options")
        with self._lock:
            self._submitted[item.name] = job_id
        for job in self.client.follow(job_id):
            if self._stop.is_set() and job["status"] != "succeeded":
                return ItemResult(item, False, self._fatal or "interrupted", job_id)
            self._show(item, job)
        if job["status"] != "succeeded":
            return ItemResult(item, False, self._fatal or reason_of(job), job_id)
        self.board.update(item.name, "downloading", 1.0)
        stems = self.client.download_stems(
            job,
            item.dest,
            progress=lambda done: self.board.update(
                item.name, "downloading", 1.0, note=f"stems {done:.0%}"
            ),
        )
        if self.on_success is not None:
            self.on_success(item, job, stems)
        note = f"{len(stems)} stems in {item.dest}" + (f" ({reused})" if reused else "")
        self.board.update(item.name, "done", 1.0, note=note)
        return ItemResult(item, True, job_id=job_id, stems=stems)

    def _submit(self, item: Item) -> JobDict:
        """Submit the file; while the queue is full (429), wait what the API asks (else
        QUEUE_FULL_WAIT) and submit again, until a stop request."""

        def wait(seconds: float) -> None:
            note = f"queue full, retrying in {seconds:g}s"
            self.board.update(item.name, "waiting", note=note)
            self._stop.wait(seconds)

        return retrying(
            on=lambda exc: isinstance(exc, ApiClientError) and exc.status == 429,
            wait=hinted(
                lambda exc: getattr(exc, "retry_after", None) or None, fixed(QUEUE_FULL_WAIT)
            ),
            sleep=wait,
            until=self._stop,
            log=None,  # the file's progress line shows the wait
            event="queue_full_retry",
        )(self.client.submit_file, item.path, self.params, kind=self.kind)

    def _show(self, item: Item, job: JobDict) -> None:
        status = job["status"]
        if status == "queued":
            note = f"#{job['queue_position']} in queue" if job.get("queue_position") else ""
            self.board.update(item.name, "queued", note=note)
        elif status == "running":
            self.board.update(item.name, "running", float(job.get("progress") or 0.0))

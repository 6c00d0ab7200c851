"""The assertions at the end of a run, each returning the violations it found:

- nothing lost: every submitted job ended succeeded (with all its stems in storage) or failed
  with a reason; none vanished, none was cancelled (nobody cancelled any);
- nothing succeeded twice: no job was seen succeeded and later not succeeded, or succeeded in
  two attempts, and no user got two `job.succeeded` webhooks (different ids) for one job;
- nothing stuck: no job still queued or running once the system had been quiet long enough;
- every finished job's final webhook arrived (checked in `run`: it waits for them);
- no scratch files left behind by workers (killed ones included) once the system stopped.

And the kill-to-requeue times: from a SIGKILL to the first sight of its job no longer running
under the killed worker's attempt (queued again, claimed again, or finished).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from app.db import connect
from app.queue import Job, Queue
from app.storage import Storage
from chaos.faults import Kill
from chaos.observer import Seen
from chaos.receiver import WebhookReceiver

STEMS = 4  # drums, bass, other, vocals: every job asks for all of them


@dataclass(frozen=True)
class Violation:
    check: str  # lost | twice | stuck | told | scratch | component
    detail: str


def final_rows(database_url: str, job_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Job]:
    """The jobs' rows as the database holds them now (absent: no such row)."""
    queue = Queue()
    rows = {}
    with connect(database_url, application_name="chaos-checks") as conn:
        for job_id in job_ids:
            row = conn.execute("select id from public.jobs where id = %s", (job_id,)).fetchone()
            if row is not None:
                rows[job_id] = queue.get(conn, job_id)
    return rows


def nothing_lost(
    submitted: Sequence[uuid.UUID], rows: Mapping[uuid.UUID, Job], storage: Storage
) -> list[Violation]:
    found = []
    for job_id in submitted:
        job = rows.get(job_id)
        if job is None:
            found.append(Violation("lost", f"job {job_id}: accepted, then no row at all"))
        elif job.status == "succeeded":
            stems = dict((job.output or {}).get("stems") or {})
            missing = [key for key in stems.values() if not storage.exists(key)]
            if len(stems) != STEMS or missing:
                found.append(
                    Violation(
                        "lost",
                        f"job {job_id}: succeeded with {len(stems)} stems, "
                        f"missing in storage: {missing}",
                    )
                )
        elif job.status == "failed" and not (job.error or "").strip():
            found.append(Violation("lost", f"job {job_id}: failed without a reason"))
        elif job.status == "cancelled":
            found.append(Violation("lost", f"job {job_id}: cancelled, and nobody cancelled it"))
    return found


def nothing_twice(
    history: Mapping[uuid.UUID, Sequence[Seen]], receiver: WebhookReceiver
) -> list[Violation]:
    found = []
    for job_id, seen in history.items():
        successes = [s for s in seen if s.status == "succeeded"]
        if not successes:
            continue
        attempts = sorted({s.attempts for s in successes})
        first = seen.index(successes[0])
        after = [s.status for s in seen[first + 1 :] if s.status != "succeeded"]
        if len(attempts) > 1 or after:
            path = " -> ".join(f"{s.status}#{s.attempts}" for s in seen)
            found.append(
                Violation(
                    "twice",
                    f"job {job_id}: seen succeeded in attempts {attempts}, then "
                    f"{after or 'nothing else'} ({path})",
                )
            )
    for told_id, ids in sorted(receiver.told("job.succeeded").items()):
        if len(ids) > 1:
            found.append(
                Violation("twice", f"job {told_id}: {len(ids)} job.succeeded webhooks ({ids})")
            )
    return found


def nothing_stuck(stuck: Mapping[uuid.UUID, Job], quiet_s: float) -> list[Violation]:
    return [
        Violation(
            "stuck",
            f"job {job_id}: still {job.status} (attempt {job.attempts}/{job.max_attempts}) "
            f"after {quiet_s:.0f} s without any job changing",
        )
        for job_id, job in stuck.items()
    ]


def no_scratch_left(left: Sequence[Path], killed: set[uuid.UUID]) -> list[Violation]:
    found = []
    for path in left:
        owner = _worker_of(path)
        whose = "a killed worker" if owner in killed else "a worker that was not killed"
        files = sum(1 for p in path.rglob("*") if p.is_file()) if path.is_dir() else 1
        found.append(Violation("scratch", f"{path.name}: {files} files left by {whose}"))
    return found


def _worker_of(path: Path) -> uuid.UUID | None:
    try:
        return uuid.UUID(path.name.rsplit("-", 1)[-1])
    except ValueError:
        return None


def kill_to_requeue(
    history: Mapping[uuid.UUID, Sequence[Seen]], kills: Sequence[Kill]
) -> list[float | None]:
    """Seconds from each kill until its job was seen out of the killed attempt (None: never)."""
    times: list[float | None] = []
    for kill in kills:
        moved = next(
            (
                s.at - kill.at
                for s in history.get(kill.job_id, ())
                if s.at >= kill.at and (s.status != "running" or s.attempts != kill.attempt)
            ),
            None,
        )
        times.append(moved)
    return times

"""One chaos run: bring the system up, play the rounds, settle, check, print the figures.

A round submits a few short generated clips through the API (as a user would: multipart, an
idempotency key, half of them a callback_url; retried while the API answers 5xx), pulls one
fault from the deck (chaos.faults.DECK, in an order the seeded RNG shuffles), then waits for the
round's jobs to finish. A job that is still queued or running after the whole system has been
quiet (no job changed) for the lease + the reaper interval + the scaler interval + the workers'
boot time is stuck. At the end: every job settles, webhooks arrive, the system stops (workers
drain) and the checks run.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from app.client import ApiClient, ApiClientError
from app.db import connect
from app.params import JobParams
from app.queue import Job
from app.retry import fixed, hinted, retrying
from chaos import checks
from chaos.faults import DECK, FaultLog, Faults
from chaos.report import Outcome, print_figures
from chaos.system import WEBHOOK_REDELIVERY_S, ChaosSystem, Tuning
from scripts.sample_clip import RATE, song

SUBMIT_TRIES = 60  # about a minute of 5xx (Postgres down, storage failing) before giving up
Say = Callable[[str], None]


@dataclass(frozen=True)
class Config:
    rounds: int
    seed: int
    tuning: Tuning = field(default_factory=Tuning)
    deck: tuple[str, ...] = DECK  # the faults, each drawn once per deck
    keep: bool = False  # keep the run's folder (logs, database) even when it passed


@dataclass
class Submitted:
    ids: list[uuid.UUID] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # submissions never accepted, and why


def run(config: Config, say: Say = print) -> int:
    """0 when every check passed, 1 otherwise."""
    started = time.monotonic()
    rng = random.Random(config.seed)
    run_dir = Path(tempfile.mkdtemp(prefix="stemfleet-chaos-"))
    os.chmod(run_dir, 0o755)  # the postgres OS user must reach the cluster under it
    say(
        f"chaos: seed {config.seed} (CHAOS_SEED={config.seed} repeats it), {config.rounds} "
        f"rounds, {config.tuning.workers} workers, lease {config.tuning.lease:g} s; in {run_dir}"
    )
    log = FaultLog()
    submitted = Submitted()
    system = ChaosSystem(run_dir, config.tuning, seed=config.seed)
    with system:
        assert system.observer is not None and system.storage is not None
        boot_s = _wait_for_fleet(system)
        quiet_s = config.tuning.quiet_window + boot_s
        say(f"chaos: system up, {config.tuning.workers} workers booted in {boot_s:.1f} s")
        faults = Faults(system, rng, log)
        deck: list[str] = []
        played = 0
        api_url, token = system.api
        with ApiClient(api_url, token, timeout=30.0) as client:
            for number in range(1, config.rounds + 1):
                if not deck:
                    deck = list(config.deck)
                    rng.shuffle(deck)
                fault = deck.pop()
                ids = _submit_round(client, system, rng, submitted, run_dir, number)
                what = faults.inject(fault)
                left = _settle(system, ids, quiet_s, log)
                played = number
                say(
                    f"round {number}/{config.rounds}: {len(ids)} jobs; {what}; "
                    f"{'all finished' if not left else f'{len(left)} not finished'}"
                )
                dead = system.dead_component()
                if dead:
                    say(f"chaos: {dead} exited; stopping the rounds")
                    break
        left = _settle(system, submitted.ids, quiet_s, log)
        rows = checks.final_rows(system.database_url, submitted.ids)
        stuck = {job_id: rows[job_id] for job_id in left if job_id in rows}
        untold = _wait_for_webhooks(system, rows)
        dead = system.dead_component()
        history = {k: list(v) for k, v in system.observer.history.items()}
        violations = [
            *checks.nothing_lost(submitted.ids, rows, system.storage),
            *checks.nothing_twice(history, system.receiver),
            *checks.nothing_stuck(stuck, quiet_s),
        ]
        violations += [checks.Violation("told", line) for line in untold]
        if dead:
            violations.append(checks.Violation("component", f"{dead} exited during the run"))
    # stopped: the scaler drained its workers, which remove their own scratch folders
    violations += checks.no_scratch_left(system.scratch_left(), log.killed_workers)
    outcome = Outcome(
        seed=config.seed,
        rounds=played,
        rows=rows,
        refused=submitted.refused,
        log=log,
        requeue_s=checks.kill_to_requeue(history, log.kills),
        proxy_counts=dict(system.proxy.counts) if system.proxy else {},
        webhooks=len(system.receiver.deliveries),
        observer_disconnects=system.observer.disconnects,
        violations=violations,
        total_s=time.monotonic() - started,
        run_dir=run_dir,
    )
    print_figures(outcome, say)
    if not violations and not config.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 1 if violations else 0


def _wait_for_fleet(system: ChaosSystem) -> float:
    """Seconds until the scaler's floor has every worker registered and idle."""
    started = time.monotonic()
    deadline = started + 300
    while time.monotonic() < deadline:
        with connect(system.database_url, application_name="chaos") as conn:
            row = conn.execute(
                "select count(*) as n from public.workers where state = 'idle'"
            ).fetchone()
        if row and row["n"] >= system.tuning.workers:
            return time.monotonic() - started
        time.sleep(0.2)
    raise SystemExit(f"chaos: the workers did not start within 300 s; see {system.log_file}")


def _submit_round(
    client: ApiClient,
    system: ChaosSystem,
    rng: random.Random,
    submitted: Submitted,
    run_dir: Path,
    number: int,
) -> list[uuid.UUID]:
    assert system.observer is not None
    ids = []
    for index in range(rng.randint(2, 4)):
        clip = run_dir / "clips" / f"round{number:03d}-{index}.wav"
        clip.parent.mkdir(parents=True, exist_ok=True)
        seconds = rng.uniform(2.0, 5.0)
        sf.write(str(clip), song(seconds, seed=rng.randrange(1 << 30)), RATE, subtype="PCM_16")
        params = JobParams.model_validate({"shifts": rng.randint(1, 3)})
        # half with a webhook: a delivery's claim flushes the WAL, and a crash's window with it
        callback = system.receiver.callback_url if rng.random() < 0.5 else None
        job_id = _submit(client, clip, params, callback, submitted)
        clip.unlink()
        if job_id is not None:
            system.observer.track(job_id)
            submitted.ids.append(job_id)
            ids.append(job_id)
    return ids


def _submit(
    client: ApiClient, clip: Path, params: JobParams, callback: str | None, submitted: Submitted
) -> uuid.UUID | None:
    """The job's id once the API accepts it; retried (same idempotency key) on 5xx / no answer."""
    key = uuid.uuid4().hex
    try:
        job = retrying(
            on=lambda exc: (
                isinstance(exc, ApiClientError)
                and (not exc.status or exc.status >= 500 or exc.status == 429)
            ),
            wait=hinted(lambda exc: getattr(exc, "retry_after", None) or None, fixed(1.0)),
            sleep=time.sleep,
            attempts=SUBMIT_TRIES,
            log=None,  # the refusal is reported with the run
            event="chaos_submit_retry",
        )(client.submit_file, clip, params, callback_url=callback, idempotency_key=key)
    except ApiClientError as exc:
        submitted.refused.append(f"{clip.name}: {exc}")
        return None
    return uuid.UUID(str(job["id"]))


def _settle(
    system: ChaosSystem, ids: Sequence[uuid.UUID], quiet_s: float, log: FaultLog
) -> list[uuid.UUID]:
    """Wait until all `ids` are final; those left once nothing changed for `quiet_s`."""
    observer = system.observer
    assert observer is not None

    def unfinished() -> list[uuid.UUID]:
        return [
            job_id
            for job_id in ids
            if (seen := observer.last(job_id)) is None
            or seen.status not in ("succeeded", "failed", "cancelled")
        ]

    while True:
        if observer.wait_for(lambda: not unfinished(), 1.0):
            return []
        quiet_since = max(observer.last_change, log.last_fault_end)
        if time.monotonic() - quiet_since > quiet_s:
            return unfinished()


def _wait_for_webhooks(system: ChaosSystem, rows: dict[uuid.UUID, Job]) -> list[str]:
    """Until the receiver has the final event of every finished job (bounded by a redelivery);
    the jobs whose event did not come, with what the outbox says of it."""
    deadline = time.monotonic() + WEBHOOK_REDELIVERY_S
    expected = {
        (str(job.id), f"job.{job.status}")
        for job in rows.values()
        if job.is_final and job.callback_url
    }
    while True:
        missing = expected - {(d.job_id, d.event_type) for d in system.receiver.deliveries}
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    notes = []
    with connect(system.database_url, application_name="chaos") as conn:
        for job_id, event in sorted(missing):
            outbox = conn.execute(
                "select status::text, attempts, last_error from public.webhook_deliveries"
                " where job_id = %s and event_type = %s",
                (job_id, event),
            ).fetchall()
            notes.append(
                f"job {job_id}: no {event} webhook in {WEBHOOK_REDELIVERY_S:.0f} s; "
                f"outbox: {[tuple(r.values()) for r in outbox] or 'no delivery row'}"
            )
    return notes

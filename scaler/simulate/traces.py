"""Arrival traces for the simulator: the built-in day (seeded, with bursts) or a CSV."""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from app.errors import ConfigError
from app.queue import JobKind

# Relative arrival rate per hour of the day: quiet nights, a busy evening.
DAY_SHAPE = (
    0.3,
    0.2,
    0.15,
    0.1,
    0.1,
    0.15,
    0.3,
    0.5,
    0.8,
    1.0,
    1.1,
    1.2,
    1.2,
    1.1,
    1.1,
    1.2,
    1.4,
    1.6,
    1.8,
    2.0,
    1.9,
    1.5,
    1.0,
    0.6,
)


@dataclass(frozen=True, slots=True)
class Arrival:
    at_s: float  # seconds after the start of the trace
    audio_s: float
    kind: JobKind = "separate"


def builtin_day(
    seed: int = 1,
    *,
    jobs: int = 600,
    preview_share: float = 0.3,
    bursts: int = 3,
    burst_jobs: int = 150,
    hours: float = 24.0,
) -> list[Arrival]:
    """A day shaped like DAY_SHAPE with `jobs` arrivals spread by a Poisson process, plus
    `bursts` spikes of `burst_jobs` jobs each within two minutes (a link going viral)."""
    rng = random.Random(seed)
    total_weight = sum(DAY_SHAPE)
    arrivals: list[Arrival] = []

    def one(at: float) -> Arrival:
        if rng.random() < preview_share:
            return Arrival(at, 30.0, "preview")
        audio = min(1800.0, max(20.0, rng.lognormvariate(math.log(210.0), 0.5)))
        return Arrival(at, round(audio, 1), "separate")

    for hour in range(math.ceil(hours)):
        rate = jobs * DAY_SHAPE[hour % 24] / total_weight / 3600.0  # per second
        t = hour * 3600.0
        end = min((hour + 1) * 3600.0, hours * 3600.0)
        while rate > 0:
            t += rng.expovariate(rate)
            if t >= end:
                break
            arrivals.append(one(t))
    for _ in range(bursts):
        start = rng.uniform(0.3, 0.95) * hours * 3600.0
        for _ in range(burst_jobs):
            arrivals.append(one(start + rng.uniform(0.0, 120.0)))
    return sorted(arrivals, key=lambda a: (a.at_s, a.audio_s, a.kind))


def load_trace(path: Path) -> list[Arrival]:
    """CSV with a header: an arrival column (`arrival_s` seconds from the start, or `arrival`
    as seconds or an ISO timestamp), `audio_s` (or `audio_seconds`/`duration_s`), and an
    optional `kind` (separate | preview)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"--trace {path}: cannot read it: {exc}") from None
    rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise ConfigError(f"--trace {path}: no rows (expected a header and one row per job)")
    header = {h.strip().lower(): h for h in rows[0] if h}
    time_col = next((header[c] for c in ("arrival_s", "arrival", "t", "at") if c in header), None)
    audio_col = next(
        (header[c] for c in ("audio_s", "audio_seconds", "duration_s", "duration") if c in header),
        None,
    )
    if time_col is None or audio_col is None:
        raise ConfigError(
            f"--trace {path}: needs an arrival column (arrival_s or arrival) and an audio column "
            f"(audio_s); found {', '.join(header) or 'none'}"
        )
    kind_col = header.get("kind")
    times: list[float] = []
    parsed: list[tuple[float, float, JobKind]] = []
    origin: datetime | None = None
    for number, row in enumerate(rows, start=2):
        raw_t, raw_a = (row.get(time_col) or "").strip(), (row.get(audio_col) or "").strip()
        try:
            at = float(raw_t)
        except ValueError:
            try:
                stamp = datetime.fromisoformat(raw_t.replace("Z", "+00:00"))
            except ValueError:
                raise ConfigError(
                    f"--trace {path} line {number}: arrival {raw_t!r} is neither seconds nor "
                    "an ISO timestamp"
                ) from None
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=UTC)
            origin = origin or stamp
            at = (stamp - origin).total_seconds()
        try:
            audio = float(raw_a)
        except ValueError:
            raise ConfigError(
                f"--trace {path} line {number}: audio seconds {raw_a!r} is not a number"
            ) from None
        kind = (row.get(kind_col) or "separate").strip() if kind_col else "separate"
        if kind not in ("separate", "preview"):
            raise ConfigError(
                f"--trace {path} line {number}: kind {kind!r} (use separate or preview)"
            )
        if audio < 0:
            raise ConfigError(f"--trace {path} line {number}: negative audio seconds")
        times.append(at)
        parsed.append((at, audio, "preview" if kind == "preview" else "separate"))
    first = min(times)
    return sorted(
        (Arrival(at - first, audio, kind) for at, audio, kind in parsed),
        key=lambda a: (a.at_s, a.audio_s, a.kind),
    )

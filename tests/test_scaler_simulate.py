"""The simulator: traces, determinism, and the strategies compared on the same arrivals."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from app.errors import ConfigError
from scaler.simulate import (
    Arrival,
    SimModel,
    add_arguments,
    builtin_day,
    compare,
    load_trace,
    percentile,
    run_cli,
    simulate_always_on,
    simulate_policy,
)
from scaler.simulate.prices import RUNPOD_OFFERS, with_offer
from tests.scaler_support import PRICE, settings


def test_the_builtin_day_is_seeded_and_has_bursts() -> None:
    day = builtin_day(4, jobs=300, bursts=2, burst_jobs=100)
    assert day == builtin_day(4, jobs=300, bursts=2, burst_jobs=100)
    assert day != builtin_day(5, jobs=300, bursts=2, burst_jobs=100)
    assert 450 <= len(day) <= 560
    assert all(0 <= a.at_s < 86400 for a in day)
    assert {a.kind for a in day} == {"separate", "preview"}
    # a burst: 100 jobs within two minutes somewhere in the day
    times = [a.at_s for a in day]
    assert max(sum(1 for t in times if s <= t < s + 120) for s in times) >= 100


def test_a_csv_trace_in_seconds_or_timestamps(tmp_path: Path) -> None:
    seconds = tmp_path / "s.csv"
    seconds.write_text("arrival_s,audio_s,kind\n100,30,preview\n40,240,separate\n")
    assert load_trace(seconds) == [Arrival(0.0, 240.0), Arrival(60.0, 30.0, "preview")]
    stamps = tmp_path / "t.csv"
    stamps.write_text("arrival,audio_seconds\n2026-01-05T10:00:00Z,200\n2026-01-05T10:05:00Z,90\n")
    assert load_trace(stamps) == [Arrival(0.0, 200.0), Arrival(300.0, 90.0)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("when,len\n1,2\n", "needs an arrival column"),
        ("arrival_s,audio_s\nsoon,2\n", "neither seconds nor an ISO timestamp"),
        ("arrival_s,audio_s\n1,long\n", "is not a number"),
        ("arrival_s,audio_s,kind\n1,2,karaoke\n", "kind 'karaoke'"),
        ("arrival_s,audio_s\n", "no rows"),
    ],
)
def test_bad_traces_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_trace(path)


def test_percentiles() -> None:
    assert percentile([], 50) == 0
    assert percentile([5, 1, 3, 2, 4], 50) == 3
    assert percentile(list(range(1, 101)), 95) == 95


def test_strategies_compared_on_one_day() -> None:
    the_settings = settings(max_machines=4, min_machines=0)
    day = builtin_day(2, jobs=400, bursts=2, burst_jobs=120)
    results = compare(day, the_settings, SimModel(), always_on=4, seed=2)
    assert results == compare(day, the_settings, SimModel(), always_on=4, seed=2)
    policy, always_on, to_zero, serverless = results
    assert policy.violations == []
    assert all(r.done == r.jobs == len(day) for r in results)
    assert always_on.cost_usd == pytest.approx(4 * 24 * PRICE, rel=1e-3)
    assert policy.cost_usd < always_on.cost_usd / 2
    assert policy.peak_machines <= 4 and to_zero.peak_machines <= 4
    assert serverless.peak_machines > 4  # one container per waiting job
    assert serverless.p95 < policy.p95  # it pays for that in price per second
    assert always_on.p50 == 0


def test_a_tight_budget_is_kept_and_leaves_the_rest_queued() -> None:
    # 2,000 jobs at once, a $1 day: the policy stops starting machines, drains, and the day's
    # cost stays within the budget plus what the jobs running at that moment take to finish.
    the_settings = settings(max_machines=20, max_hourly_usd=100, daily_budget_usd=1.0)
    spike = [Arrival(60.0 + i * 0.01, 180.0) for i in range(2000)]
    result = simulate_policy(spike, the_settings, SimModel(drain_horizon_s=4 * 3600))
    assert result.violations == []
    assert result.done < result.jobs
    allowance = 20 * PRICE * (SimModel().service_s(spike[0]) + 30) / 3600
    assert result.daily_cost[0] <= 1.0 + allowance


def test_always_on_with_no_machines_finishes_nothing() -> None:
    result = simulate_always_on([Arrival(0, 10)], settings(), SimModel(drain_horizon_s=60), 0)
    assert (result.done, result.cost_usd, result.waits) == (0, 0, [])


def test_the_cli_prints_the_comparison(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_s,audio_s\n" + "".join(f"{i * 20},{120 + i}\n" for i in range(50)))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--trace", str(trace), "--always-on", "2", "--boot", "20s"])
    out = io.StringIO()
    assert run_cli(args, settings(), out=out, trace=trace) == 0
    text = out.getvalue()
    assert "50 jobs from" in text and "boot 20s" in text
    for name in (
        "policy (this scaler)",
        "always-on 2",
        "scale-to-zero (5m idle)",
        "serverless (per-second, 30s cold start)",
    ):
        assert name in text
    assert "wait p95" in text and "VIOLATION" not in text


def test_runpod_prices_the_pods_and_the_serverless_row_per_second(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_s,audio_s\n" + "".join(f"{i * 30},{150 + i}\n" for i in range(40)))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--trace", str(trace), "--always-on", "2", "--runpod", "community-a4000"]
    )
    out = io.StringIO()
    assert run_cli(args, settings(max_hourly_usd=1.0), out=out, trace=trace) == 0
    text = out.getvalue()
    assert "machine runpod-community-a4000 $0.1700/h" in text
    assert "serverless $0.00016/s" in text
    offer = RUNPOD_OFFERS["community-3090"]
    assert (offer.pod_hourly_usd, offer.serverless_usd_per_s) == (0.22, 0.00019)
    secure = RUNPOD_OFFERS["secure-3090"]
    the_settings = with_offer(settings(max_machines=2, max_hourly_usd=1.0), secure)
    day = load_trace(trace)
    model = SimModel(serverless_hourly_usd=secure.serverless_usd_per_s * 3600)
    _, always_on, _, serverless = compare(day, the_settings, model, always_on=2)
    assert always_on.cost_usd == pytest.approx(2 * 24 * 0.43, rel=1e-3)
    # billed per second of each container's life, at $0.00019/s
    assert serverless.cost_usd == pytest.approx(serverless.machine_hours * 3600 * 0.00019)
    overridden = with_offer(settings(), secure, pod_hourly_usd=0.5)
    assert overridden.machine_prices[secure.size] == 0.5

"""The one retry helper (app.retry): the policy's waits go to the injected sleep (nothing sleeps
here), the last failure is raised as itself, a stop request ends the retries, one log line per
retry."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import Iterator

import pytest

from app.log import configure, get_logger
from app.retry import async_retrying, exponential, fixed, hinted, jittered, retrying


@pytest.fixture
def logs(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    configure("INFO", json=True)
    yield capsys
    configure()  # back to the defaults for the tests that follow


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]


class Flaky:
    """Fails with the given exceptions in turn, then returns "done"."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"


def test_retries_with_the_policys_waits_and_logs_each_retry(
    logs: pytest.CaptureFixture[str],
) -> None:
    slept: list[float] = []
    flaky = Flaky(OSError("a"), OSError("b"), OSError("c"))
    result = retrying(
        on=OSError,
        wait=exponential(0.5, 1.5),
        sleep=slept.append,
        log=get_logger(),
        event="thing_retry",
        job_id="j1",
    )(flaky)
    lines = _lines(logs)
    assert result == "done" and flaky.calls == 4
    assert slept == [0.5, 1.0, 1.5]  # doubles, capped
    assert [(line["event"], line["attempt"], line["retry_in"]) for line in lines] == [
        ("thing_retry", 1, 0.5),
        ("thing_retry", 2, 1.0),
        ("thing_retry", 3, 1.5),
    ]
    assert lines[0]["error"] == "a" and lines[0]["job_id"] == "j1"
    assert lines[0]["level"] == "warning" and "exception" not in lines[0]


def test_the_last_failure_is_raised_as_itself_and_others_are_not_retried() -> None:
    slept: list[float] = []
    policy = retrying(
        on=OSError, wait=fixed(2.0), sleep=slept.append, log=None, event="x", attempts=3
    )
    flaky = Flaky(OSError("1"), OSError("2"), OSError("3"))
    with pytest.raises(OSError, match="3"):
        policy(flaky)
    assert flaky.calls == 3 and slept == [2.0, 2.0]

    other = Flaky(ValueError("not retried"))
    with pytest.raises(ValueError):
        policy(other)
    assert other.calls == 1


def test_a_predicate_chooses_what_is_retried() -> None:
    flaky = Flaky(OSError("busy"), OSError("gone"))
    with pytest.raises(OSError, match="gone"):
        retrying(
            on=lambda exc: str(exc) == "busy",
            wait=fixed(0),
            sleep=lambda s: None,
            log=None,
            event="x",
        )(flaky)
    assert flaky.calls == 2


def test_a_stop_request_ends_the_retries_even_during_a_wait() -> None:
    stop = threading.Event()
    flaky = Flaky(OSError("1"), OSError("2"))

    def wait(seconds: float) -> None:
        stop.set()  # the stop comes while waiting to try again

    with pytest.raises(OSError, match="1"):
        retrying(on=OSError, wait=fixed(5), sleep=wait, until=stop, log=None, event="x")(flaky)
    assert flaky.calls == 1  # no try after the stop

    already = Flaky(OSError("1"))
    with pytest.raises(OSError):
        retrying(on=OSError, wait=fixed(5), sleep=wait, until=stop, log=None, event="x")(already)
    assert already.calls == 1


def test_a_reused_policy_starts_afresh_on_each_call() -> None:
    slept: list[float] = []
    policy = retrying(on=OSError, wait=exponential(1, 60), sleep=slept.append, log=None, event="x")
    policy(Flaky(OSError(), OSError()))
    policy(Flaky(OSError()))
    assert slept == [1, 2, 1]


def test_hinted_waits_what_the_failure_asks_else_the_fallback() -> None:
    class Busy(Exception):
        def __init__(self, after: float | None) -> None:
            self.after = after

    slept: list[float] = []
    retrying(
        on=Busy,
        wait=hinted(lambda exc: getattr(exc, "after", None), fixed(30)),
        sleep=slept.append,
        log=None,
        event="x",
    )(Flaky(Busy(7), Busy(None)))
    assert slept == [7, 30]


def test_jittered_is_half_to_all_of_the_exponential_from_the_given_random_source() -> None:
    def waits(seed: int) -> list[float]:
        slept: list[float] = []
        jitter = jittered(0.5, 30.0, random.Random(seed))
        retrying(on=OSError, wait=jitter, sleep=slept.append, log=None, event="x")(
            Flaky(*[OSError()] * 8)
        )
        return slept

    slept = waits(7)
    ceilings = [min(30.0, 0.5 * 2**n) for n in range(8)]
    assert all(c / 2 <= s <= c for s, c in zip(slept, ceilings, strict=True))
    assert waits(7) == slept  # deterministic under a seed


def test_the_traceback_is_logged_only_where_asked(logs: pytest.CaptureFixture[str]) -> None:
    retrying(
        on=Exception,
        wait=fixed(0),
        sleep=lambda s: None,
        log=get_logger(),
        event="loop_retry",
        traceback=lambda exc: not isinstance(exc, OSError),
    )(Flaky(OSError("expected"), KeyError("a bug")))
    lines = _lines(logs)
    assert "exception" not in lines[0]
    assert "KeyError: 'a bug'" in str(lines[1]["exception"])


def test_the_async_twin_awaits_the_injected_sleep() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def main() -> str:
        flaky = Flaky(OSError(), OSError())
        async for attempt in async_retrying(
            on=OSError, wait=exponential(0.1, 5.0), sleep=sleep, log=None, event="x"
        ):
            with attempt:
                return flaky()
        raise AssertionError("unreachable")

    assert asyncio.run(main()) == "done"
    assert slept == [0.1, 0.2]

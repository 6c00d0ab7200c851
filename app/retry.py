"""The one way to retry: tenacity, with the sleep injected and the policy named where it is used.

    for attempt in retrying(on=psycopg.OperationalError, wait=exponential(0.5, 30.0),
                            sleep=lambda s: clock.wait(stop, s), log=log, event="x_retry"):
        with attempt:
            ...

`sleep` is whatever waits in that place: an injected clock's `wait(stop, s)` (a fake clock moves
instead of sleeping, a stop request cuts the wait short), an event's `wait`, or a recorder in a
test; nothing here calls `time.sleep`. Every retry logs one line, `event`, with the attempt, the
wait ahead (`retry_in`) and the error (unless `log` is None: a command line that shows the wait
its own way). The last failure is raised as itself (never tenacity's
RetryError).

- `on`: the exceptions that are retried, or a predicate on the exception.
- `wait`: `exponential(first, cap)`, `jittered(first, cap, rng)`, `fixed(s)`, or `hinted(hint,
  otherwise)` for a wait the failure itself asks for (a Retry-After).
- `attempts`: how many tries in all (None: no limit); `until`: an event that ends the retries
  (a stop request): once it is set, no further try is made (not even after a wait it cut
  short) and the last failure is raised. With neither, it retries until the call succeeds.
"""

from __future__ import annotations

import random
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    stop_when_event_set,
    wait_exponential,
    wait_fixed,
)
from tenacity.stop import stop_base

Sleep = Callable[[float], object]
AsyncSleep = Callable[[float], Awaitable[None]]
Wait = Callable[[RetryCallState], float]
Retried = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


def exponential(first: float, cap: float) -> Wait:
    """first, 2 x first, 4 x first... never more than cap."""
    return wait_exponential(multiplier=first, max=cap)


def fixed(seconds: float) -> Wait:
    return wait_fixed(seconds)


def backoff_delay(attempt: int, rng: random.Random, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with jitter: base * 2^attempt capped, then 50-100% of it."""
    delay = min(cap, base * 2**attempt)
    return delay * (0.5 + rng.random() / 2)


def jittered(first: float, cap: float, rng: random.Random) -> Wait:
    """`exponential`, then 50-100% of it, drawn from `rng` (seeded in tests)."""
    return lambda state: backoff_delay(state.attempt_number - 1, rng, first, cap)


def hinted(hint: Callable[[BaseException], float | None], otherwise: Wait) -> Wait:
    """The wait the failure asks for (`hint(exc)`, e.g. its Retry-After), else `otherwise`."""

    def wait(state: RetryCallState) -> float:
        exc = failure(state)
        asked = hint(exc) if exc is not None else None
        return asked if asked is not None else otherwise(state)

    return wait


def failure(state: RetryCallState) -> BaseException | None:
    """The exception of the attempt that just failed."""
    return state.outcome.exception() if state.outcome is not None else None


def retrying(*, sleep: Sleep, **policy: Any) -> Retrying:
    """A tenacity `Retrying` (iterate it, or call it with the function and its arguments);
    `policy`: the keywords of `_policy`."""

    def nap(seconds: float) -> None:  # what the sleep returns (an event wait's bool) is ignored
        sleep(seconds)

    return Retrying(sleep=nap, **_policy(**policy))


def async_retrying(*, sleep: AsyncSleep, **policy: Any) -> AsyncRetrying:
    """`retrying` for a coroutine (iterate it with `async for`)."""
    return AsyncRetrying(sleep=sleep, **_policy(**policy))


def _policy(
    *,
    on: Retried,
    wait: Wait,
    log: Any | None,
    event: str,
    attempts: int | None = None,
    until: threading.Event | None = None,
    traceback: Callable[[BaseException], bool] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """`traceback(exc)`: whether the retry's log line carries the traceback; `fields` join it."""
    if isinstance(on, type | tuple):
        types = on
        retried: Callable[[BaseException], bool] = lambda exc: isinstance(exc, types)  # noqa: E731
    else:
        retried = on
    stop: stop_base = stop_never
    if attempts is not None:
        stop = stop_after_attempt(attempts)
    if until is not None:
        stop = stop | stop_when_event_set(until)

    failed: weakref.WeakKeyDictionary[RetryCallState, BaseException] = weakref.WeakKeyDictionary()

    def before(state: RetryCallState) -> None:
        last = failed.pop(state, None)
        if until is not None and until.is_set() and last is not None:
            raise last  # the stop came while waiting to try again

    def before_sleep(state: RetryCallState) -> None:
        exc = failure(state)
        if exc is not None:
            failed[state] = exc
        if log is None:
            return
        extra = dict(fields)
        if exc is not None and traceback is not None and traceback(exc):
            extra["exc_info"] = exc
        log.warning(
            event,
            attempt=state.attempt_number,
            retry_in=round(state.upcoming_sleep, 3),
            error=str(exc),
            **extra,
        )

    return {
        "retry": retry_if_exception(retried),
        "wait": wait,
        "stop": stop,
        "before": before,
        "before_sleep": before_sleep,
        "reraise": True,
    }

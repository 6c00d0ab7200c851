"""The HTTP rules every cloud provider shares: throttling, backoff, and never resending a create.

`ApiClient.request()` sends one API call through httpx:

- **Throttle**: a token bucket per (action, key) (e.g. ("start", machine id)): about `rate`
  requests per second, `burst` saved up, as the clouds ask.
- **Retry an idempotent call** (list, start, stop, wait, destroy...) on 429, 5xx and transport
  errors, up to `max_retries` times, with exponential backoff and jitter, honouring `Retry-After`
  (seconds or an HTTP date) or an IETF `RateLimit`/`RateLimit-Reset` reset time (`app.retry`,
  with the injected sleep, clock and random source, so tests never sleep). A `RateLimit` window
  with no requests left holds every request back until its reset, so the quota is kept, not hit.
- **Never resend a create that may have been processed**: a create (`creates=True`) is retried
  only when it surely was not: a 429, or a connection that was never made. A 5xx, a timeout or a
  connection broken after the request went out raise `ProviderError(kind="unknown_outcome")`:
  the machine may exist. The provider then looks for it by the create's unique name and adopts
  it; the next list sees it anyway.

Any other answer (2xx, 4xx) is returned for the provider to read.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypedDict, Unpack

import httpx

from app.clock import Clock, SystemClock
from app.log import get_logger
from app.retry import Sleep, hinted, jittered, retrying
from app.retry import backoff_delay as backoff_delay  # the providers' and tests' name for it
from scaler.providers.base import ProviderError

MAX_RETRY_AFTER = 120.0
# The request surely never reached the server: safe to resend even a create.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
_PARAM = re.compile(r"(\w+)=(\d+(?:\.\d+)?)")


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up. `take` reserves a token and returns
    how long to wait before using it (0 when one is there)."""

    def __init__(self, rate: float, burst: int, monotonic: Callable[[], float]) -> None:
        self.rate, self.burst, self._monotonic = rate, float(burst), monotonic
        self.tokens = float(burst)
        self.at = monotonic()

    def take(self) -> float:
        now = self._monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Retry-After as delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - now).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def exhausted_for(value: str | None) -> float | None:
    """Seconds until a rate-limit window with no requests left resets, from an IETF RateLimit
    header: one member per window, `"minute";r=0;t=12, "hour";r=2800;t=1812` (r requests
    remaining, t seconds to its reset), or the older `limit=10, remaining=0, reset=5`. None
    when every window has requests left."""
    text = value or ""
    waits = []
    for member in [text] if "remaining=" in text else text.split(","):
        params = dict(_PARAM.findall(member))
        left, reset = params.get("r", params.get("remaining")), params.get("t", params.get("reset"))
        if left is not None and reset is not None and float(left) <= 0:
            waits.append(min(float(reset), MAX_RETRY_AFTER))
    return max(waits) if waits else None


def wait_hint(headers: Mapping[str, str], now: datetime) -> float | None:
    """How long the server asks us to wait: Retry-After, else `RateLimit-Reset`, else the
    reset of an exhausted window in an IETF RateLimit header (exhausted_for)."""
    after = retry_after_seconds(headers.get("Retry-After"), now)
    if after is not None:
        return after
    reset = retry_after_seconds(headers.get("RateLimit-Reset"), now)
    return reset if reset is not None else exhausted_for(headers.get("RateLimit"))


@dataclass(eq=False)
class _Retryable(Exception):
    """One failed try that may be retried: carries what the final error needs."""

    reason: str
    _: KW_ONLY
    kind: str
    status: int | None = None
    hint: float | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        super().__init__(self.reason)


class HttpOptions(TypedDict, total=False):
    """What a provider passes through to its ApiClient: the httpx client, the injected clock,
    sleep and random source, and the throttle (`rate` requests a second, `burst` saved up)."""

    client: httpx.Client | None
    clock: Clock | None
    sleep: Sleep | None
    rng: random.Random | None
    rate: float
    burst: int


class ApiClient:
    def __init__(
        self,
        provider: str,
        base_url: str,
        headers: Mapping[str, str],
        *,
        max_retries: int,
        error_text: Callable[[httpx.Response], str] | None = None,
        **options: Unpack[HttpOptions],
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers)
        self.max_retries = max_retries
        self.clock = options.get("clock") or SystemClock()
        self.sleep: Sleep = options.get("sleep") or time.sleep
        self.rng = options.get("rng") or random.Random()
        self.rate, self.burst = options.get("rate", 1.0), options.get("burst", 3)
        self.error_text = error_text or response_text
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._not_before = 0.0  # monotonic: a RateLimit window had no requests left until then
        self._client = options.get("client") or httpx.Client(
            timeout=httpx.Timeout(30.0, connect=10.0)
        )
        self.log = get_logger(provider=provider)

    def close(self) -> None:
        self._client.close()

    def raise_for(self, response: httpx.Response, what: str) -> None:
        """A ProviderError for an error answer (kind not_found for 404, else rejected)."""
        if response.status_code < 400:
            return
        raise ProviderError(
            f"{self.provider} API could not {what}: HTTP {response.status_code}: "
            f"{self.error_text(response)}",
            kind="not_found" if response.status_code == 404 else "rejected",
            status=response.status_code,
        )

    def _throttle(self, action: str, key: str) -> None:
        bucket = self._buckets.get((action, key))
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, self.clock.monotonic)
            self._buckets[(action, key)] = bucket
        delay = max(bucket.take(), self._not_before - self.clock.monotonic())
        if delay > 0:
            self.sleep(delay)

    def request(
        self,
        method: str,
        path: str,
        *,
        action: str,
        key: str,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        creates: bool = False,
    ) -> httpx.Response:
        """Send `method path`; see the module doc for what is retried. Returns any answer that
        is not retried; raises ProviderError when the tries run out or a create's outcome is
        unknown."""
        what = f"{self.provider} API {method} {path}"

        def once() -> httpx.Response:
            self._throttle(action, key)
            try:
                response = self._client.request(
                    method,
                    self.base_url + path,
                    json=json,
                    params=params,
                    headers=self.headers,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except NOT_SENT as exc:
                raise _Retryable(type(exc).__name__, kind="unreachable", detail=str(exc)) from exc
            except httpx.TransportError as exc:
                if creates:
                    raise _unknown(what, type(exc).__name__) from exc
                raise _Retryable(type(exc).__name__, kind="unreachable", detail=str(exc)) from exc
            status = response.status_code
            exhausted = exhausted_for(response.headers.get("RateLimit"))
            if exhausted is not None:  # respect the quota before it answers 429
                self._not_before = self.clock.monotonic() + exhausted
            if status == 429 or (status >= 500 and not creates):
                raise _Retryable(
                    f"HTTP {status}",
                    kind="rate_limited" if status == 429 else "server_error",
                    status=status,
                    hint=wait_hint(response.headers, self.clock.now()),
                    detail=self.error_text(response),
                )
            if status >= 500:
                raise _unknown(what, f"HTTP {status}: {self.error_text(response)}")
            return response

        policy = retrying(
            on=_Retryable,
            wait=hinted(_hint, jittered(0.5, 30.0, self.rng)),
            sleep=self.sleep,
            attempts=self.max_retries + 1,
            log=self.log,
            event="provider_api_retry",
            action=action,
            key=key,
        )
        try:
            return policy(once)
        except _Retryable as exc:
            tries = self.max_retries + 1
            where = f" at {self.base_url}" if exc.kind == "unreachable" else ""
            raise ProviderError(
                f"{what}{where}: {exc.reason} after {tries} tries: {exc.detail}",
                kind=exc.kind,
                status=exc.status,
            ) from exc


def _hint(exc: BaseException) -> float | None:
    return exc.hint if isinstance(exc, _Retryable) else None


def _unknown(what: str, why: str) -> ProviderError:
    return ProviderError(
        f"{what}: {why}; the machine may have been made, so the create is not sent again "
        "(the next list shows it if it was)",
        kind="unknown_outcome",
    )


def response_text(response: httpx.Response) -> str:
    """A short description of an error answer: its JSON `error`/`detail`/`message`, else text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict):
        for name in ("error", "detail", "message"):
            if body.get(name):
                status = body.get("status")
                return f"{body[name]}" + (f" ({status})" if isinstance(status, str) else "")
    return str(body)[:300]

"""A fault-injecting HTTP proxy on loopback, in front of an S3 endpoint (moto's server).

Every component (API, workers) reaches storage through it. On demand it answers `500
InternalError` (the S3 error body, as S3 answers a server fault) to all or a fraction of the
requests, or holds each request for a while before forwarding it; `heal()` goes back to passing
everything through untouched and lets the requests it holds go on. Requests are forwarded whole
(a chunked body is re-sent with a Content-Length) to the upstream over a new connection, the
client's Host header kept so a signed request stays as it was signed.
"""

from __future__ import annotations

import http.client
import random
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from chaos.loopback import HOP_BY_HOP, LoopbackServer, QuietHandler

Mode = Literal["pass", "fail", "stall"]
UPSTREAM_TIMEOUT = 120.0
S3_INTERNAL_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message>"
    b"<RequestId>chaos-proxy</RequestId></Error>"
)


@dataclass(frozen=True)
class Fault:
    mode: Mode = "pass"
    fail_rate: float = 1.0  # "fail": the fraction of requests answered 500
    stall_s: float = 0.0  # "stall": how long each request is held before it is forwarded


class ProxyHandler(QuietHandler):
    def _handle(self) -> None:
        proxy: FaultProxy = self.owner
        body = self.read_body()
        action = proxy.decide()
        if action == "fail":
            self.reply(500, S3_INTERNAL_ERROR, "application/xml")
            return
        if action == "stall":
            proxy.hold()
        self._forward(proxy, body)

    def _forward(self, proxy: FaultProxy, body: bytes) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers.pop("Content-Length", None)
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(
            proxy.upstream_host, proxy.upstream_port, timeout=UPSTREAM_TIMEOUT
        )
        try:
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP | {"content-length", "server", "date"}:
                    self.send_header(key, value)
            length = response.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            upstream.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle


class FaultProxy(LoopbackServer):
    """The proxy; `url` is what the components use as their S3 endpoint."""

    def __init__(self, upstream: str, *, seed: int = 0) -> None:
        super().__init__(ProxyHandler, "chaos-storage-proxy")
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.counts: Counter[str] = Counter()  # forwarded / failed / stalled requests
        self._fault = Fault()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._release = threading.Event()  # set by heal() and stop(): held requests go on

    @property
    def fault(self) -> Fault:
        return self._fault

    def fail(self, rate: float = 1.0) -> None:
        """Answer 500 to each request with probability `rate` until heal()."""
        self._set(Fault("fail", fail_rate=rate))

    def stall(self, seconds: float) -> None:
        """Hold each request `seconds` before forwarding it, until heal()."""
        self._set(Fault("stall", stall_s=seconds))

    def heal(self) -> None:
        """Pass everything through again; requests being held go on at once."""
        with self._lock:
            self._fault = Fault()
            self._release.set()
            self._release = threading.Event()

    def _set(self, fault: Fault) -> None:
        with self._lock:
            self._fault = fault

    def decide(self) -> Mode:
        with self._lock:
            fault = self._fault
            if fault.mode == "fail" and self._rng.random() >= fault.fail_rate:
                action: Mode = "pass"
            else:
                action = fault.mode
            self.counts["failed" if action == "fail" else "forwarded"] += 1
            if action == "stall":
                self.counts["stalled"] += 1
        return action

    def hold(self) -> None:
        """Hold the calling request for the current stall, or until heal() or stop()."""
        with self._lock:
            release, seconds = self._release, self._fault.stall_s
        release.wait(seconds)

    def stop(self) -> None:
        self.heal()
        super().stop()

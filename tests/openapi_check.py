"""Checks requests and answers against a published OpenAPI 3.0 spec, for the fake cloud APIs
the scaler tests talk to. Stricter than the spec: an object schema that lists its properties
rejects others, so a misspelt field fails here instead of being ignored by the real API."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from openapi_schema_validator import OAS30Validator


def strict(node: Any) -> Any:
    """additionalProperties: false on every object schema that lists its properties."""
    if isinstance(node, dict):
        out = {k: strict(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [strict(v) for v in node]
    return node


@dataclass
class Operation:
    method: str
    template: str
    regex: re.Pattern[str]
    op: dict[str, Any]


class SpecChecker:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.components = strict(spec["components"])
        self.operations = self._operations()

    def find(self, method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
        """The operation `method path` (path relative to the spec's server) and its path
        parameters, or None when the spec has no such operation."""
        for op in self.operations:
            match = op.regex.match(path)
            if match and op.method == method:
                return op, match.groupdict()
        return None

    def response_problems(self, op: Operation, status: int, payload: Any) -> list[str]:
        content = op.op["responses"].get(str(status), {}).get("content", {})
        schema = content.get("application/json", {})
        if "schema" not in schema:
            return []
        return self._check(schema["schema"], payload, f"{op.op['operationId']} response")

    def _operations(self) -> list[Operation]:
        ops = []
        for template, item in self.spec["paths"].items():
            pattern = re.sub(r"\{([^}]+)\}", r"(?P<\1>[^/]+)", template)
            for method, op in item.items():
                ops.append(Operation(method, template, re.compile(f"^{pattern}$"), op))
        return ops

    def _validator(self, schema: dict[str, Any]) -> OAS30Validator:
        return OAS30Validator({**strict(schema), "components": self.components})

    def _check(self, schema: dict[str, Any], value: Any, what: str) -> list[str]:
        return [f"{what}: {e.message}" for e in self._validator(schema).iter_errors(value)]

    def request_problems(
        self, op: Operation, params: dict[str, str], query: dict[str, str], body: Any
    ) -> list[str]:
        problems = []
        declared = {p["name"]: p for p in op.op.get("parameters", [])}
        for key, value in query.items():
            param = declared.get(key)
            if param is None or param["in"] != "query":
                problems.append(f"query parameter {key!r} is not in the spec")
                continue
            problems += self._check(param["schema"], _coerce(value, param["schema"]), key)
        for param in declared.values():
            if param.get("required") and param["in"] == "query" and param["name"] not in query:
                problems.append(f"missing required query parameter {param['name']!r}")
        request = op.op.get("requestBody")
        if request is None:
            if body is not None:
                problems.append("this operation takes no body")
        elif body is None:
            if request.get("required"):
                problems.append("a body is required")
        else:
            schema = request["content"]["application/json"]["schema"]
            problems += self._check(schema, body, "body")
        return problems


def _coerce(value: str, schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    if kind == "integer":
        try:
            return int(value)
        except ValueError:
            return value
    if kind == "boolean":
        return {"true": True, "false": False}.get(value, value)
    return value


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 handing every request to `_serve(handler, method)`."""

    _server: ThreadingHTTPServer | None = None

    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        raise NotImplementedError

    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake._serve(self, "get")

            def do_POST(self) -> None:
                fake._serve(self, "post")

            def do_DELETE(self) -> None:
                fake._serve(self, "delete")

            def do_PUT(self) -> None:
                fake._serve(self, "put")

            def do_PATCH(self) -> None:
                fake._serve(self, "patch")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # polled every 50 ms: stop() waits for the next poll (0.5 s by default, each fake)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self.url

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

"""Checking HTTP requests and responses against a published OpenAPI 3.1 spec, for the fake
cloud servers of the test suite (tests/fake_runpod.py), and the loopback HTTP server they share.

`OpenApiSpec` matches a request to its operation and lists every way it breaks the spec: an
unknown path or method, a path or query parameter of the wrong type, a query parameter the spec
does not declare, a body that does not fit the schema. It is stricter than the spec in one way:
an object schema that lists its properties rejects any other property (with
`unevaluatedProperties: false`, placed on the outermost schema so that `allOf` compositions keep
working), so a misspelt field fails in the test instead of being ignored by the cloud.
`$ref`s are inlined once at load (the spec must have no recursive references), and `allOf`s of
plain object schemas merged, which validates several times faster.

`LoopbackServer` is real HTTP on 127.0.0.1 in a daemon thread; each request is handed to a
callback that returns a `Reply` (or `Reply.drop()`: the connection is closed with no answer).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from openapi_schema_validator import OAS31Validator, oas31_format_checker

_COMPOSITION = ("allOf", "anyOf", "oneOf")
_NO_STRICTNESS = ("not", "if", "then", "else")


def _inline(node: Any, root: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = root
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            resolved = _inline(target, root)
            rest = {k: _inline(v, root) for k, v in node.items() if k != "$ref"}
            if not rest:
                return resolved
            return {"allOf": [resolved], **rest}
        return {k: _inline(v, root) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, root) for v in node]
    return node


_MERGEABLE = {"type", "properties", "required", "description", "title", "examples", "example"}


def flatten(node: Any) -> Any:
    """allOf of plain object schemas merged into one object (validating the inlined Pod schema
    gets 5x faster); equivalent, since only properties, required and annotations merge."""
    if isinstance(node, list):
        return [flatten(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: flatten(v) for k, v in node.items()}
    members = node.get("allOf")
    if not members or not all(isinstance(m, dict) and set(m) <= _MERGEABLE for m in members):
        return node
    types = {m.get("type", "object") for m in [node, *members]}
    if types != {"object"}:
        return node
    props: dict[str, Any] = dict(node.get("properties", {}))
    for m in members:
        for k, v in m.get("properties", {}).items():
            props[k] = {"allOf": [props[k], v]} if k in props else v
    out = {k: v for k, v in node.items() if k != "allOf"}
    out["type"] = "object"
    out["properties"] = props
    required = [r for m in [node, *members] for r in m.get("required", [])]
    if required:
        out["required"] = list(dict.fromkeys(required))
    return out


def _declares_properties(node: Any) -> bool:
    if not isinstance(node, dict):
        return False
    if "properties" in node:
        return True
    return any(_declares_properties(m) for k in _COMPOSITION for m in node.get(k, []))


def strict(node: Any, *, member: bool = False) -> Any:
    """`unevaluatedProperties: false` on every outermost schema that declares its properties
    (directly or through allOf/anyOf/oneOf) and says nothing about other properties."""
    if isinstance(node, list):
        return [strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _COMPOSITION:
            out[key] = [strict(v, member=True) for v in value]
        elif key in _NO_STRICTNESS:
            out[key] = strict(value, member=True)
        elif key in ("properties", "patternProperties", "$defs"):
            out[key] = {k: strict(v) for k, v in value.items()}
        else:
            out[key] = strict(value)
    open_ended = "additionalProperties" in node or "unevaluatedProperties" in node
    if not member and not open_ended and _declares_properties(node):
        out["unevaluatedProperties"] = False
    return out


@dataclass
class Operation:
    method: str
    template: str
    regex: re.Pattern[str]
    operation_id: str
    parameters: list[dict[str, Any]]
    request_schema: dict[str, Any] | None
    request_required: bool
    responses: dict[str, Any]


class OpenApiSpec:
    def __init__(self, path: Path) -> None:
        raw: dict[str, Any] = json.loads(path.read_text())
        if not str(raw.get("openapi", "")).startswith("3.1"):
            raise ValueError(f"{path.name} is OpenAPI {raw.get('openapi')}, not 3.1")
        self.raw = raw
        self._response_schemas: dict[tuple[str, str, str | None], dict[str, Any]] = {}
        self.operations: list[Operation] = []
        for template, item in raw["paths"].items():
            shared = item.get("parameters", [])
            pattern = re.sub(r"\{([^}]+)\}", r"(?P<\1>[^/]+)", template)
            for method, op in item.items():
                if method == "parameters":
                    continue
                params = flatten(_inline(shared + op.get("parameters", []), raw))
                body = flatten(_inline(op.get("requestBody"), raw))
                schema = (
                    None if body is None else strict(body["content"]["application/json"]["schema"])
                )
                self.operations.append(
                    Operation(
                        method=method.upper(),
                        template=template,
                        regex=re.compile(f"^{pattern}$"),
                        operation_id=op["operationId"],
                        parameters=[{**p, "schema": strict(p["schema"])} for p in params],
                        request_schema=schema,
                        request_required=bool(body and body.get("required")),
                        responses=flatten(_inline(op["responses"], raw)),
                    )
                )

    def match(self, method: str, path: str) -> tuple[Operation, dict[str, str]] | list[str]:
        """The operation and its path parameters, or the methods the path allows (empty when
        the path is not in the spec). A literal segment beats a template one."""
        found = [
            (op, {k: unquote(v) for k, v in m.groupdict().items()})
            for op in self.operations
            if (m := op.regex.match(path))
        ]
        found.sort(key=lambda f: len(f[1]))
        for op, params in found:
            if op.method == method:
                return op, params
        fewest = min((len(p) for _, p in found), default=0)
        return sorted({op.method for op, p in found if len(p) == fewest})

    def check_request(
        self,
        op: Operation,
        path_params: dict[str, str],
        raw_query: str,
        body: Any,
        content_type: str | None,
    ) -> tuple[dict[str, Any], list[str]]:
        """The typed query parameters and every way the request breaks the spec."""
        problems: list[str] = []
        query: dict[str, Any] = {}
        declared = {(p["in"], p["name"]): p for p in op.parameters}
        for name, value in path_params.items():
            problems += check(declared[("path", name)]["schema"], value, f"path parameter {name}")
        for name, values in parse_qs(raw_query, keep_blank_values=True).items():
            param = declared.get(("query", name))
            if param is None:
                problems.append(f"query parameter {name!r} is not in the spec")
                continue
            value = _query_value(param, values)
            problems += check(param["schema"], value, f"query parameter {name}")
            query[name] = value
        for (where, name), param in declared.items():
            if where == "query" and param.get("required") and name not in query:
                problems.append(f"missing required query parameter {name!r}")
        if op.request_schema is None:
            if body is not None:
                problems.append("this operation takes no body")
        elif body is None:
            if op.request_required:
                problems.append("a JSON body is required")
        else:
            if (content_type or "").split(";")[0].strip() != "application/json":
                problems.append(f"body sent as {content_type!r}, not application/json")
            problems += check(op.request_schema, body, "body")
        return query, problems

    def check_response(
        self, op: Operation, status: int, body: Any, content_type: str | None
    ) -> list[str]:
        response = op.responses.get(str(status)) or op.responses.get("default")
        if response is None:
            return [f"{op.operation_id} has no response {status} in the spec"]
        content = response.get("content")
        if not content:
            return [] if body is None else [f"{op.operation_id} {status} has no body in the spec"]
        media = content.get(content_type or "")
        if media is None:
            return [f"{op.operation_id} {status} is not sent as {content_type!r}"]
        key = (op.operation_id, str(status), content_type)
        if key not in self._response_schemas:
            self._response_schemas[key] = strict(media["schema"])
        return check(self._response_schemas[key], body, f"{op.operation_id} {status} response")


def check(schema: dict[str, Any], value: Any, what: str) -> list[str]:
    validator = OAS31Validator(schema, format_checker=oas31_format_checker)
    errors = sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.path)))
    paths = [tuple(e.absolute_path) for e in errors]
    # A property whose value fails is not "evaluated": the enclosing object's
    # unevaluatedProperties error then only repeats the deeper one.
    return [
        f"{what}: {'/'.join(map(str, path)) or '$'}: {e.message}"
        for e, path in zip(errors, paths, strict=True)
        if not (
            e.validator == "unevaluatedProperties"
            and any(len(p) > len(path) and p[: len(path)] == path for p in paths)
        )
    ]


def _query_value(param: dict[str, Any], values: list[str]) -> Any:
    schema = param["schema"]
    if schema.get("type") == "array":
        explode = param.get("explode", param.get("style", "form") == "form")
        items = values if explode else [p for v in values for p in v.split(",")]
        return [_coerce(i, schema.get("items", {})) for i in items]
    if len(values) > 1:
        return values  # fails the scalar schema, as it should
    return _coerce(values[0], schema)


def _coerce(value: str, schema: dict[str, Any]) -> Any:
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if "integer" in kinds and re.fullmatch(r"-?\d+", value):
        return int(value)
    if "number" in kinds and re.fullmatch(r"-?\d+(\.\d+)?", value):
        return float(value)
    if "boolean" in kinds and value in ("true", "false"):
        return value == "true"
    return value


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    raw_body: bytes
    body_is_json: bool


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    dropped: bool = False

    @staticmethod
    def drop() -> Reply:
        """Close the connection without answering (the request may have been processed)."""
        return Reply(0, dropped=True)


def problem(status: int, detail: str, errors: list[str] | None = None) -> Reply:
    """An RFC 9457 problem-details answer (RunPod's ErrorResponse)."""
    body: dict[str, Any] = {"title": HTTPStatus(status).phrase, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return Reply(status, body, content_type="application/problem+json")


class LoopbackServer:
    def __init__(self, serve: Callable[[Request], Reply]) -> None:
        self._serve = serve
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        serve = self._serve

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes

            def _handle(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body: Any = None
                is_json = True
                if raw:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        is_json = False
                headers = {k.lower(): v for k, v in self.headers.items()}
                reply = serve(
                    Request(self.command, url.path, url.query, headers, body, raw, is_json)
                )
                if reply.dropped:
                    self.close_connection = True
                    return
                data = b"" if reply.body is None else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.body is not None:
                    self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self.url

    @property
    def url(self) -> str:
        assert self._server is not None, "the server is not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

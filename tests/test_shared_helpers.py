"""The small helpers several modules share: argparse pieces (app/cli_args.py), the pure ASGI
middleware base (app/api/middleware.py), the pattern rule of text fields (app/params.py
`matching`) and close-on-exit (app/closing.py)."""

from __future__ import annotations

import argparse
import asyncio
import re
from typing import Annotated

import pytest
from pydantic import BaseModel, ValidationError
from starlette.types import Message, Receive, Scope, Send

from app.api.middleware import HttpMiddleware
from app.cli import build_parser
from app.cli_args import add_command, duration
from app.closing import Closing
from app.params import matching


# --- app/cli_args.py ---------------------------------------------------------------------------
def test_a_duration_option_reads_units_and_a_bad_one_says_what_a_duration_is(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser(prog="cmd")
    parser.add_argument("--wait", type=duration)
    assert parser.parse_args(["--wait", "2m"]).wait == 120.0
    assert parser.parse_args(["--wait", "1.5"]).wait == 1.5
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--wait", "soon"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --wait: not a duration: 'soon' (use e.g. 30, 30s, 10m, 2h)" in err
    assert "invalid" not in err  # parse_duration's message, not argparse's 'invalid value'


def test_the_stemfleet_commands_show_their_module_doc_as_written(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sub = argparse.ArgumentParser(prog="cmd").add_subparsers()
    doc = "First line.\n\n  an indented example\nlast line"
    parser = add_command(sub, "demo", doc, "a demo command")
    assert parser.description == doc
    parser.print_help()
    assert "  an indented example\nlast line" in capsys.readouterr().out  # not re-wrapped

    top = build_parser()
    for name in ("up", "separate", "process", "worker"):
        with pytest.raises(SystemExit):
            top.parse_args([name, "--help"])
        assert "usage: stemfleet " + name in capsys.readouterr().out


# --- app/api/middleware.py ---------------------------------------------------------------------
class _Tagging(HttpMiddleware):
    """Adds a header to every HTTP response it sees."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-seen", b"1")]
            await send(message)

        await self.app(scope, receive, tagged)


async def _inner(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})


def _call(scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(_Tagging(_inner)(scope, receive, send))
    return sent


def test_http_middleware_handles_http_and_passes_other_scopes_on_untouched() -> None:
    (http,) = _call({"type": "http", "method": "GET", "path": "/"})
    assert (b"x-seen", b"1") in http["headers"]
    (lifespan,) = _call({"type": "lifespan"})
    assert lifespan["headers"] == []


# --- app/params.py matching ----------------------------------------------------------------------
class _Tagged(BaseModel):
    tag: Annotated[str, matching(re.compile(r"^[a-z]+$"), "tag must be lower-case letters")] | None


def test_matching_accepts_what_the_pattern_matches_and_none_and_says_why_otherwise() -> None:
    assert _Tagged(tag="abc").tag == "abc"
    assert _Tagged(tag=None).tag is None
    with pytest.raises(ValidationError) as info:
        _Tagged(tag="ABC")
    (error,) = info.value.errors()
    assert (error["loc"], error["msg"]) == (("tag",), "Value error, tag must be lower-case letters")


# --- app/closing.py ------------------------------------------------------------------------------
class _Resource(Closing):
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_closing_closes_once_on_leaving_the_block_even_on_an_error() -> None:
    with _Resource() as resource:
        assert resource.closed == 0
    assert resource.closed == 1
    failing = _Resource()
    with pytest.raises(RuntimeError), failing:
        raise RuntimeError("boom")
    assert failing.closed == 1

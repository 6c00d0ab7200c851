"""structlog JSON logging: every line carries a stable `event` plus ids where known.

Records of the standard library's `logging` (uvicorn, httpx, the psycopg pool) go through the same
processors (structlog's ProcessorFormatter): one line each, in the same format, their message as
`event` and the logger's name as `logger`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_configured = False


class _Stderr:
    """Writes to whatever sys.stderr is at the time (a test's capture may replace it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _StdlibHandler(logging.StreamHandler):
    """The root logger's handler that this module installs (and replaces on reconfiguring)."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__(_Stderr())
        self.setFormatter(formatter)


def configure(level: str = "INFO", json: bool = True) -> None:
    global _configured
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(old)
    root.addHandler(_StdlibHandler(formatter))
    root.setLevel(level.upper())
    _configured = True


def get_logger(**ids: Any) -> Any:
    """A logger bound to the given ids (job_id=…, worker_id=…). The first argument of each call
    is the stable event name, e.g. log.info("job_claimed", attempt=1)."""
    if not _configured:
        configure()
    return structlog.get_logger("stemfleet").bind(**{k: str(v) for k, v in ids.items() if v})

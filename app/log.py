"""structlog JSON logging: every line carries a stable `event` plus ids where known."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_configured = False


def configure(level: str = "INFO", json: bool = True) -> None:
    global _configured
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format="%(message)s")
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(**ids: Any) -> Any:
    """A logger bound to the given ids (job_id=…, worker_id=…). The first argument of each call
    is the stable event name, e.g. log.info("job_claimed", attempt=1)."""
    if not _configured:
        configure()
    return structlog.get_logger("stemfleet").bind(**{k: str(v) for k, v in ids.items() if v})

"""structlog set-up: JSON lines for operators, a readable console on a terminal.

Context variables (`bind_contextvars(call_id=...)`) appear in every line logged while a call
is handled, so one call can be followed with one grep.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog


def _stderr_logger(*args: object) -> structlog.PrintLogger:
    # Look sys.stderr up when a logger is made, so a redirected stderr (tests, daemons that
    # re-open it) is honoured.
    return structlog.PrintLogger(file=sys.stderr)


def configure_logging(
    level: str = "info",
    fmt: Literal["json", "console", "auto"] = "auto",
    *,
    cache: bool = False,
) -> None:
    """`cache=True` (the daemon) binds each logger once, on first use: a call dropped by the
    level filter then costs one method call instead of a bind per call, which matters on the
    SIP hot path. Tests keep it off so they can re-configure and capture per test."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    numeric = logging.getLevelName(level.upper())
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info if not use_console else structlog.dev.set_exc_info,
            structlog.processors.UnicodeDecoder(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=cache,
    )
    # Route the stdlib loggers of uvicorn & co. through the same renderer.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # Access logs are noisy and duplicate our request metrics; keep them at warning.
    logging.getLogger("uvicorn.access").setLevel(max(numeric, logging.WARNING))


class call_context:
    """Bind `call_id` (and any other fields) to every log line inside the block.

    A class rather than a `@contextmanager` generator: it wraps every SIP message of a call
    and every webhook, and the generator machinery cost more than the binding itself."""

    __slots__ = ("_fields", "_tokens")

    def __init__(self, call_id: str, **fields: object) -> None:
        self._fields = {"call_id": call_id, **fields}
        self._tokens: dict[str, Any] = {}

    def __enter__(self) -> None:
        self._tokens = structlog.contextvars.bind_contextvars(**self._fields)

    def __exit__(self, *exc_info: object) -> None:
        structlog.contextvars.reset_contextvars(**self._tokens)

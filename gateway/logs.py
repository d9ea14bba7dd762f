"""Structured logs (console for people, JSON for machines) that never carry a secret."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

import structlog
from structlog.typing import EventDict

REDACTED = "***"


def configure_logging(level: str, fmt: str, secrets: Iterable[str] = ()) -> None:
    known = tuple(secret for secret in secrets if len(secret) >= 4)

    def redact(_logger: Any, _name: str, event: EventDict) -> EventDict:
        """Last line of defence: a secret that slipped into a log field is masked."""
        if not known:
            return event
        for key, value in event.items():
            if isinstance(value, str) and any(secret in value for secret in known):
                for secret in known:
                    value = value.replace(secret, REDACTED)
                event[key] = value
        return event

    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        # sys.stderr is looked up for each logger, not bound once: a caller that swaps the
        # stream (a test runner capturing a CLI run) must not leave logging on a closed file.
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    return structlog.PrintLogger(sys.stderr)

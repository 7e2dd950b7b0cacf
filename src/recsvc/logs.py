"""Logging setup, one for every command: JSON lines for machines or text for people.

`config()` is a logging.config dictConfig; `recsvc serve` hands it to uvicorn (so every worker
uses it, uvicorn's own loggers included), the other commands apply it with `configure()`.
RECSVC_LOG_FORMAT chooses (json by default for `serve`, text for the others). Without
`--verbose` the text format leaves tracebacks out and Alembic says nothing below WARNING.
"""

from __future__ import annotations

import logging
import logging.config
import sys
from typing import Any, Literal

from pythonjsonlogger.core import RESERVED_ATTRS

Format = Literal["json", "text"]


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when a record is emitted (not when logging was set
    up), so a command run in-process under a captured stderr leaves no dangling stream."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class BriefFormatter(logging.Formatter):
    """Text lines without tracebacks: a command's expected failures read as one line."""

    def formatException(self, ei: Any) -> str:  # noqa: N802 (logging's name)
        return ""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).rstrip("\n")


def config(log_format: Format, level: str = "INFO", verbose: bool = False) -> dict[str, Any]:
    formatters: dict[str, Any] = {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "{levelname}{name}{process}{message}",
            "style": "{",
            "rename_fields": {"levelname": "level", "name": "logger", "process": "pid"},
            "timestamp": "time",
            # uvicorn's terminal colours are no field of a log line
            "reserved_attrs": [*RESERVED_ATTRS, "color_message", "taskName"],
        },
        "text": {
            "()": "logging.Formatter" if verbose else f"{__name__}.BriefFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
    }
    quiet = "INFO" if verbose else "WARNING"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {log_format: formatters[log_format]},
        "handlers": {"stderr": {"()": f"{__name__}.StderrHandler", "formatter": log_format}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            # uvicorn's own handlers would print a second, differently formatted line.
            "uvicorn": {"handlers": [], "propagate": True, "level": level.upper()},
            "uvicorn.error": {"handlers": [], "propagate": True},
            # Replaced by recsvc.access (one line per request, with its id).
            "uvicorn.access": {"handlers": [], "propagate": False, "level": "WARNING"},
            "alembic": {"level": quiet},
        },
    }


def configure(log_format: Format, level: str = "INFO", verbose: bool = False) -> None:
    logging.config.dictConfig(config(log_format, level, verbose))

"""The server's log: text for a terminal or one JSON object per line, each line of a call
carrying that call's request id.

The transport sets the request id of the call a thread serves in a context variable
(request_context); the JSON formatter reads it, so every line logged while serving a call,
from any module, names the call it belongs to (the same id as the call's audit record).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Final

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS: Final = ("text", "json")
_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"

_request_id: ContextVar[str | None] = ContextVar("vault_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the call this thread is serving, if any."""
    return _request_id.get()


@contextmanager
def request_context(request_id: str) -> Iterator[None]:
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, pid,
    process (name), request_id while serving a call, exception (type and stack) if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
            "process": record.processName,
        }
        request_id = _request_id.get()
        if request_id is not None:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: str, log_format: str) -> None:
    """Log to stderr at level in log_format ("text" or "json"); raises ValueError for
    anything else."""
    level = level.upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    # processName tells the supervisor's lines from each worker's.
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT_FORMAT)
    )
    logging.basicConfig(level=level, handlers=[handler])
    if level != "DEBUG":
        # Alembic announces each of its plugins at INFO in every process that opens the store.
        logging.getLogger("alembic").setLevel(logging.WARNING)

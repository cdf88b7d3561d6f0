"""Log lines that repeat under load, at most once per interval each.

During an outage every request meets the same failure; one line per request is tens of
thousands a minute, which drowns the first, useful line and fills disks. Each kind of line is
written at most once per interval, followed at the next one by how many were left out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

DEFAULT_INTERVAL_SECONDS: Final = 10.0


class ThrottledLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        # kind -> (when its last line was written, lines left out since)
        self._state: dict[str, tuple[float, int]] = {}

    def log(self, level: int, kind: str, message: str, *args: object) -> bool:
        """Write message (%-formatted with args) unless a line of this kind was written less
        than the interval ago; returns whether it was written."""
        now = self._clock()
        with self._lock:
            last = self._state.get(kind)
            if last is not None and now - last[0] < self._interval:
                self._state[kind] = (last[0], last[1] + 1)
                return False
            suppressed = last[1] if last is not None else 0
            self._state[kind] = (now, 0)
        if suppressed:
            message += " (%d more like it left out)"
            args = (*args, suppressed)
        self._logger.log(level, message, *args)
        return True

    def warning(self, kind: str, message: str, *args: object) -> bool:
        return self.log(logging.WARNING, kind, message, *args)

    def error(self, kind: str, message: str, *args: object) -> bool:
        return self.log(logging.ERROR, kind, message, *args)

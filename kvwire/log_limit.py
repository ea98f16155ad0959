"""Log lines that anyone who can connect can cause: a few per window, the rest counted.

A refusal (a token not in the auth file, a peer HELLO that proves nothing, a
connection past --max-connections) is logged, as an operator needs to see it.
But one connection could send twenty thousand refused HELLOs in one read, and
one WARNING each held the node's event loop for a second (its peers marked it
DOWN) and wrote 2.5 kB of log per kB received. So each kind of line is logged
at most ``burst`` times per ``window`` seconds; past that the lines are only
counted, and the count is logged once the window is over ("and N more").
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

BURST = 10
WINDOW_S = 10.0


class LogLimit:
    def __init__(self, logger: logging.Logger, *, burst: int = BURST, window: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._burst = burst
        self._window = window
        self._clock = clock
        # kind -> [when its window began, lines logged in it, lines held back]
        self._windows: dict[str, list] = {}

    def log(self, level: int, kind: str, message: str, *args: Any, logger: logging.Logger | None = None,
            **kwargs: Any) -> None:
        """``logger.log(level, message, *args)`` (this one's logger by default), unless ``kind``
        has had its lines in this window."""
        now = self._clock()
        window = self._windows.get(kind)
        if window is None or now - window[0] >= self._window:
            if window is not None:
                self._report(kind, window)
            window = self._windows[kind] = [now, 0, 0]
        if window[1] < self._burst:
            window[1] += 1
            (logger or self._logger).log(level, message, *args, **kwargs)
        else:
            window[2] += 1

    def flush(self) -> None:
        """Log the count of each kind's lines held back in a window now over (the node calls it each second)."""
        now = self._clock()
        for kind, window in list(self._windows.items()):
            if now - window[0] >= self._window:
                self._report(kind, window)
                del self._windows[kind]

    def _report(self, kind: str, window: list) -> None:
        held_back = window[2]
        if held_back:
            # Every line held back came within the window, however late this count
            # (the node flushes once a second: "in 11 s" for a 10 s window).
            self._logger.warning("and %d more %s in %.0f s, not logged one by one", held_back, kind, self._window,
                                 extra={"event": "log_lines_held_back", "kind": kind, "lines": held_back})

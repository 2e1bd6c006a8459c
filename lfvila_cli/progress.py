"""Progress of long work as log lines, for runs no one watches on a terminal.

On a terminal a tqdm bar shows how far caching, training and indexing are. Off one (a Slurm or
nohup log, CI), and on ranks that show no bar, the same figures go to the ``lfvila_cli.progress``
logger as one line every ``LFVILA_PROGRESS_S`` seconds (default 30): done/total, rate, time
left. The CLI shows that logger without --verbose (``main._setup_logging``). ``ProgressLog`` is
the one clock and counter the cache, the trainer and the index share; each writes its own line
(docs/engineering.md §6).
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Optional

from .errors import ConfigError

LOGGER = "lfvila_cli.progress"
INTERVAL_ENV = "LFVILA_PROGRESS_S"
DEFAULT_INTERVAL_S = 30.0

progress_log = logging.getLogger(LOGGER)


def interval_s() -> float:
    """Seconds between two progress lines: ``LFVILA_PROGRESS_S``, else 30 (0: a line per update)."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < math.inf:
        raise ConfigError(f"{INTERVAL_ENV}={raw!r}: expected a number of seconds >= 0")
    return value


def duration(seconds: float) -> str:
    """``1h02m`` or ``3m07s``; ``?`` for NaN (nothing done yet, no rate to go by)."""
    if seconds != seconds:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class ProgressLog:
    """``done`` of ``total`` units, counted as work finishes; ``advance`` says when a line is due.

    ``done``: units finished before this run (a resumed run): counted in ``done`` and the
    percentage, not in the rate or the time left. ``enabled=False`` (a bar is showing) never
    makes a line due. The caller writes the line with ``log``, using ``counted``, ``rate``,
    ``per_second`` and ``left`` for the shared figures.
    """

    def __init__(self, total: int, enabled: bool, done: int = 0, interval: Optional[float] = None) -> None:
        self.total, self.enabled = total, enabled
        self.done = self.first = done
        self.interval = interval_s() if interval is None else interval
        self.started = self.last = time.monotonic()

    def advance(self, units: int) -> bool:
        """Count ``units`` more done; True when a line is due (enabled, and the interval has passed)."""
        self.done += units
        return self.enabled and time.monotonic() - self.last >= self.interval

    @property
    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    def per_second(self, count: float) -> float:
        """``count`` (frames, samples... of this run) per second since the start."""
        return count / self.elapsed

    def rate(self) -> float:
        """Units done by this run per second."""
        return self.per_second(self.done - self.first)

    def counted(self, unit: str = "") -> str:
        """``done/total unit (pct%)``."""
        return f"{self.done}/{self.total}{' ' + unit if unit else ''} ({100.0 * self.done / max(self.total, 1):.0f}%)"

    def left(self) -> str:
        """The time left at this run's rate so far (``?`` before anything is done)."""
        ran = self.done - self.first
        return duration((self.total - self.done) * self.elapsed / ran if ran > 0 else float("nan"))

    def log(self, message: str, *args) -> None:
        progress_log.info(message, *args)
        self.last = time.monotonic()

"""A dependency-free progress bar for long transfers (fetch, add, hashing)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


class ProgressBar:
    """Callable as a Progress callback; redraws in place on a terminal, logs every 10% otherwise."""

    def __init__(
        self, label: str, stream: TextIO | None = None, width: int = 30, min_interval: float = 0.1
    ) -> None:
        self.label, self.width, self.min_interval = label, width, min_interval
        self.stream = stream if stream is not None else sys.stderr
        self._tty = self.stream.isatty()
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = -1

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        finished = total > 0 and done >= total
        if self._tty:
            if finished or now - self._last_draw >= self.min_interval:
                self._last_draw = now
                self.stream.write("\r" + self.render(done, total) + ("\n" if finished else ""))
                self.stream.flush()
            return
        decile = int(10 * done / total) if total > 0 else -1
        if decile > self._last_decile:
            self._last_decile = decile
            self.stream.write(self.render(done, total) + "\n")
            self.stream.flush()

    def render(self, done: int, total: int) -> str:
        """One line: label, bar, percentage, bytes and rate."""
        elapsed = max(time.monotonic() - self._start, 1e-6)
        rate = f"{_human(done / elapsed)}/s"
        if total <= 0:
            return f"{self.label} {_human(done)} {rate}"
        frac = min(done / total, 1.0)
        filled = int(self.width * frac)
        bar = "#" * filled + "-" * (self.width - filled)
        return f"{self.label} [{bar}] {frac:6.1%} {_human(done)}/{_human(total)} {rate}"

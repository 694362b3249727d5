"""A live progress line on a terminal, plain log lines elsewhere."""

from __future__ import annotations

import sys
import time

#: Seconds between two plain log lines when not on a terminal.
LOG_EVERY_S = 5.0
#: Seconds between two redraws of the live line.
REDRAW_EVERY_S = 0.2


class Progress:
    """``update(done, total, queued, running, mean_jct_s)``; ``close()`` ends the line."""

    def __init__(self, label: str, total: int, stream=None, enabled: bool = True):
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = 0.0
        self._start = time.monotonic()

    def update(self, done: int, in_system: int, running: int | None,
               mean_jct_s: float | None, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < (REDRAW_EVERY_S if self.tty else LOG_EVERY_S):
            return
        self._last = now
        fraction = done / self.total if self.total else 1.0
        running_text = "?" if running is None else str(running)
        queued_text = "?" if running is None else str(max(0, in_system - running))
        jct = "-" if mean_jct_s is None else f"{mean_jct_s:.3f}s"
        text = (f"{self.label}: {done}/{self.total} done, {queued_text} queued, "
                f"{running_text} running, mean JCT {jct}, {now - self._start:.0f}s")
        if self.tty:
            width = 24
            bar = "#" * int(width * fraction) + "." * (width - int(width * fraction))
            self.stream.write(f"\r[{bar}] {text}\x1b[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

"""Measure how long the Qt event loop stalls: a fast QTimer that records the largest gap between ticks.

A responsive UI ticks every ``interval_ms``; a gap of 500 ms means the window was frozen for about
half a second. Used by the GUI benchmark of a proposal run.
"""

from __future__ import annotations

import time

from qtpy.QtCore import QObject, QTimer


class StallProbe(QObject):
    """Start it, do UI work, stop it; ``max_gap_ms`` is the longest time between two timer ticks."""

    def __init__(self, interval_ms: int = 10, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self._last = 0.0
        self.max_gap_ms = 0.0
        self.ticks = 0

    def _tick(self) -> None:
        now = time.perf_counter()
        self.max_gap_ms = max(self.max_gap_ms, (now - self._last) * 1000.0)
        self._last = now
        self.ticks += 1

    def start(self) -> None:
        """Reset the statistics and start ticking."""
        self.max_gap_ms, self.ticks = 0.0, 0
        self._last = time.perf_counter()
        self._timer.start()

    def stop(self) -> float:
        """Stop ticking (the gap up to now counts) and return ``max_gap_ms``."""
        self._tick()
        self._timer.stop()
        return self.max_gap_ms

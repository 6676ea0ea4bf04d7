"""Rates from counters, the way PromQL's rate() does it: over a window, summing increases, treating a
drop as a reset (the counter restarted from zero), never negative, NaN-proof."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

# A counter jumping faster than this per second is not an inference server (or not a correct one): such a
# sample is refused and reported, so one bad scrape cannot poison averages, totals or the autoscaler.
MAX_PLAUSIBLE_RATE = 10_000_000.0


def increase(previous: float, current: float) -> float:
    """How much a counter grew between two readings: a drop means it restarted from zero."""
    if not (math.isfinite(previous) and math.isfinite(current)) or current < 0:
        return 0.0
    return current if current < previous else current - previous


@dataclass
class CounterSeries:
    """One counter of one pod: its recent readings, for a rate over `window` seconds."""

    window: float = 60.0
    samples: deque[tuple[float, float]] = field(default_factory=deque)
    # increases already counted in `samples` (kept per sample so the window can slide)
    increases: deque[float] = field(default_factory=deque)

    def add(self, at: float, value: float) -> float | None:
        """Record a reading; returns the increase since the previous one, or None when the reading is refused
        (out of order, non-finite, negative, or implausibly fast)."""
        if not math.isfinite(value) or value < 0 or not math.isfinite(at):
            return None
        if self.samples:
            last_at, last_value = self.samples[-1]
            if at <= last_at:
                return None
            grown = increase(last_value, value)
            if grown / (at - last_at) > MAX_PLAUSIBLE_RATE:
                return None
        else:
            grown = 0.0
        self.samples.append((at, value))
        self.increases.append(grown)
        while len(self.samples) > 2 and self.samples[1][0] <= at - self.window:
            self.samples.popleft()
            self.increases.popleft()
        return grown

    def rate(self) -> float:
        """Average per second over the samples in the window; 0 until there are two."""
        if len(self.samples) < 2:
            return 0.0
        elapsed = self.samples[-1][0] - self.samples[0][0]
        if elapsed <= 0:
            return 0.0
        # The first sample's own increase happened before the window started.
        grown = sum(list(self.increases)[1:])
        return max(0.0, grown / elapsed)

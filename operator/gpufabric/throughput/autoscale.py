"""Replicas from tokens/s: how many a workload needs to sustain its target and its measured demand.

    needed  = max(ceil(target / capacity), ceil(demand / (capacity × UTILISATION)))
    desired = clamp(needed, minReplicas, maxReplicas)

`capacity` is what one replica serves at saturation (learned, else the placement prior); `demand` the
generation tokens/s measured across the workload — when requests queue, demand exceeds what is measured,
so a saturated fleet counts as needing SATURATED_STEP more replicas. Up immediately; down only to the
highest recommendation of the last `stabilisation` seconds (HPA's scale-down rule), and only when the
change is more than TOLERANCE of the current count, so steady load never makes it oscillate.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

UTILISATION = 0.8
TOLERANCE = 0.1
SATURATED_STEP = 1
DEFAULT_STABILISATION_SECONDS = 300.0


@dataclass(frozen=True)
class Inputs:
    target: float
    demand: float
    capacity_per_replica: float
    saturated: bool
    current: int
    minimum: int
    maximum: int


@dataclass(frozen=True)
class Recommendation:
    desired: int
    # what the target alone would need, before clamping (to tell "max reached" from "no capacity")
    needed_for_target: int
    reason: str


def needed(inputs: Inputs) -> tuple[int, int]:
    """(replicas the target needs, replicas the target and demand need) — unclamped."""
    capacity = inputs.capacity_per_replica
    if not math.isfinite(capacity) or capacity <= 0:
        return inputs.current, inputs.current
    for_target = math.ceil(inputs.target / capacity - 1e-9) if math.isfinite(inputs.target) else inputs.current
    demand = inputs.demand if math.isfinite(inputs.demand) and inputs.demand > 0 else 0.0
    for_demand = math.ceil(demand / (capacity * UTILISATION) - 1e-9)
    if inputs.saturated:
        for_demand = max(for_demand, inputs.current + SATURATED_STEP)
    return for_target, max(for_target, for_demand)


@dataclass
class Autoscaler:
    """One workload's recommendations over time."""

    stabilisation: float = DEFAULT_STABILISATION_SECONDS
    history: deque[tuple[float, int]] = field(default_factory=deque)

    def recommend(self, now: float, inputs: Inputs) -> Recommendation:
        for_target, raw = needed(inputs)
        clamped = min(max(raw, inputs.minimum), inputs.maximum)
        self.history.append((now, clamped))
        while self.history and self.history[0][0] < now - self.stabilisation:
            self.history.popleft()
        current = inputs.current
        if clamped > current:
            desired, why = clamped, "scaling up for tokens/s"
        else:
            ceiling = max(r for _, r in self.history)
            desired = min(current, max(ceiling, clamped))
            if desired < current and (current - desired) <= TOLERANCE * current:
                desired = current  # within tolerance: no move
            why = "scaling down after the stabilisation window" if desired < current else "steady"
        desired = min(max(desired, inputs.minimum), inputs.maximum)
        return Recommendation(desired=desired, needed_for_target=for_target, reason=why)

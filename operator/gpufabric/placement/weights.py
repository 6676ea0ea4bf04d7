"""The named knobs of placement scoring. Defaults are documented; the operator takes overrides from flags."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Weights:
    """How a replica's options are weighed.

    A candidate's value is its predicted tokens/s × vendor_preference_decay^(vendor rank) ×
    precision_preference_decay^(precision rank): with the defaults a less preferred vendor must promise 10×
    the tokens/s, a less preferred precision 2×, before it wins. Fleet quality is measured on this value.

    The other terms only choose among nodes once the candidate is (nearly) settled; each is a fraction of the
    candidate's value:
    - packing: best fit — prefer the node left with the fewest free devices, so whole nodes stay free for
      large replicas;
    - domain_packing: prefer busier RoCE domains, so whole domains stay free for multi-node gangs;
    - spread: penalty for a node (or, with spread RoceDomain, a domain) already running a replica of the same
      workload.
    scarcity scales the shadow price of contended capacity (see engine.shadow_prices): 0 turns it off and
    makes placement plain greedy by value.
    scan_limit bounds how many equally good nodes a decision inspects for spreading; it never decides
    whether a replica fits."""

    vendor_preference_decay: float = 0.1
    precision_preference_decay: float = 0.5
    packing: float = 0.05
    domain_packing: float = 0.03
    spread: float = 0.1
    scarcity: float = 1.0
    scan_limit: int = 32

    def __post_init__(self) -> None:
        for name, (low, high, low_open) in RANGES.items():
            value = getattr(self, name)
            expected = int if name == "scan_limit" else (int, float)
            if isinstance(value, bool) or not isinstance(value, expected):
                raise ValueError(f"{name} must be {'an integer' if expected is int else 'a number'}")
            if not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
                raise ValueError(f"{name} must be {describe_range(name)}")


# (lowest, highest, lowest excluded) of each weight. The decays are multipliers of value; the other terms are
# fractions of a candidate's value (above 1 a tie-breaker would outweigh the candidate itself); scarcity
# scales shadow prices, where beyond 100 every contended node looks unaffordable.
RANGES: dict[str, tuple[float, float, bool]] = {
    "vendor_preference_decay": (0.0, 1.0, True),
    "precision_preference_decay": (0.0, 1.0, True),
    "packing": (0.0, 1.0, False),
    "domain_packing": (0.0, 1.0, False),
    "spread": (0.0, 1.0, False),
    "scarcity": (0.0, 100.0, False),
    "scan_limit": (1, 100_000, False),
}


def describe_range(name: str) -> str:
    low, high, low_open = RANGES[name]
    if name == "scan_limit":
        return f"an integer from {low:g} to {high:,.0f}"
    return f"a number {'above' if low_open else 'from'} {low:g} {'and at most' if low_open else 'to'} {high:g}"

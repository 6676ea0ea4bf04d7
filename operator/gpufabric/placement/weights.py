"""The named knobs of placement scoring. Defaults are documented; the operator takes overrides from flags."""

from __future__ import annotations

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
        for name in ("vendor_preference_decay", "precision_preference_decay"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1]")
        for name in ("packing", "domain_packing", "spread", "scarcity"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.scan_limit < 1:
            raise ValueError("scan_limit must be at least 1")

"""The operator's own Prometheus metrics (`gpufabric_*`), on a registry of its own so tests can read them.

Names follow Prometheus conventions: counters end in `_total`, durations are `_seconds` histograms, labels
are small closed sets (no pod names, no UIDs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PLACEMENT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class OperatorMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.passes = Counter("gpufabric_reconcile_passes_total", "Reconcile passes run by the leader.", registry=r)
        self.errors = Counter(
            "gpufabric_reconcile_errors_total",
            "Writes that failed after retries, by kind of write.",
            ["action"],
            registry=r,
        )
        self.writes = Counter(
            "gpufabric_api_writes_total",
            "Write requests sent to the Kubernetes API, retries included.",
            ["verb", "resource"],
            registry=r,
        )
        self.placement_seconds = Histogram(
            "gpufabric_placement_decision_duration_seconds",
            "Time to decide one reconcile pass (snapshot, placement and rendering).",
            buckets=PLACEMENT_BUCKETS,
            registry=r,
        )
        self.replicas_placed = Counter(
            "gpufabric_replicas_placed_total", "Replicas placed (new, scaled up, moved, rolled).", registry=r
        )
        self.leader = Gauge("gpufabric_leader", "1 while this instance holds the Lease and reconciles.", registry=r)

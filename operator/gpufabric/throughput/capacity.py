"""Capacity planning in tokens/s: how many more tokens/s of a model of a given size the fabric's free
devices can serve now, by vendor, accelerator, precision and RoCE domain."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from gpufabric.api.agentworkload import ModelSpec
from gpufabric.placement.candidates import size_and_predict
from gpufabric.placement.estimates import ThroughputSource
from gpufabric.placement.snapshot import Snapshot
from gpufabric.vendors import Precision, Vendor


@dataclass(frozen=True)
class CapacityRow:
    vendor: Vendor
    accelerator: str
    precision: Precision
    domain: str | None
    replicas: int
    devices_per_replica: int
    tokens_per_second: float


def free_capacity(
    snapshot: Snapshot,
    parameters_billions: float,
    source: ThroughputSource,
    precisions: Sequence[Precision] | None = None,
    context_length: int = 8192,
) -> list[CapacityRow]:
    """Single-node replicas of the model that fit in the free devices of schedulable nodes, one row per
    (vendor, accelerator, precision, domain); each precision is counted on its own (they share devices)."""
    model = ModelSpec(name="capacity-probe", parameters_billions=parameters_billions, context_length=context_length)
    totals: dict[tuple[Vendor, str, Precision, str | None, int], tuple[int, float]] = defaultdict(lambda: (0, 0.0))
    for node in snapshot.nodes.values():
        if not node.schedulable or node.free < 1:
            continue
        node_class = node.node_class
        for precision in sorted(node_class.precisions, key=list(Precision).index):
            if precisions is not None and precision not in precisions:
                continue
            option = size_and_predict(
                model, precision, node_class, nodes_per_replica=1, explicit_devices=None, source=source
            )
            if option is None:
                continue
            sizing, tokens = option
            fit = node.free // sizing.devices_per_node
            if fit < 1:
                continue
            key = (node_class.vendor, node_class.accelerator, precision, node.domain, sizing.devices_per_node)
            replicas, total = totals[key]
            totals[key] = (replicas + fit, total + fit * tokens)
    rows = [
        CapacityRow(vendor, accelerator, precision, domain, replicas, devices, tokens)
        for (vendor, accelerator, precision, domain, devices), (replicas, tokens) in totals.items()
    ]
    return sorted(
        rows,
        key=lambda r: (list(Vendor).index(r.vendor), r.accelerator, list(Precision).index(r.precision), r.domain or ""),
    )


def best_total(rows: Sequence[CapacityRow]) -> float:
    """Fleet total, counting each (accelerator, domain)'s devices once, at its best precision."""
    best: dict[tuple[Vendor, str, str | None], float] = {}
    for row in rows:
        key = (row.vendor, row.accelerator, row.domain)
        best[key] = max(best.get(key, 0.0), row.tokens_per_second)
    return sum(best.values())

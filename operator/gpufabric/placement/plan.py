"""A whole-fleet plan from declared objects: what `gpufabric plan` prints and capacity planning reads.

Pure: ComputeNodes and AgentWorkloads in (with whatever status they carry), a FleetPlan out. Replicas the
workloads' status already places are kept where they are; only the rest are placed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from gpufabric.api.agentworkload import AgentWorkload
from gpufabric.api.common import ConditionStatus
from gpufabric.api.computenode import ComputeNode
from gpufabric.placement.engine import Decision, Refusal, place
from gpufabric.placement.estimates import ThroughputSource, replica_tokens_per_second
from gpufabric.placement.requests import WorkloadRequest, pending_replicas
from gpufabric.placement.snapshot import ExistingReplica, Snapshot
from gpufabric.placement.weights import Weights
from gpufabric.vendors import Vendor


@dataclass(frozen=True)
class VendorTotals:
    vendor: Vendor
    devices: int
    devices_used: int
    tokens_per_second: float


@dataclass(frozen=True)
class FleetPlan:
    running: tuple[Decision, ...]
    placed: tuple[Decision, ...]
    refused: tuple[Refusal, ...]
    vendors: tuple[VendorTotals, ...]
    # Replicas whose status names nodes no ComputeNode describes: they need a new home.
    orphaned: tuple[ExistingReplica, ...]

    @property
    def tokens_per_second(self) -> float:
        return sum(v.tokens_per_second for v in self.vendors)


def is_ready(node: ComputeNode) -> bool:
    """A ComputeNode counts as Ready unless its status says otherwise (files usually carry no status)."""
    if node.status is None:
        return True
    return all(c.status is not ConditionStatus.FALSE for c in node.status.conditions if c.type == "Ready")


def running_replicas(
    workloads: Sequence[AgentWorkload], nodes: Sequence[ComputeNode], source: ThroughputSource
) -> list[Decision]:
    by_name = {n.name: n for n in nodes}
    running = []
    for workload in workloads:
        if workload.status is None:
            continue
        for placement in workload.status.placements:
            if placement.replica >= workload.spec.replicas:
                continue
            first = by_name.get(placement.nodes[0])
            memory = first.spec.memory_per_device_gib if first else 0.0
            tokens = replica_tokens_per_second(
                source,
                accelerator=placement.accelerator,
                memory_gib=memory,
                precision=placement.precision,
                parameters_billions=workload.spec.model.parameters_billions,
                devices_per_node=placement.devices_per_node,
                nodes=len(placement.nodes),
            )
            running.append(Decision(workload.key, placement.replica, placement.allocation, tokens, tokens))
    return running


def plan_fleet(
    nodes: Sequence[ComputeNode],
    workloads: Sequence[AgentWorkload],
    source: ThroughputSource,
    weights: Weights | None = None,
) -> FleetPlan:
    running = running_replicas(workloads, nodes, source)
    existing = [ExistingReplica.of(d.workload, d.replica, d.allocation) for d in running]
    snapshot = Snapshot([(node, is_ready(node)) for node in nodes], existing)
    orphaned = {(r.workload, r.replica) for r in snapshot.orphaned}
    kept = [e for e in existing if (e.workload, e.replica) not in orphaned]
    requests = pending_replicas([WorkloadRequest.of(w) for w in workloads], kept)
    result = place(snapshot, requests, source, weights)
    live = [d for d in running if (d.workload, d.replica) not in orphaned]
    return FleetPlan(
        running=tuple(live),
        placed=result.decisions,
        refused=result.refusals,
        vendors=_totals(nodes, [*live, *result.decisions]),
        orphaned=tuple(snapshot.orphaned),
    )


def _totals(nodes: Sequence[ComputeNode], decisions: Sequence[Decision]) -> tuple[VendorTotals, ...]:
    devices: Counter[Vendor] = Counter()
    for node in nodes:
        devices[node.spec.vendor] += node.spec.devices
    used: Counter[Vendor] = Counter()
    tokens: dict[Vendor, float] = defaultdict(float)
    for decision in decisions:
        used[decision.allocation.vendor] += decision.allocation.devices
        tokens[decision.allocation.vendor] += decision.tokens_per_second
    return tuple(
        VendorTotals(vendor, devices[vendor], used[vendor], tokens[vendor])
        for vendor in Vendor
        if devices[vendor] or used[vendor]
    )

"""The baseline the engine is measured against: first fit by full scan, no index, no scoring.

For each replica in the same order as the engine: the first vendor (in preference order), first precision
(in preference order) and first nodes (by name) that pass the same filters and have room. It is what a
scheduler plugin written without this package's indexes and objective would do; the benchmark reports the
engine's speed and fleet value as ratios to it.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpufabric.api.agentworkload import AUTO
from gpufabric.api.refs import Allocation
from gpufabric.placement.candidates import size_and_predict, vendor_rank
from gpufabric.placement.engine import Decision, PlacementResult, Refusal
from gpufabric.placement.estimates import ThroughputSource
from gpufabric.placement.requests import ReplicaRequest
from gpufabric.placement.snapshot import NodeState, Snapshot
from gpufabric.placement.weights import Weights

FIRST_FIT_REFUSAL = "no node fits (first fit)"


def first_fit(
    snapshot: Snapshot, requests: Sequence[ReplicaRequest], source: ThroughputSource, weights: Weights | None = None
) -> PlacementResult:
    weights = weights or Weights()
    decisions: list[Decision] = []
    refusals: list[Refusal] = []
    nodes = list(snapshot.nodes.values())
    for request in sorted(requests, key=lambda r: r.order):
        decision = _first(snapshot, nodes, request, source, weights)
        if decision is None:
            refusals.append(Refusal(request.workload.key, request.replica, FIRST_FIT_REFUSAL))
        else:
            snapshot.allocate(request.workload.key, decision.allocation.nodes, decision.allocation.devices_per_node)
            decisions.append(decision)
    return PlacementResult(tuple(decisions), tuple(refusals))


def _first(
    snapshot: Snapshot, nodes: list[NodeState], request: ReplicaRequest, source: ThroughputSource, weights: Weights
) -> Decision | None:
    spec = request.workload.spec
    selector = spec.placement.node_selector if spec.placement else None
    domains = spec.placement.roce_domains if spec.placement else None
    explicit = None if spec.devices_per_replica == AUTO else int(spec.devices_per_replica)
    wanted = spec.nodes_per_replica
    for vendor in spec.vendor_order:
        rank = vendor_rank(spec, vendor)
        assert rank is not None
        for precision in spec.precisions:
            # (domain, class) -> nodes found so far for a gang (a single-node replica takes the first)
            gathering: dict[tuple[str | None, int], list[NodeState]] = {}
            for node in nodes:
                node_class = node.node_class
                if node_class.vendor != vendor or precision not in node_class.precisions:
                    continue
                if not node.schedulable or (selector is not None and not selector.matches(dict(node.labels))):
                    continue
                if domains is not None and node.domain not in domains:
                    continue
                if wanted > 1 and not node_class.rdma:
                    continue
                option = size_and_predict(
                    spec.model,
                    precision,
                    node_class,
                    nodes_per_replica=wanted,
                    explicit_devices=explicit,
                    source=source,
                )
                if option is None or node.free < option[0].devices_per_node:
                    continue
                sizing, tokens = option
                group = gathering.setdefault((node.domain, node.class_id), [])
                group.append(node)
                if len(group) == wanted:
                    value = (
                        tokens
                        * weights.vendor_preference_decay**rank
                        * weights.precision_preference_decay ** spec.precisions.index(precision)
                    )
                    names = tuple(n.name for n in group)
                    allocation = Allocation(vendor, node_class.accelerator, precision, sizing.devices_per_node, names)
                    return Decision(request.workload.key, request.replica, allocation, tokens, value)
    return None

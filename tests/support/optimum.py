"""The exact optimum of the placement objective, by integer programming (HiGHS), for small instances.

Maximise the sum of placed replicas' values (tokens/s weighed by preference) subject to
  - each replica placed at most once, on one candidate (class, precision) and one RoCE domain;
  - a gang of n nodes takes exactly n distinct eligible nodes of one domain, each with devices_per_node;
  - no node gives out more devices than it has free.

Two optima, because the engine keeps a contract an unconstrained optimiser does not: replicas are
admitted in queue order (priority, then age), and one that fits at its turn is placed.
  - `respect_order=True` (the engine's objective): walk the queue; admit a replica if some arrangement
    places it together with every replica admitted before it; then maximise value over the admitted set.
    This is the best any order-respecting placer could do; losses against it are the engine's own.
  - `respect_order=False`: the plain maximum, free to leave an old replica out for newer, more valuable
    ones. The gap between the two is the price of first-come-first-served, not of the engine's choices.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highspy

from gpufabric.placement.candidates import Candidate, candidates_for
from gpufabric.placement.estimates import ThroughputSource
from gpufabric.placement.requests import ReplicaRequest
from gpufabric.placement.snapshot import NodeState, Snapshot
from gpufabric.placement.weights import Weights


@dataclass(frozen=True)
class Optimum:
    value: float
    proven: bool  # False when the time limit stopped the solver first (value is then a lower bound)
    placed: int


def _eligible(request: ReplicaRequest, node: NodeState) -> bool:
    spec = request.workload.spec
    placement = spec.placement
    if not node.schedulable:
        return False
    if placement and placement.node_selector and not placement.node_selector.matches(dict(node.labels)):
        return False
    return not (placement and placement.roce_domains and node.domain not in placement.roce_domains)


def _fitting_by_domain(snapshot: Snapshot, request: ReplicaRequest, candidate: Candidate) -> list[list[NodeState]]:
    """The nodes that could hold a rank of the candidate, grouped by RoCE domain; domains with too few for a
    gang left out."""
    by_domain: dict[str | None, list[NodeState]] = defaultdict(list)
    for n in snapshot.nodes.values():
        if n.class_id == candidate.class_id and n.free >= candidate.devices_per_node and _eligible(request, n):
            by_domain[n.domain].append(n)
    return [nodes for nodes in by_domain.values() if len(nodes) >= candidate.nodes]


def optimum(
    snapshot: Snapshot,
    requests: Sequence[ReplicaRequest],
    source: ThroughputSource,
    weights: Weights | None = None,
    *,
    respect_order: bool = True,
    time_limit: float = 20.0,
) -> Optimum:
    weights = weights or Weights()
    ordered = sorted(requests, key=lambda r: r.order)
    model = highspy.Highs()  # type: ignore[no-untyped-call]
    model.silent()
    model.setOptionValue("time_limit", time_limit)
    model.setOptionValue("mip_rel_gap", 1e-6)
    objective: list[Any] = []
    per_replica: dict[int, list[Any]] = defaultdict(list)
    node_load: dict[str, list[Any]] = defaultdict(list)
    cache: dict[str, Any] = {}
    for index, request in enumerate(ordered):
        key = request.workload.key
        if key not in cache:
            cache[key] = candidates_for(request.workload.spec, snapshot.classes, source, weights)
        for candidate in cache[key]:
            for nodes in _fitting_by_domain(snapshot, request, candidate):
                chosen = model.addBinary()  # this replica runs this candidate in this domain
                per_replica[index].append(chosen)
                objective.append(candidate.value * chosen)
                ranks = []
                for n in nodes:
                    rank = model.addBinary()  # node n holds one rank of it
                    ranks.append(rank)
                    node_load[n.name].append(candidate.devices_per_node * rank)
                model.addConstr(sum(ranks) == candidate.nodes * chosen)
    for name, load in node_load.items():
        model.addConstr(sum(load) <= snapshot.nodes[name].free)
    if not objective:
        return Optimum(0.0, True, 0)
    once = {index: model.addConstr(sum(choices) <= 1) for index, choices in per_replica.items()}
    model.maximize(sum(objective))
    proven = model.getModelStatus() == highspy.HighsModelStatus.kOptimal
    if respect_order:
        for index in sorted(once):
            row = once[index].index
            model.changeRowBounds(row, 1.0, 1.0)  # admit it, if the earlier admissions leave room
            model.run()
            status = model.getModelStatus()
            if status != highspy.HighsModelStatus.kOptimal:
                proven = proven and status == highspy.HighsModelStatus.kInfeasible
                model.changeRowBounds(row, 0.0, 0.0)
        model.run()
        proven = proven and model.getModelStatus() == highspy.HighsModelStatus.kOptimal
    value = float(model.getInfo().objective_function_value)
    placed = sum(round(model.val(v)) for choices in per_replica.values() for v in choices)
    return Optimum(value, proven, placed)

"""Why a replica cannot be placed, counted per node the way kube-scheduler does:

    0/20 nodes: 8 insufficient free devices (need 4), 6 no runtime for vendor ascend, 4 precision FP8
    unsupported, 2 not Ready

Every node gets exactly one reason — the first filter it fails, in the order below — so the counts add up
to the number of nodes, and the biggest group says what to change first. A node short of devices says
whose doing it is: pods of others (`devices held by other pods (8/8)`), its Node advertising fewer than
declared (`offers 7 of 8 devices`), or the operator's own replicas (`insufficient free devices`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping

from gpufabric.api.agentworkload import AUTO, AgentWorkloadSpec
from gpufabric.placement.candidates import Candidate, accepted_precisions, engine_refusal, vendor_rank
from gpufabric.placement.sizing import smallest_fit_devices
from gpufabric.placement.snapshot import NodeState, Snapshot

NOT_READY = "not Ready"
CORDONED = "cordoned"
NOT_SELECTED = "not matched by nodeSelector"
DOMAIN_NOT_ALLOWED = "in a RoCE domain the workload does not allow"
NOT_IN_FABRIC = "not in a RoCE domain (multi-node replicas need one)"
NO_RDMA_NIC = "no RDMA NIC (multi-node replicas need one)"


def explain(
    snapshot: Snapshot,
    spec: AgentWorkloadSpec,
    candidates: list[Candidate],
    selected: Callable[[NodeState], bool],
    domain_allowed: Callable[[NodeState], bool],
    *,
    avoided: Mapping[str, str] | None = None,
) -> str:
    """`avoided`: nodes kube-scheduler refused a replica of this workload on, with what it said."""
    need_by_class: dict[int, int] = {}
    for candidate in candidates:
        need_by_class[candidate.class_id] = min(
            need_by_class.get(candidate.class_id, candidate.devices_per_node), candidate.devices_per_node
        )
    reasons: Counter[str] = Counter()
    # Nodes that would take a rank of a gang on their own, by (class, domain).
    gang_ready: dict[tuple[int, str | None], list[NodeState]] = defaultdict(list)
    for node in snapshot.nodes.values():
        reason = _unusable(node, selected, domain_allowed) or _first_failure(node, spec, need_by_class, avoided or {})
        if reason is None:
            gang_ready[(node.class_id, node.domain)].append(node)
        else:
            reasons[reason] += 1
    needed = spec.nodes_per_replica
    for (_, domain), nodes in gang_ready.items():
        if len(nodes) >= needed:
            # The engine's own search should have found these; saying so beats a misleading reason.
            reasons[f"placeable on RoCE domain {domain} (internal inconsistency: please report)"] += len(nodes)
        else:
            reasons[f"in RoCE domain {domain}, which has {len(nodes)} of {needed} nodes needed"] += len(nodes)
    total = len(snapshot.nodes)
    if not total:
        return "0/0 nodes: no ComputeNodes"
    ranked = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    return f"0/{total} nodes: " + ", ".join(f"{count} {reason}" for reason, count in ranked)


def _unusable(
    node: NodeState, selected: Callable[[NodeState], bool], domain_allowed: Callable[[NodeState], bool]
) -> str | None:
    """The node's state or the workload's selection rule it out, whatever it has."""
    if not node.ready:
        return NOT_READY
    if node.cordoned:
        return CORDONED
    if not selected(node):
        return NOT_SELECTED
    if not domain_allowed(node):
        return DOMAIN_NOT_ALLOWED
    return None


def _first_failure(
    node: NodeState, spec: AgentWorkloadSpec, need_by_class: dict[int, int], avoided: Mapping[str, str]
) -> str | None:
    node_class = node.node_class
    if vendor_rank(spec, node_class.vendor) is None:
        return f"no runtime for vendor {node_class.vendor.value}"
    accepted = accepted_precisions(spec, node_class)
    if not accepted:
        native = [p for p in spec.precisions if p in node_class.precisions]
        if native:
            # The accelerator could, but the engine cannot (no quantized checkpoint, not across nodes, …).
            refusal = engine_refusal(spec, node_class.vendor, native[0])
            return refusal or f"precision {native[0].value} unsupported"
        wanted = [p.value for p in spec.precisions]
        return f"precision{'s' if len(wanted) > 1 else ''} {', '.join(wanted)} unsupported"
    if spec.nodes_per_replica > 1 and node.domain is None:
        return NOT_IN_FABRIC
    if spec.nodes_per_replica > 1 and not node_class.rdma:
        return NO_RDMA_NIC
    need = need_by_class.get(node.class_id)
    if need is None:
        return _too_small(spec, node)
    if node.name in avoided:
        return f"refused by kube-scheduler ({avoided[node.name]})"
    if node.free < need:
        return _short_of_devices(node, need)
    return None


def _short_of_devices(node: NodeState, need: int) -> str:
    """Why a node of a fitting class has fewer than `need` free devices, by whose doing: the reason that
    alone explains the shortfall first."""
    declared = node.node_class.devices
    if node.offered == 0:
        return node.observed.shortfall if node.observed and node.observed.shortfall else "offers no devices"
    if node.held_by_others and node.free + node.held_by_others >= need:
        return f"devices held by other pods ({node.held_by_others}/{node.offered})"
    if node.offered < declared and node.free + declared - node.offered >= need:
        return f"offers {node.offered} of {declared} devices"
    return f"insufficient free devices (need {need})"


def _too_small(spec: AgentWorkloadSpec, node: NodeState) -> str:
    nodes = spec.nodes_per_replica
    if spec.devices_per_replica != AUTO:
        per_node = int(spec.devices_per_replica) // nodes
        return f"too small for the replica (needs {per_node} devices per node)"
    _, precision = accepted_precisions(spec, node.node_class)[0]
    per_node = smallest_fit_devices(spec.model, precision, node.node_class.memory_gib, nodes)
    where = " per node" if nodes > 1 else ""
    return f"too small for the model (needs {per_node} devices{where} at {precision.value})"

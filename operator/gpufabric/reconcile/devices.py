"""What each ComputeNode offers and what others hold there, as the cluster reports it: the numbers
kube-scheduler binds against, where a ComputeNode only declares.

    offered        = min(spec.devices, what the Node advertises)
    held by others = what pods the operator does not manage take of it
    available      = offered − held by others          (the operator's own replicas count through the ledger)

What the Node advertises comes from one of two places:
- **the device plugin**: the Node's `status.allocatable` for the ComputeNode's device resource; others hold the
  requests of every bound, non-terminal pod of theirs asking for that resource;
- **Dynamic Resource Allocation**, where the Node has ResourceSlices of the ComputeNode's DRA driver: the
  whole devices in the newest generation of each of the driver's pools on that Node; others hold the devices
  allocated to ResourceClaims that are not for the operator's pods. A pool whose newest generation has fewer
  slices than it says (`resourceSliceCount`) is being updated: kube-scheduler allocates nothing from it
  (kubernetes/dynamic-resource-allocation structured/internal/stable/pools_stable.go), so it offers nothing.

A Node that is missing, or advertises none of the resource, offers 0 — and the shortfall says which.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace

from gpufabric.api import labels
from gpufabric.api.computenode import ComputeNode, DeviceSource
from gpufabric.placement.snapshot import ObservedDevices
from gpufabric.reconcile.state import (
    ClusterState,
    DraInventory,
    NodeHealth,
    ResourceClaimRecord,
    ResourceSliceRecord,
)
from gpufabric.vendors import VENDORS

# (driver, pool, device): a DRA device's identity.
DeviceId = tuple[str, str, str]

# The pods of others that can hold devices, as the API server selects them (field and label selectors: both
# the operator's watch and `gpufabric capacity --kubeconfig` list them so): bound, not finished, not the
# operator's.
OTHERS_FIELD_SELECTOR = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"
OTHERS_LABEL_SELECTOR = f"{labels.MANAGED_BY}!={labels.MANAGER}"
# The accelerator resources looked for in others' pods: every vendor's device plugin resource (ComputeNodes
# with a resourceName of their own add theirs).
VENDOR_RESOURCES = frozenset(facts.resource_name for facts in VENDORS.values())


@dataclass(frozen=True)
class _Pools:
    """The DRA devices kube-scheduler would allocate from, by (driver, Node), and pools being updated."""

    devices: Mapping[tuple[str, str], frozenset[DeviceId]]
    updating: Mapping[tuple[str, str], str]  # (driver, Node) -> why some of its devices are not offered
    published: frozenset[tuple[str, str]]  # (driver, Node) pairs any slice names


def observe_devices(
    compute_nodes: Iterable[ComputeNode],
    nodes: Mapping[str, NodeHealth],
    foreign: Mapping[str, Mapping[str, int]],
    dra: DraInventory,
    our_pods: Collection[str],
    *,
    foreign_known: bool = True,
) -> dict[str, ObservedDevices]:
    """By ComputeNode name. `foreign`: others' pods' requests by Node and resource (`foreign_known`: whether
    they could be listed). `our_pods`: namespace/name of the operator's pods (ResourceClaims for them are ours,
    not others')."""
    pools = _pools(dra.slices)
    held = _held_by_others(dra.claims, our_pods)
    observed: dict[str, ObservedDevices] = {}
    for compute_node in compute_nodes:
        spec = compute_node.spec
        drivers = [d for d in spec.dra_driver_names if (d, spec.node_name) in pools.published]
        if spec.node_name not in nodes:
            observed[compute_node.name] = ObservedDevices(0, 0, DeviceSource.NONE, f"Node {spec.node_name} missing")
        elif drivers:
            found = _from_slices(compute_node, drivers, pools, held)
            observed[compute_node.name] = replace(found, others_known=dra.claims_known)
        else:
            found = _from_allocatable(compute_node, nodes[spec.node_name], foreign)
            observed[compute_node.name] = replace(found, others_known=foreign_known)
    return observed


def _from_allocatable(
    compute_node: ComputeNode, health: NodeHealth, foreign: Mapping[str, Mapping[str, int]]
) -> ObservedDevices:
    spec = compute_node.spec
    resource = spec.device_resource_name
    others = (foreign.get(spec.node_name) or {}).get(resource, 0)
    advertised = health.allocatable.get(resource)
    if advertised is None or advertised <= 0:
        return ObservedDevices(0, others, DeviceSource.NONE, f"advertises no {resource}")
    offered = min(spec.devices, advertised)
    shortfall = f"advertises {advertised} {resource} of {spec.devices} declared" if advertised < spec.devices else None
    return ObservedDevices(offered, others, DeviceSource.DEVICE_PLUGIN, shortfall)


def _from_slices(
    compute_node: ComputeNode, drivers: list[str], pools: _Pools, held: frozenset[DeviceId]
) -> ObservedDevices:
    spec = compute_node.spec
    devices: set[DeviceId] = set()
    updating: list[str] = []
    for driver in drivers:
        devices |= pools.devices.get((driver, spec.node_name), frozenset())
        if (driver, spec.node_name) in pools.updating:
            updating.append(pools.updating[(driver, spec.node_name)])
    offered = min(spec.devices, len(devices))
    others = len(devices & held)
    shortfall = None
    if updating:
        shortfall = "; ".join(updating)
    elif not devices:
        shortfall = f"publishes no devices of {', '.join(drivers)}"
    elif len(devices) < spec.devices:
        shortfall = f"publishes {len(devices)} devices of {', '.join(drivers)} of {spec.devices} declared"
    source = DeviceSource.DRA if devices else DeviceSource.NONE
    return ObservedDevices(offered, others, source, shortfall)


def _pools(slices: Iterable[ResourceSliceRecord]) -> _Pools:
    newest: dict[tuple[str, str], list[ResourceSliceRecord]] = defaultdict(list)
    published: set[tuple[str, str]] = set()
    for item in slices:
        if item.node is None:
            continue  # network-attached devices belong to no one Node's count
        published.add((item.driver, item.node))
        key = (item.driver, item.pool)
        kept = newest[key]
        if kept and kept[0].generation > item.generation:
            continue  # an older generation, being replaced
        if kept and kept[0].generation < item.generation:
            kept.clear()
        kept.append(item)
    devices: dict[tuple[str, str], set[DeviceId]] = defaultdict(set)
    updating: dict[tuple[str, str], str] = {}
    for (driver, pool), kept in sorted(newest.items()):
        expected = max(s.slice_count for s in kept)
        for item in kept:
            assert item.node is not None
            if len(kept) < expected:
                updating[(driver, item.node)] = (
                    f"DRA pool {pool} of {driver} is being updated ({len(kept)} of {expected} slices)"
                )
                continue
            devices[(driver, item.node)] |= {(driver, pool, name) for name in item.devices}
    return _Pools(
        devices={key: frozenset(found) for key, found in devices.items()},
        updating=updating,
        published=frozenset(published),
    )


def _held_by_others(claims: Iterable[ResourceClaimRecord], our_pods: Collection[str]) -> frozenset[DeviceId]:
    held: set[DeviceId] = set()
    for claim in claims:
        if any(pod in our_pods for pod in claim.pods):
            continue  # kube-scheduler's claim for one of our pods: the ledger counts it
        held.update(claim.allocated)
    return frozenset(held)


def observed_in(state: ClusterState) -> dict[str, ObservedDevices]:
    """`observe_devices` over a pass's state."""
    ours = {pod.ref.key for pod in state.pods}
    return observe_devices(
        state.compute_nodes.values(), state.nodes, state.foreign, state.dra, ours, foreign_known=state.foreign_known
    )

"""The fleet as placement sees it: nodes grouped into classes, their free devices, and an index of free
devices per (class, RoCE domain) so a decision looks at buckets, not at every node.

A Snapshot is built from plain data (ComputeNodes, readiness, what each node's Node offers and what pods
of others hold there, replicas already running) and changed only through `allocate` and `release`, which
keep every index consistent; `release` undoes `allocate`, so what-if questions (preemption, autoscaling)
can try a change and take it back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from gpufabric.api.computenode import ComputeNode, DeviceSource
from gpufabric.api.refs import Allocation
from gpufabric.vendors import Precision, Vendor


@dataclass(frozen=True)
class NodeClass:
    """Nodes placement cannot tell apart: same accelerator, memory, precisions, device count and RDMA."""

    vendor: Vendor
    accelerator: str
    memory_gib: float
    precisions: frozenset[Precision]
    devices: int
    rdma: bool

    @property
    def precision_key(self) -> tuple[str, ...]:
        return tuple(sorted(self.precisions))


@dataclass(frozen=True)
class ObservedDevices:
    """What a ComputeNode's Node offers now and what pods the operator does not manage hold there: the cluster's
    view, which kube-scheduler binds against, where the ComputeNode only declares."""

    offered: int  # at most the ComputeNode's spec.devices
    held_by_others: int = 0
    source: DeviceSource = DeviceSource.DEVICE_PLUGIN
    # why fewer devices are offered than declared, in words (None when as declared)
    shortfall: str | None = None
    # False while others' pods (or claims) cannot be listed: held_by_others is then 0 for want of knowing
    others_known: bool = True

    @property
    def available(self) -> int:
        """Devices the operator's replicas may take, before its own allocations."""
        return max(self.offered - self.held_by_others, 0)


@dataclass(eq=False)
class NodeState:
    """One ComputeNode and what is allocated on it. Mutated only by Snapshot."""

    name: str
    node_class: NodeClass
    class_id: int
    domain: str | None
    labels: Mapping[str, str]
    ready: bool
    cordoned: bool
    free: int
    # workload key -> replicas of it on this node (spreading looks here)
    replicas: Counter[str] = field(default_factory=Counter)
    # what the cluster reports (declared devices, nothing held by others, when there is no observation)
    observed: ObservedDevices | None = None

    @property
    def schedulable(self) -> bool:
        return self.ready and not self.cordoned

    @property
    def offered(self) -> int:
        return self.observed.offered if self.observed else self.node_class.devices

    @property
    def held_by_others(self) -> int:
        return self.observed.held_by_others if self.observed else 0

    @property
    def capacity(self) -> int:
        """Devices the operator's replicas may hold here in all."""
        return max(self.offered - self.held_by_others, 0)


@dataclass(frozen=True)
class ExistingReplica:
    """A replica already running (from the operator's ledger, or from status in files): what it reserves."""

    workload: str
    replica: int
    nodes: tuple[str, ...]
    devices_per_node: int

    @classmethod
    def of(cls, workload: str, replica: int, allocation: Allocation) -> ExistingReplica:
        return cls(workload, replica, allocation.nodes, allocation.devices_per_node)


class BucketIndex:
    """Schedulable nodes with free devices, by (class, domain) and free count.

    `buckets[(class_id, domain)][free]` holds the nodes with exactly `free` free devices, in a stable order
    (node name at build time, then the order they arrived), so best-fit is a walk up from the devices
    needed and ties break the same way every run."""

    def __init__(self, nodes: Iterable[NodeState]) -> None:
        self.buckets: dict[tuple[int, str | None], list[dict[str, NodeState]]] = {}
        self.members: set[str] = set()
        # class id -> its domains in this index, sorted (None, "no domain", first)
        self._domains: dict[int, list[str | None]] = {}
        for node in nodes:
            self.members.add(node.name)
            self._insert(node)

    def _slots(self, node: NodeState) -> list[dict[str, NodeState]]:
        key = (node.class_id, node.domain)
        slots = self.buckets.get(key)
        if slots is None:
            slots = [{} for _ in range(node.node_class.devices + 1)]
            self.buckets[key] = slots
            domains = self._domains.setdefault(node.class_id, [])
            domains.append(node.domain)
            domains.sort(key=lambda d: d or "")
        return slots

    def _insert(self, node: NodeState) -> None:
        if node.schedulable and node.free > 0:
            self._slots(node)[node.free][node.name] = node

    def move(self, node: NodeState, old_free: int) -> None:
        if node.name not in self.members:
            return
        if node.schedulable and old_free > 0:
            self._slots(node)[old_free].pop(node.name, None)
        self._insert(node)

    def domains(self, class_id: int) -> list[str | None]:
        return self._domains.get(class_id, [])

    def tightest(self, class_id: int, domain: str | None, devices: int) -> int | None:
        """The fewest free devices, at least `devices`, that a node of the class in the domain has."""
        slots = self.buckets.get((class_id, domain))
        if slots:
            for free in range(devices, len(slots)):
                if slots[free]:
                    return free
        return None

    def at_least(self, class_id: int, domain: str | None, devices: int) -> Iterator[tuple[int, NodeState]]:
        """(free, node) for nodes with at least `devices` free, fullest first (best fit)."""
        slots = self.buckets.get((class_id, domain))
        if not slots:
            return
        for free in range(devices, len(slots)):
            bucket = slots[free]
            if bucket:
                # No copy: callers finish (or abandon) the walk before they allocate.
                for node in bucket.values():
                    yield free, node


class Snapshot:
    def __init__(
        self,
        nodes: Iterable[tuple[ComputeNode, bool]],
        existing: Iterable[ExistingReplica] = (),
        observed: Mapping[str, ObservedDevices] | None = None,
    ) -> None:
        """`nodes`: each ComputeNode with whether its Kubernetes Node is Ready. `existing`: replicas running.
        `observed`: by ComputeNode name, what its Node offers and others hold (without an entry, a node offers
        what it declares and nobody else holds any: manifests read from files)."""
        observed = observed or {}
        classes: dict[tuple[object, ...], NodeClass] = {}
        states: list[tuple[str, NodeClass, ComputeNode, bool]] = []
        for compute_node, ready in sorted(nodes, key=lambda pair: pair[0].name):
            spec = compute_node.spec
            node_class = NodeClass(
                vendor=spec.vendor,
                accelerator=spec.accelerator,
                memory_gib=spec.memory_per_device_gib,
                precisions=spec.supported_precisions,
                devices=spec.devices,
                rdma=spec.fabric is not None and spec.has_rdma,
            )
            identity = (*_class_key(node_class),)
            node_class = classes.setdefault(identity, node_class)
            states.append((compute_node.name, node_class, compute_node, ready))
        self.classes: list[NodeClass] = sorted(classes.values(), key=_class_key)
        class_ids = {_class_key(c): i for i, c in enumerate(self.classes)}
        self.nodes: dict[str, NodeState] = {}
        for name, node_class, compute_node, ready in states:
            seen = observed.get(name)
            if seen is not None and seen.offered > node_class.devices:
                seen = replace(seen, offered=node_class.devices)
            state = NodeState(
                name=name,
                node_class=node_class,
                class_id=class_ids[_class_key(node_class)],
                domain=compute_node.spec.roce_domain,
                labels=compute_node.selection_labels,
                ready=ready,
                cordoned=compute_node.spec.unschedulable,
                free=0,
                observed=seen,
            )
            state.free = state.capacity
            self.nodes[name] = state
        # Replicas whose nodes are gone: the caller must act on them.
        self.orphaned: list[ExistingReplica] = []
        for replica in existing:
            if any(n not in self.nodes for n in replica.nodes):
                self.orphaned.append(replica)
                continue
            for name in replica.nodes:
                node = self.nodes[name]
                node.free -= replica.devices_per_node
                node.replicas[replica.workload] += 1
        for node in self.nodes.values():
            # A node holding more than it has (its spec shrank under running replicas, or others took devices
            # the ledger still counts as ours) has nothing free; its ComputeNode's status says so.
            node.free = max(node.free, 0)
        self.domain_devices: Counter[str | None] = Counter()
        self.domain_free: Counter[str | None] = Counter()
        self.domain_replicas: dict[str | None, Counter[str]] = {}
        for node in self.nodes.values():
            self.domain_devices[node.domain] += node.node_class.devices
            self.domain_free[node.domain] += node.free
            self.domain_replicas.setdefault(node.domain, Counter()).update(node.replicas)
        self._views: dict[Hashable, BucketIndex] = {None: BucketIndex(self.nodes.values())}

    # --- reading ---------------------------------------------------------------------------------

    def view(self, key: Hashable, eligible: Callable[[NodeState], bool]) -> BucketIndex:
        """The bucket index over the nodes `eligible` admits (built once per key, then kept current)."""
        index = self._views.get(key)
        if index is None:
            index = BucketIndex(node for node in self.nodes.values() if eligible(node))
            self._views[key] = index
        return index

    def class_free(self) -> list[int]:
        free = [0] * len(self.classes)
        for node in self.nodes.values():
            if node.schedulable:
                free[node.class_id] += node.free
        return free

    # --- changing --------------------------------------------------------------------------------

    def allocate(self, workload: str, nodes: Iterable[str], devices_per_node: int) -> None:
        names = list(nodes)
        for name in names:
            if self.nodes[name].free < devices_per_node:
                raise ValueError(f"node {name} has {self.nodes[name].free} free devices, not {devices_per_node}")
        for name in names:
            self._change(name, -devices_per_node)
            self.nodes[name].replicas[workload] += 1
            self.domain_replicas.setdefault(self.nodes[name].domain, Counter())[workload] += 1

    def release(self, workload: str, nodes: Iterable[str], devices_per_node: int) -> None:
        """Undo `allocate`: the seam a preemptor would use to ask "what if this replica were gone?". Free
        devices, replica counts and bucket membership return exactly (a released node rejoins its bucket
        last, so ties among equally full nodes may then break in another order)."""
        for name in nodes:
            node = self.nodes[name]
            if node.replicas[workload] < 1:
                raise ValueError(f"node {name} holds no replica of {workload}")
            if node.free + devices_per_node > node.capacity:
                raise ValueError(f"node {name} would have more free devices than it has")
            self._change(name, devices_per_node)
            node.replicas[workload] -= 1
            self.domain_replicas[node.domain][workload] -= 1

    def _change(self, name: str, delta: int) -> None:
        node = self.nodes[name]
        old = node.free
        node.free += delta
        self.domain_free[node.domain] += delta
        for index in self._views.values():
            index.move(node, old)


def _class_key(node_class: NodeClass) -> tuple[object, ...]:
    return (
        node_class.vendor.value,
        node_class.accelerator,
        node_class.memory_gib,
        node_class.precision_key,
        node_class.devices,
        node_class.rdma,
    )

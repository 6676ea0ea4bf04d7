"""The allocation ledger: the operator's pods grouped into replicas, and what each replica holds.

Every pod records its workload, replica, rank, node, devices and its replica's nodes, so a replica is
fully known from any one of its pods. A replica reserves devices on all its nodes as long as any of its
pods exists — also while rank pods are still missing (a pass that died between creating rank 0 and rank 1)
or terminating — so nothing is ever promised twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gpufabric.api.computenode import ComputeNode
from gpufabric.api.refs import Allocation, ObjectRef
from gpufabric.placement.snapshot import ExistingReplica, ObservedDevices, Snapshot
from gpufabric.reconcile.state import NodeHealth, PodRecord


@dataclass(frozen=True)
class LedgerReplica:
    workload: ObjectRef
    replica: int
    allocation: Allocation  # as its lowest-ranked pod records it
    template_hash: str
    pods: tuple[PodRecord, ...]

    @property
    def workload_key(self) -> str:
        return self.workload.key

    @property
    def nodes(self) -> tuple[str, ...]:
        return self.allocation.nodes

    @property
    def consistent(self) -> bool:
        """Every pod agrees on the replica's allocation and sits where its rank belongs."""
        return all(
            0 <= pod.rank < len(self.nodes)
            and pod.compute_node == self.nodes[pod.rank]
            and pod.allocation == self.allocation
            for pod in self.pods
        ) and len({pod.rank for pod in self.pods}) == len(self.pods)

    @property
    def terminating(self) -> bool:
        return any(pod.terminating for pod in self.pods)

    @property
    def missing_ranks(self) -> tuple[int, ...]:
        present = {pod.rank for pod in self.pods}
        return tuple(rank for rank in range(len(self.nodes)) if rank not in present)

    @property
    def complete(self) -> bool:
        return self.consistent and not self.missing_ranks and not self.terminating

    @property
    def ready(self) -> bool:
        return self.complete and all(pod.ready for pod in self.pods)

    def reservation(self) -> ExistingReplica:
        return ExistingReplica.of(self.workload_key, self.replica, self.allocation)


def replicas_of(pods: Iterable[PodRecord]) -> list[LedgerReplica]:
    """Group pods into replicas, sorted by workload and replica index. The replica's shape comes from its
    lowest-ranked pod; pods that disagree make the replica inconsistent (it is then replaced whole)."""
    grouped: dict[tuple[ObjectRef, int], list[PodRecord]] = defaultdict(list)
    for pod in pods:
        grouped[(pod.workload, pod.replica)].append(pod)
    replicas = []
    for (workload, index), members in sorted(grouped.items()):
        members.sort(key=lambda p: (p.rank, p.name))
        first = members[0]
        replicas.append(LedgerReplica(workload, index, first.allocation, first.template_hash, tuple(members)))
    return replicas


def fleet_snapshot(
    compute_nodes: Iterable[ComputeNode],
    nodes: Mapping[str, NodeHealth],
    replicas: Iterable[LedgerReplica],
    observed: Mapping[str, ObservedDevices] | None = None,
) -> Snapshot:
    """The fleet as placement sees it now: a ComputeNode takes new replicas only while its Node exists and is
    Ready (the snapshot itself keeps cordoned ones out), on the devices its Node offers less those others hold
    (`observed`, by ComputeNode), and every ledger replica holds its devices."""
    return Snapshot(
        [(node, _node_ready(nodes.get(node.spec.node_name))) for node in compute_nodes],
        [replica.reservation() for replica in replicas],
        observed,
    )


def _node_ready(health: NodeHealth | None) -> bool:
    return health is not None and health.ready

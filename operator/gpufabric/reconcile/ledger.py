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
from gpufabric.placement.snapshot import ExistingReplica, Snapshot
from gpufabric.reconcile.state import NodeHealth, PodRecord
from gpufabric.vendors import Precision, Vendor


@dataclass(frozen=True)
class LedgerReplica:
    namespace: str
    workload: str
    replica: int
    nodes: tuple[str, ...]
    devices_per_node: int
    vendor: Vendor
    accelerator: str
    precision: Precision
    template_hash: str
    pods: tuple[PodRecord, ...]

    @property
    def workload_key(self) -> str:
        return f"{self.namespace}/{self.workload}"

    @property
    def consistent(self) -> bool:
        """Every pod agrees on the replica's shape and sits where its rank belongs."""
        return all(
            0 <= pod.rank < len(self.nodes)
            and pod.compute_node == self.nodes[pod.rank]
            and pod.replica_nodes == self.nodes
            and pod.devices == self.devices_per_node
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
        return ExistingReplica(self.workload_key, self.replica, self.nodes, self.devices_per_node)


def replicas_of(pods: Iterable[PodRecord]) -> list[LedgerReplica]:
    """Group pods into replicas, sorted by workload and replica index. The replica's shape comes from its
    lowest-ranked pod; pods that disagree make the replica inconsistent (it is then replaced whole)."""
    grouped: dict[tuple[str, str, int], list[PodRecord]] = defaultdict(list)
    for pod in pods:
        grouped[(pod.namespace, pod.workload, pod.replica)].append(pod)
    replicas = []
    for (namespace, workload, index), members in sorted(grouped.items()):
        members.sort(key=lambda p: (p.rank, p.name))
        first = members[0]
        replicas.append(
            LedgerReplica(
                namespace=namespace,
                workload=workload,
                replica=index,
                nodes=first.replica_nodes,
                devices_per_node=first.devices,
                vendor=first.vendor,
                accelerator=first.accelerator,
                precision=first.precision,
                template_hash=first.template_hash,
                pods=tuple(members),
            )
        )
    return replicas


def fleet_snapshot(
    compute_nodes: Iterable[ComputeNode], nodes: Mapping[str, NodeHealth], replicas: Iterable[LedgerReplica]
) -> Snapshot:
    """The fleet as placement sees it now: a ComputeNode takes new replicas only while its Node exists and is
    Ready (the snapshot itself keeps cordoned ones out), and every ledger replica holds its devices."""
    return Snapshot(
        [(node, _node_ready(nodes.get(node.spec.node_name))) for node in compute_nodes],
        [replica.reservation() for replica in replicas],
    )


def _node_ready(health: NodeHealth | None) -> bool:
    return health is not None and health.ready

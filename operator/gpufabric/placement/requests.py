"""What is asked of placement: replicas of AgentWorkloads, in the order they get to choose."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from gpufabric.api.agentworkload import AgentWorkload, AgentWorkloadSpec
from gpufabric.placement.snapshot import ExistingReplica

_NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class WorkloadRequest:
    key: str
    spec: AgentWorkloadSpec
    created: datetime | None = None
    # (ComputeNode, what kube-scheduler said) for nodes it refused a replica of this workload on: not chosen
    # again until their devices change (the reconcile pass decides when)
    avoid: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, workload: AgentWorkload, avoid: Mapping[str, str] | None = None) -> WorkloadRequest:
        return cls(
            key=workload.key,
            spec=workload.spec,
            created=workload.metadata.creation_timestamp,
            avoid=tuple(sorted((avoid or {}).items())),
        )

    @property
    def priority(self) -> int:
        return self.spec.priority


@dataclass(frozen=True)
class ReplicaRequest:
    workload: WorkloadRequest
    replica: int

    @property
    def order(self) -> tuple[int, datetime, str, int]:
        """Higher priority first, then older workloads, then by name and replica index: a total order, so the
        same requests are always placed in the same sequence."""
        created = self.workload.created or _NEVER
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        return (-self.workload.priority, created, self.workload.key, self.replica)


def pending_replicas(
    workloads: Iterable[WorkloadRequest], existing: Iterable[ExistingReplica] = ()
) -> list[ReplicaRequest]:
    """Replica indexes 0..replicas-1 that have no running replica yet, in placement order."""
    running = {(r.workload, r.replica) for r in existing}
    pending = [
        ReplicaRequest(workload, index)
        for workload in workloads
        for index in range(workload.spec.replicas)
        if (workload.key, index) not in running
    ]
    return sorted(pending, key=lambda r: r.order)

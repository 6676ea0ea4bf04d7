"""What one reconcile pass knows about the cluster: plain data, built from the operator's indexes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from gpufabric.api.agentworkload import AgentWorkload
from gpufabric.api.common import Condition
from gpufabric.api.computenode import ComputeNode
from gpufabric.api.refs import Allocation, ObjectRef
from gpufabric.throughput.tracker import TokenReport


@dataclass(frozen=True)
class PodRecord:
    """One pod the operator owns, as its labels and annotations describe it. The allocation ledger is the
    set of these: rebuilt from the cluster after a restart, it is exactly what was allocated."""

    ref: ObjectRef
    workload: ObjectRef
    replica: int
    rank: int
    compute_node: str  # where this rank runs: its replica's allocation.nodes[rank] unless someone edited it
    allocation: Allocation  # its whole replica's
    template_hash: str
    ready: bool = False
    terminating: bool = False
    # kube-scheduler could not place it (PodScheduled=False, reason Unschedulable); its message
    unschedulable: str | None = None
    # where its metrics can be scraped
    ip: str | None = None
    # the ConfigMap its engine's files come from (deleted with the replica)
    engine_config: str | None = None
    # container restarts, and whether the pod failed for good (evicted, …): a gang then restarts whole
    restarts: int = 0
    failed: bool = False

    @property
    def name(self) -> str:
        return self.ref.name


@dataclass(frozen=True)
class NodeHealth:
    """A Kubernetes Node's readiness, and since when (the Ready condition's lastTransitionTime)."""

    ready: bool
    since: datetime | None = None
    # what the device plugins advertise (status.allocatable), by resource name
    allocatable: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class OwnedService:
    ref: ObjectRef
    workload: ObjectRef
    replica: int | None = None  # a gang replica's headless Service; None for the workload's client Service


@dataclass(frozen=True)
class InvalidWorkload:
    """An AgentWorkload the models refuse (the API server's schema normally stops these first)."""

    ref: ObjectRef
    uid: str | None
    generation: int | None
    problems: tuple[str, ...]
    # its current conditions, so the status is patched (and the event sent) only when something changes
    conditions: tuple[Condition, ...] = ()

    @property
    def key(self) -> str:
        return self.ref.key


@dataclass(frozen=True)
class ClusterState:
    compute_nodes: Mapping[str, ComputeNode]
    nodes: Mapping[str, NodeHealth]
    workloads: Mapping[str, AgentWorkload]
    pods: tuple[PodRecord, ...]
    # namespace/name of Services the operator owns -> (workload name, replica index for headless ones)
    services: Mapping[str, OwnedService]
    now: datetime
    invalid_workloads: Mapping[str, InvalidWorkload] = field(default_factory=dict)
    # measured tokens/s and autoscaler recommendations (None until the first scrape)
    tokens: TokenReport | None = None
    # objects whose tokensPerSecond was last written longer ago than the minimum interval: they may be
    # refreshed even if the value barely moved
    tokens_stale: frozenset[ObjectRef] = frozenset()

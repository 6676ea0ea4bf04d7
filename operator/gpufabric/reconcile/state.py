"""What one reconcile pass knows about the cluster: plain data, built from the operator's indexes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
    # kube-scheduler could not place it (PodScheduled=False, reason Unschedulable); its message, and since when
    unschedulable: str | None = None
    unschedulable_since: datetime | None = None
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
class ForeignPod:
    """A pod the operator does not manage that holds accelerators: all that is kept of it."""

    key: str  # namespace/name
    node: str
    requests: tuple[tuple[str, int], ...]  # (resource, quantity), only accelerator resources


def foreign_requests(pods: Iterable[ForeignPod]) -> dict[str, dict[str, int]]:
    """By Node and resource, what pods of others request."""
    total: dict[str, dict[str, int]] = {}
    for pod in pods:
        per_node = total.setdefault(pod.node, {})
        for resource, quantity in pod.requests:
            per_node[resource] = per_node.get(resource, 0) + quantity
    return total


@dataclass(frozen=True)
class ResourceSliceRecord:
    """A resource.k8s.io/v1 ResourceSlice, as far as capacity needs it: whose devices, on which Node."""

    name: str
    driver: str
    pool: str
    generation: int
    slice_count: int  # the pool's spec.pool.resourceSliceCount: a pool with fewer slices is being updated
    node: str | None  # spec.nodeName; None for slices not local to one Node (network-attached devices)
    devices: tuple[str, ...]  # whole devices (partitions such as MIG slices left out)


@dataclass(frozen=True)
class ResourceClaimRecord:
    """A resource.k8s.io/v1 ResourceClaim's allocation and who it is for."""

    key: str  # namespace/name
    allocated: tuple[tuple[str, str, str], ...]  # (driver, pool, device) of status.allocation.devices.results
    # namespace/name of the pods in status.reservedFor and of the pod owning it (kube-scheduler's claims for
    # pods asking for an extended resource that DRA serves)
    pods: tuple[str, ...] = ()


@dataclass(frozen=True)
class DraInventory:
    slices: tuple[ResourceSliceRecord, ...] = ()
    claims: tuple[ResourceClaimRecord, ...] = ()
    # False while ResourceClaims cannot be listed
    claims_known: bool = True


@dataclass(frozen=True)
class Avoidance:
    """A ComputeNode kube-scheduler would not bind a replica of a workload to: not chosen again for that
    workload while what the node offers and others hold there stay as they were."""

    message: str  # what kube-scheduler said, short
    offered: int
    held_by_others: int
    since: datetime


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
    # devices pods the operator does not manage request, by Node name and resource (bound, not terminal pods)
    foreign: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    # whether `foreign` is known (False while others' pods cannot be listed: then they are assumed to hold none)
    foreign_known: bool = True
    dra: DraInventory = field(default_factory=DraInventory)
    # namespaces being deleted: their workloads get nothing new
    terminating_namespaces: frozenset[str] = frozenset()
    # workload key -> ComputeNode -> why not there (kept by the controller from pass to pass)
    avoided: Mapping[str, Mapping[str, Avoidance]] = field(default_factory=dict)

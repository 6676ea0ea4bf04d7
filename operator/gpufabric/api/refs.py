"""Identities and allocations as values, so nothing is built into a string and parsed back.

`ObjectRef` names one Kubernetes object (kind, namespace, name): every action a reconcile pass asks for
carries the ref of what it writes and of the AgentWorkload it serves, and retries, events, metrics and token
bookkeeping key on refs. `Allocation` is where one replica runs — vendor, accelerator, precision, devices
per node and its nodes, rank 0 first — the one record placement decisions, the pod ledger, status and
scrape targets share."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gpufabric.vendors import Precision, Vendor


class Kind(StrEnum):
    POD = "Pod"
    SERVICE = "Service"
    CONFIG_MAP = "ConfigMap"
    AGENT_WORKLOAD = "AgentWorkload"
    COMPUTE_NODE = "ComputeNode"


@dataclass(frozen=True, order=True)
class ObjectRef:
    kind: Kind
    namespace: str | None  # None: cluster-scoped
    name: str

    @property
    def key(self) -> str:
        """`namespace/name` (or `name`): how the operator's indexes key the object."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def __str__(self) -> str:
        return f"{self.kind.value} {self.key}"


def workload_ref(namespace: str, name: str) -> ObjectRef:
    return ObjectRef(Kind.AGENT_WORKLOAD, namespace, name)


@dataclass(frozen=True)
class Allocation:
    vendor: Vendor
    accelerator: str
    precision: Precision
    devices_per_node: int
    nodes: tuple[str, ...]  # ComputeNodes, rank 0 first

    @property
    def devices(self) -> int:
        return self.devices_per_node * len(self.nodes)

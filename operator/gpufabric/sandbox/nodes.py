"""The Kubernetes Node a ComputeNode describes, as its kubelet and device plugins would register it."""

from __future__ import annotations

from gpufabric import vendors
from gpufabric.api.computenode import ComputeNode
from gpufabric.reconcile.discovery import ACCELERATOR_LABEL, ROCE_DOMAIN_LABEL

# The RDMA shared device plugin advertises many slots per NIC; a simulated Node advertises as many.
RDMA_SHARED_DEVICES = "1000"


def device_plugin_resources(compute_node: ComputeNode) -> dict[str, str]:
    """What the device plugins on a ComputeNode's Node advertise: its devices, and RDMA if it has NICs."""
    spec = compute_node.spec
    resources = {spec.device_resource_name: str(spec.devices)}
    if spec.rdma_resource:
        resources[spec.rdma_resource] = RDMA_SHARED_DEVICES
    return resources


def node_labels(compute_node: ComputeNode) -> dict[str, str]:
    """The labels the vendor's feature discovery would publish (so `--discover-nodes` would find the same
    ComputeNode), the accelerator and the RoCE domain."""
    spec = compute_node.spec
    discovery = vendors.facts(spec.vendor).discovery
    result = {discovery.presence_key: discovery.presence_value or "true", ACCELERATOR_LABEL: spec.accelerator}
    if spec.fabric is not None and spec.fabric.roce_domain:
        result[ROCE_DOMAIN_LABEL] = spec.fabric.roce_domain
    return result

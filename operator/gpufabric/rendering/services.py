"""The Services of a workload: one ClusterIP for clients, one headless per multi-node replica."""

from __future__ import annotations

from typing import Any

from gpufabric.api import labels
from gpufabric.api.agentworkload import DEFAULT_PORT, AgentWorkload
from gpufabric.rendering.names import client_service_name, owner_reference, replica_service_name, selector_labels
from gpufabric.rendering.pods import RENDEZVOUS_PORT


def render_client_service(workload: AgentWorkload) -> dict[str, Any]:
    """Clients reach every ready replica's rank 0 (the pod serving the API) on one stable port; the target
    is the pods' named `http` port, whichever vendor's runtime listens where."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": client_service_name(workload.name),
            "namespace": workload.namespace,
            "labels": {**selector_labels(workload.name), labels.NAME: workload.name},
            "ownerReferences": [owner_reference(workload)],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {**selector_labels(workload.name), labels.RANK: "0"},
            "ports": [{"name": "http", "port": DEFAULT_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def render_replica_service(workload: AgentWorkload, replica: int) -> dict[str, Any]:
    """Headless, publishing not-ready pods: a gang's ranks find rank 0 by DNS while they start together."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": replica_service_name(workload.name, replica),
            "namespace": workload.namespace,
            "labels": {**selector_labels(workload.name), labels.NAME: workload.name, labels.REPLICA: str(replica)},
            "ownerReferences": [owner_reference(workload)],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {**selector_labels(workload.name), labels.REPLICA: str(replica)},
            "ports": [
                {"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT, "protocol": "TCP"}
            ],
        },
    }

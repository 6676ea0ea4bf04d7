"""Names of what the operator creates. Stable, so a restarted operator finds its own pods, and gang
members can address rank 0 by DNS before anything is ready."""

from __future__ import annotations

from gpufabric.api import labels
from gpufabric.api.agentworkload import AgentWorkload


def pod_name(workload: str, replica: int, rank: int) -> str:
    return f"{workload}-{replica}-{rank}"


def replica_service_name(workload: str, replica: int) -> str:
    """Headless Service of a multi-node replica: its pods resolve as `<pod>.<service>.<namespace>.svc`."""
    return f"{workload}-{replica}"


def engine_config_name(workload: str, replica: int) -> str:
    """ConfigMap holding the files a replica's engine reads (MindIE's config.json)."""
    return f"{workload}-{replica}-engine"


def client_service_name(workload: str) -> str:
    return workload


def leader_address(workload: AgentWorkload, replica: int) -> str:
    """DNS name of rank 0 of a replica, through its headless Service."""
    service = replica_service_name(workload.name, replica)
    return f"{pod_name(workload.name, replica, 0)}.{service}.{workload.namespace}.svc"


def selector_labels(workload: str) -> dict[str, str]:
    """The labels every pod of a workload carries; `status.selector` for the scale subresource."""
    return {labels.MANAGED_BY: labels.MANAGER, labels.WORKLOAD: workload}


def selector_string(workload: str) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(selector_labels(workload).items()))


def owner_reference(workload: AgentWorkload) -> dict[str, object]:
    """The pod and Service owner: deleting the AgentWorkload lets Kubernetes' garbage collector remove
    them, so no finalizer is needed."""
    return {
        "apiVersion": workload.api_version,
        "kind": workload.kind,
        "name": workload.name,
        "uid": workload.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }

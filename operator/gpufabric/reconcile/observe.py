"""Kubernetes objects (plain dicts, as the API returns them) into the pass's state: the one place where the
wire format of Pods, Nodes, Services and our own kinds becomes core data."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from gpufabric.api import labels
from gpufabric.api.agentworkload import AgentWorkload
from gpufabric.api.common import Condition
from gpufabric.api.computenode import ComputeNode
from gpufabric.api.objects import problems
from gpufabric.api.reasons import KUBE_SCHEDULER_UNSCHEDULABLE
from gpufabric.api.refs import Allocation, Kind, ObjectRef, workload_ref
from gpufabric.reconcile.state import (
    ForeignPod,
    InvalidWorkload,
    NodeHealth,
    OwnedService,
    PodRecord,
    ResourceClaimRecord,
    ResourceSliceRecord,
)
from gpufabric.vendors import Precision, Vendor


class NotOurs(ValueError):  # noqa: N818 - a verdict, not an error condition
    """The object carries our labels but not a readable allocation record."""


def is_managed(body: Mapping[str, Any]) -> bool:
    return bool((body.get("metadata") or {}).get("labels", {}).get(labels.MANAGED_BY) == labels.MANAGER)


def pod_record(body: Mapping[str, Any]) -> PodRecord:
    """The allocation a pod records. Raises NotOurs when its labels or annotations are unreadable (someone
    edited them): such a pod is reported, never trusted."""
    meta = body.get("metadata") or {}
    pod_labels = meta.get("labels") or {}
    notes = meta.get("annotations") or {}
    try:
        replica_nodes = tuple(n for n in str(notes[labels.REPLICA_NODES]).split(",") if n)
        record = PodRecord(
            ref=ObjectRef(Kind.POD, meta["namespace"], meta["name"]),
            workload=workload_ref(meta["namespace"], pod_labels[labels.WORKLOAD]),
            replica=int(pod_labels[labels.REPLICA]),
            rank=int(pod_labels[labels.RANK]),
            compute_node=notes[labels.COMPUTE_NODE],
            allocation=Allocation(
                vendor=Vendor(notes[labels.VENDOR]),
                accelerator=notes[labels.ACCELERATOR],
                precision=Precision(notes[labels.PRECISION]),
                devices_per_node=int(notes[labels.DEVICES]),
                nodes=replica_nodes,
            ),
            template_hash=notes.get(labels.TEMPLATE_HASH, ""),
            ready=_pod_ready(body),
            terminating=bool(meta.get("deletionTimestamp")),
            unschedulable=unschedulable[0] if (unschedulable := _unschedulable(body)) else None,
            unschedulable_since=unschedulable[1] if unschedulable else None,
            ip=(body.get("status") or {}).get("podIP"),
            engine_config=notes.get(labels.ENGINE_CONFIG),
            restarts=sum(int(c.get("restartCount") or 0) for c in _container_statuses(body)),
            failed=(body.get("status") or {}).get("phase") == "Failed",
        )
    except (KeyError, ValueError, TypeError) as error:
        raise NotOurs(
            f"pod {meta.get('namespace')}/{meta.get('name')}: unreadable allocation record: {error!r}"
        ) from None
    if not replica_nodes or record.allocation.devices_per_node < 1 or record.rank < 0 or record.replica < 0:
        raise NotOurs(f"pod {record.ref.key}: allocation record out of range")
    return record


def _container_statuses(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((body.get("status") or {}).get("containerStatuses") or [])


def _conditions(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((body.get("status") or {}).get("conditions") or [])


def _pod_ready(body: Mapping[str, Any]) -> bool:
    status = body.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in _conditions(body)
    )


def _unschedulable(body: Mapping[str, Any]) -> tuple[str, datetime | None] | None:
    """kube-scheduler's message and since when it has refused the pod (PodScheduled's lastTransitionTime:
    the scheduler's retries update the message, not the transition)."""
    for condition in _conditions(body):
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == KUBE_SCHEDULER_UNSCHEDULABLE
        ):
            return str(condition.get("message") or "unschedulable"), _timestamp(condition.get("lastTransitionTime"))
    return None


def node_health(body: Mapping[str, Any]) -> NodeHealth:
    ready = False
    since: datetime | None = None
    for condition in _conditions(body):
        if condition.get("type") == "Ready":
            ready = condition.get("status") == "True"
            since = _timestamp(condition.get("lastTransitionTime"))
    allocatable: dict[str, int] = {}
    for name, value in ((body.get("status") or {}).get("allocatable") or {}).items():
        if "/" in name:  # extended resources: integer counts
            try:
                allocatable[name] = int(str(value))
            except ValueError:
                continue
    return NodeHealth(ready=ready, since=since, allocatable=allocatable)


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def owned_service(body: Mapping[str, Any]) -> OwnedService | None:
    if not is_managed(body):
        return None
    meta = body.get("metadata") or {}
    service_labels = meta.get("labels") or {}
    workload = service_labels.get(labels.WORKLOAD)
    if not workload or not meta.get("namespace") or not meta.get("name"):
        return None
    replica = service_labels.get(labels.REPLICA)
    return OwnedService(
        ref=ObjectRef(Kind.SERVICE, meta["namespace"], meta["name"]),
        workload=workload_ref(meta["namespace"], workload),
        replica=int(replica) if replica is not None and str(replica).isdigit() else None,
    )


def compute_node(body: Mapping[str, Any]) -> ComputeNode | tuple[str, ...]:
    """The model, or the problems that make it unusable (never an exception)."""
    try:
        return ComputeNode.model_validate(_without_managed_fields(body))
    except ValidationError as error:
        return tuple(problems(error))


def agent_workload(body: Mapping[str, Any]) -> AgentWorkload | InvalidWorkload:
    try:
        return AgentWorkload.model_validate(_without_managed_fields(body))
    except ValidationError as error:
        meta = body.get("metadata") or {}
        conditions: list[Condition] = []
        for raw in (body.get("status") or {}).get("conditions") or []:
            try:
                conditions.append(Condition.model_validate(raw))
            except ValidationError:
                continue
        return InvalidWorkload(
            ref=workload_ref(str(meta.get("namespace") or "default"), str(meta.get("name"))),
            uid=meta.get("uid"),
            generation=meta.get("generation"),
            problems=tuple(problems(error)),
            conditions=tuple(conditions),
        )


def _without_managed_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """Only what the models describe: apiVersion, kind, metadata, spec, status."""
    return {key: body[key] for key in ("apiVersion", "kind", "metadata", "spec", "status") if key in body}


# --- what others hold -----------------------------------------------------------------------------------------

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


def foreign_pod(body: Mapping[str, Any], resources: frozenset[str]) -> ForeignPod | None:
    """A pod the operator does not manage, as far as capacity needs it: its Node and what it requests of
    `resources` (the accelerator resources ComputeNodes use). None for a pod that holds none of them: not
    bound, terminal, or asking for none.

    A pod's request of a resource is what kube-scheduler and the kubelet's admission count (the effective
    request, kubernetes pkg/api/v1/resource PodRequests): the larger of its app containers' sum (with the
    restartable init containers, sidecars, that run beside them) and each plain init container's request
    (plus the sidecars started before it). Extended resources cannot be overcommitted, so requests equal
    limits; a limit alone stands for the request, as the API server defaults it."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    node = spec.get("nodeName")
    if not node or (body.get("status") or {}).get("phase") in TERMINAL_PHASES:
        return None
    asked: dict[str, int] = {}
    for resource in resources:
        sidecars = 0
        init_peak = 0
        for container in spec.get("initContainers") or []:
            quantity = _request(container, resource)
            if container.get("restartPolicy") == "Always":
                sidecars += quantity
            else:
                init_peak = max(init_peak, sidecars + quantity)
        running = sidecars + sum(_request(c, resource) for c in spec.get("containers") or [])
        if (quantity := max(running, init_peak)) > 0:
            asked[resource] = quantity
    if not asked:
        return None
    return ForeignPod(f"{meta.get('namespace')}/{meta.get('name')}", str(node), tuple(sorted(asked.items())))


def _request(container: Mapping[str, Any], resource: str) -> int:
    wanted = container.get("resources") or {}
    value = (wanted.get("requests") or {}).get(resource, (wanted.get("limits") or {}).get(resource))
    try:
        return max(int(str(value)), 0) if value is not None else 0
    except ValueError:
        return 0  # not a whole number: the API server refuses those for extended resources


def resource_slice(body: Mapping[str, Any]) -> ResourceSliceRecord | None:
    """A resource.k8s.io/v1 ResourceSlice's whole devices. Devices whose `type` attribute names a partition
    (NVIDIA's driver publishes `type: mig` beside `gpu`) are left out: they are carved from a GPU the slice
    also lists."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    pool = spec.get("pool") or {}
    driver = spec.get("driver")
    if not driver or not pool.get("name") or not meta.get("name"):
        return None
    devices = tuple(
        str(device["name"])
        for device in spec.get("devices") or []
        if isinstance(device, Mapping) and device.get("name") and not _partition(device, str(driver))
    )
    return ResourceSliceRecord(
        name=str(meta["name"]),
        driver=str(driver),
        pool=str(pool["name"]),
        generation=_integer(pool.get("generation")),
        slice_count=max(_integer(pool.get("resourceSliceCount"), 1), 1),
        node=spec.get("nodeName") or None,
        devices=devices,
    )


PARTITION_TYPES = frozenset({"mig"})


def _partition(device: Mapping[str, Any], driver: str) -> bool:
    attributes = device.get("attributes") or {}
    # An attribute name without a domain is in the driver's own (resource.k8s.io/v1 DeviceAttribute docs).
    kind = attributes.get("type") or attributes.get(f"{driver}/type") or {}
    return isinstance(kind, Mapping) and str(kind.get("string", "")).lower() in PARTITION_TYPES


def resource_claim(body: Mapping[str, Any]) -> ResourceClaimRecord | None:
    """An allocated resource.k8s.io/v1 ResourceClaim: its devices and the pods it is for. None when nothing
    is allocated."""
    meta = body.get("metadata") or {}
    namespace = meta.get("namespace")
    status = body.get("status") or {}
    results = ((status.get("allocation") or {}).get("devices") or {}).get("results") or []
    allocated = tuple(
        sorted(
            (str(r["driver"]), str(r["pool"]), str(r["device"]))
            for r in results
            if isinstance(r, Mapping) and r.get("driver") and r.get("pool") and r.get("device")
        )
    )
    if not allocated or not meta.get("name"):
        return None
    pods = {
        f"{namespace}/{consumer.get('name')}"
        for consumer in status.get("reservedFor") or []
        if isinstance(consumer, Mapping) and consumer.get("resource") == "pods" and not consumer.get("apiGroup")
    }
    pods |= {
        f"{namespace}/{owner.get('name')}"
        for owner in meta.get("ownerReferences") or []
        if isinstance(owner, Mapping) and owner.get("kind") == "Pod" and owner.get("apiVersion") == "v1"
    }
    return ResourceClaimRecord(f"{namespace}/{meta['name']}", allocated, tuple(sorted(pods)))


def namespace_terminating(body: Mapping[str, Any]) -> bool:
    return (body.get("status") or {}).get("phase") == "Terminating" or bool(
        (body.get("metadata") or {}).get("deletionTimestamp")
    )


def _integer(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default

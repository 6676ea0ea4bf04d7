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
from gpufabric.reconcile.state import InvalidWorkload, NodeHealth, OwnedService, PodRecord
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
            unschedulable=_unschedulable(body),
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


def _unschedulable(body: Mapping[str, Any]) -> str | None:
    for condition in _conditions(body):
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == KUBE_SCHEDULER_UNSCHEDULABLE
        ):
            return str(condition.get("message") or "unschedulable")
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

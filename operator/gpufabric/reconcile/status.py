"""Status as it should read after a pass, and whether it differs from what is stored (no patch if not)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gpufabric.api.agentworkload import AgentWorkload, AgentWorkloadStatus, ReplicaPlacement
from gpufabric.api.common import Condition
from gpufabric.api.computenode import ComputeNode, ComputeNodeSpec, ComputeNodeStatus, NodeWorkload
from gpufabric.api.reasons import ConditionReason, ConditionType
from gpufabric.api.refs import Allocation, ObjectRef
from gpufabric.api.tokens import TokensPerSecond
from gpufabric.placement.snapshot import ObservedDevices
from gpufabric.reconcile.conditions import Wanted, merge
from gpufabric.reconcile.state import NodeHealth
from gpufabric.rendering.names import selector_string
from gpufabric.vendors import Vendor

# tokensPerSecond is rewritten when it moves by more than this share (or this many tokens/s), or when the
# last write is older than the operator's minimum interval — never on every scrape.
TOKENS_RELATIVE_THRESHOLD = 0.1
TOKENS_ABSOLUTE_THRESHOLD = 1.0


@dataclass(frozen=True)
class Holding:
    """Devices a workload's replica holds (from the pod ledger, or placed this pass)."""

    workload: ObjectRef
    allocation: Allocation


@dataclass(frozen=True)
class TargetReport:
    """The tokens/s target's standing, for ThroughputBelowTarget and Autoscaling."""

    target: float
    capacity: float
    needed_for_target: int | None
    maximum: int
    external_scaler: bool


@dataclass(frozen=True)
class WorkloadReport:
    """What a pass found and did for one workload, for its status."""

    placements: tuple[ReplicaPlacement, ...]
    ready: int
    refusal: str | None
    unready_pods: tuple[str, ...]  # "pod: why" for pods kube-scheduler will not place
    # replicas with a pod kube-scheduler has not bound (it said why in unready_pods)
    unbound: int = 0
    # what in a custom runtime's own command line contradicts the placement, per vendor
    conflicts: tuple[str, ...] = ()
    tokens: TokensPerSecond | None = None
    tokens_stale: bool = False
    target: TargetReport | None = None


def tokens_to_write(old: TokensPerSecond | None, new: TokensPerSecond | None, stale: bool) -> TokensPerSecond | None:
    """What status should say: the new measurement if it moved enough (or the old one is stale), else the
    old one unchanged (so no patch)."""
    if new is None:
        return old
    if old is None:
        return new
    if new == old:
        return old
    moved = any(
        abs(a - b) > max(TOKENS_ABSOLUTE_THRESHOLD, TOKENS_RELATIVE_THRESHOLD * b)
        for a, b in ((new.prompt, old.prompt), (new.generation, old.generation))
    )
    return new if moved or stale else old


def _target_conditions(target: TargetReport, report: WorkloadReport) -> list[Wanted]:
    wanted: list[Wanted] = []
    if target.external_scaler:
        wanted.append(
            Wanted(
                ConditionType.AUTOSCALING,
                False,
                ConditionReason.EXTERNAL_SCALER,
                "spec.replicas was changed by someone else (an HPA, KEDA, kubectl scale): the tokens/s "
                "autoscaler stands down; remove the gpufabric.io/scaled-to annotation to hand it back",
            )
        )
    else:
        wanted.append(
            Wanted(
                ConditionType.AUTOSCALING,
                True,
                ConditionReason.TOKENS_PER_SECOND_TARGET,
                f"scaling between the replica bounds for {target.target:,.0f} generation tokens/s",
            )
        )
    summary = f"predicted capacity {target.capacity:,.0f} of {target.target:,.0f} generation tokens/s"
    if target.capacity >= target.target:
        wanted.append(Wanted(ConditionType.THROUGHPUT_BELOW_TARGET, False, ConditionReason.TARGET_MET, summary))
    elif report.refusal is not None:
        wanted.append(
            Wanted(
                ConditionType.THROUGHPUT_BELOW_TARGET,
                True,
                ConditionReason.INSUFFICIENT_CAPACITY,
                f"{summary}; no capacity for more replicas: {report.refusal}",
            )
        )
    elif target.needed_for_target is not None and target.needed_for_target > target.maximum:
        wanted.append(
            Wanted(
                ConditionType.THROUGHPUT_BELOW_TARGET,
                True,
                ConditionReason.MAX_REPLICAS_REACHED,
                f"{summary}; the target needs {target.needed_for_target} replicas, maxReplicas is {target.maximum}",
            )
        )
    else:
        wanted.append(
            Wanted(
                ConditionType.THROUGHPUT_BELOW_TARGET,
                True,
                ConditionReason.SCALING,
                f"{summary}; replicas are being added",
            )
        )
    return wanted


def _placed(report: WorkloadReport, wanted: int) -> Wanted:
    placed = len(report.placements)
    if report.refusal is not None:
        return Wanted(ConditionType.PLACED, False, ConditionReason.UNSCHEDULABLE, report.refusal)
    if report.unbound:
        # Pods exist, but kube-scheduler will not bind them where they were put: not placed, whatever the
        # operator decided (they move once the grace is over).
        return Wanted(
            ConditionType.PLACED,
            False,
            ConditionReason.UNSCHEDULABLE,
            f"{placed - report.unbound}/{wanted} replicas placed; kube-scheduler does not bind "
            + "; ".join(report.unready_pods),
        )
    if placed < wanted:
        return Wanted(
            ConditionType.PLACED,
            False,
            ConditionReason.PENDING,
            f"{placed}/{wanted} replicas placed; waiting for replaced or terminating replicas to free their devices",
        )
    return Wanted(ConditionType.PLACED, True, ConditionReason.ALL_REPLICAS_PLACED, f"{placed}/{wanted} replicas placed")


def _ready(report: WorkloadReport, wanted: int) -> Wanted:
    if wanted == 0:
        return Wanted(ConditionType.READY, True, ConditionReason.SCALED_TO_ZERO, "no replicas requested")
    ready = f"{report.ready}/{wanted} replicas ready"
    if report.ready >= wanted:
        return Wanted(ConditionType.READY, True, ConditionReason.ALL_REPLICAS_READY, ready)
    return Wanted(ConditionType.READY, False, ConditionReason.REPLICAS_NOT_READY, ready)


def _degraded(report: WorkloadReport, wanted: int) -> Wanted:
    if report.unready_pods:
        return Wanted(ConditionType.DEGRADED, True, ConditionReason.PODS_UNSCHEDULABLE, "; ".join(report.unready_pods))
    if report.conflicts:
        return Wanted(ConditionType.DEGRADED, True, ConditionReason.ARGS_CONFLICT, "; ".join(report.conflicts))
    ready = f"{report.ready}/{wanted} replicas ready"
    if 0 < report.ready < wanted:
        return Wanted(ConditionType.DEGRADED, True, ConditionReason.REPLICAS_UNAVAILABLE, ready)
    return Wanted(ConditionType.DEGRADED, False, ConditionReason.AS_EXPECTED, ready)


def workload_status(workload: AgentWorkload, report: WorkloadReport, now: datetime) -> AgentWorkloadStatus:
    wanted = workload.spec.replicas
    placed = len(report.placements)
    current = workload.status or AgentWorkloadStatus()
    placed_condition, ready_condition, degraded = (
        _placed(report, wanted),
        _ready(report, wanted),
        _degraded(report, wanted),
    )
    wanted_conditions = [placed_condition, ready_condition, degraded]
    if report.target is not None:
        wanted_conditions += _target_conditions(report.target, report)
    conditions = merge(current.conditions, wanted_conditions, workload.metadata.generation, now)
    old_by_replica = {p.replica: p.tokens_per_second for p in current.placements}
    vendors = sorted({p.vendor for p in report.placements}, key=lambda v: list(Vendor).index(v))
    return current.model_copy(
        update={
            "observed_generation": workload.metadata.generation,
            "conditions": conditions,
            "replicas": placed,
            "ready_replicas": report.ready,
            "placements": sorted(
                (
                    p.model_copy(update={"tokens_per_second": p.tokens_per_second or old_by_replica.get(p.replica)})
                    for p in report.placements
                ),
                key=lambda p: p.replica,
            ),
            "tokens_per_second": tokens_to_write(current.tokens_per_second, report.tokens, report.tokens_stale),
            "unschedulable_reason": report.refusal,
            "selector": selector_string(workload.name),
            "vendors": ",".join(v.value for v in vendors) or None,
        }
    )


def invalid_workload_conditions(
    existing: Sequence[Condition], problems: Sequence[str], generation: int | None, now: datetime
) -> list[Condition]:
    message = "invalid spec: " + "; ".join(problems)
    return merge(
        existing, [Wanted(ConditionType.PLACED, False, ConditionReason.INVALID_SPEC, message)], generation, now
    )


def compute_node_status(
    node: ComputeNode,
    health: NodeHealth | None,
    holdings: Sequence[Holding],
    now: datetime,
    *,
    tokens: TokensPerSecond | None = None,
    tokens_stale: bool = False,
    observed: ObservedDevices | None = None,
) -> ComputeNodeStatus:
    """`observed`: what its Node offers and others hold (None: not observed, as declared)."""
    spec = node.spec
    per_workload: Counter[tuple[str, str]] = Counter()
    for holding in holdings:
        if node.name in holding.allocation.nodes:
            per_workload[(holding.workload.namespace or "", holding.workload.name)] += (
                holding.allocation.devices_per_node * holding.allocation.nodes.count(node.name)
            )
    allocated = sum(per_workload.values())
    offered = observed.offered if observed else spec.devices
    others = observed.held_by_others if observed else 0
    current = node.status or ComputeNodeStatus()
    conditions = [_node_ready(spec, health), _healthy(spec, health, allocated, observed)]
    return current.model_copy(
        update={
            "observed_generation": node.metadata.generation,
            "conditions": merge(current.conditions, conditions, node.metadata.generation, now),
            "offered_devices": offered if observed else None,
            "device_source": observed.source if observed else None,
            "allocated_devices": allocated,
            "held_by_others": others if observed and observed.others_known else None,
            "free_devices": max(offered - others - allocated, 0),
            "workloads": [
                NodeWorkload(namespace=ns, name=name, devices=devices)
                for (ns, name), devices in sorted(per_workload.items())
            ],
            "tokens_per_second": tokens_to_write(current.tokens_per_second, tokens, tokens_stale),
        }
    )


def _node_ready(spec: ComputeNodeSpec, health: NodeHealth | None) -> Wanted:
    if health is None:
        return Wanted(
            ConditionType.READY, False, ConditionReason.NODE_NOT_FOUND, f"Node {spec.node_name} does not exist"
        )
    if health.ready:
        return Wanted(ConditionType.READY, True, ConditionReason.NODE_READY, f"Node {spec.node_name} is Ready")
    return Wanted(ConditionType.READY, False, ConditionReason.NODE_NOT_READY, f"Node {spec.node_name} is not Ready")


def _healthy(
    spec: ComputeNodeSpec, health: NodeHealth | None, allocated: int, observed: ObservedDevices | None
) -> Wanted:
    offered = observed.offered if observed else spec.devices
    others = observed.held_by_others if observed else 0
    if allocated > spec.devices:
        message = f"{allocated} devices allocated of {spec.devices}: replicas placed before a change of spec"
        return Wanted(ConditionType.HEALTHY, False, ConditionReason.OVERCOMMITTED, message)
    if observed is not None and offered < spec.devices and health is not None:
        message = (
            f"offers {offered} of {spec.devices} devices: Node {spec.node_name} {observed.shortfall}; "
            "placement uses what is offered"
        )
        return Wanted(ConditionType.HEALTHY, False, ConditionReason.FEWER_DEVICES_ADVERTISED, message)
    if health is not None and allocated + others > offered:
        message = f"{allocated} devices allocated to replicas and {others} held by other pods, of {offered} offered"
        return Wanted(ConditionType.HEALTHY, False, ConditionReason.OVERCOMMITTED, message)
    if spec.unschedulable:
        message = "cordoned: no new replicas; running ones are moved away"
        return Wanted(ConditionType.HEALTHY, True, ConditionReason.CORDONED, message)
    return Wanted(ConditionType.HEALTHY, True, ConditionReason.AS_DECLARED, "devices and placement consistent")


def status_patch(before: Any, after: Any) -> dict[str, Any] | None:
    """The status as a merge patch body, or None when nothing a reader sees would change. A field that is
    cleared (e.g. unschedulableReason once placed) is sent as null, which removes it."""
    old: dict[str, Any] = before.wire() if before is not None else {}
    new: dict[str, Any] = after.wire()
    changed: dict[str, Any] = {key: value for key, value in new.items() if old.get(key) != value}
    changed.update({key: None for key in old if key not in new})
    return changed or None
